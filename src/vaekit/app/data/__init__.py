"""Datasets, and the splits a run trains and evaluates on.

A data *spec* is a built-in name (``digits``), a published dataset fetched and verified on
first use (``mnist``, ``fashion-mnist``, ``kmnist``), a ``.npy``/``.npz`` file, a CSV/Parquet
table, or a folder of images. Every loader returns :class:`DataSplits`: the training
portion and, where the dataset defines one, the official test split. The validation set
is carved out of the training portion with the run's seed (or is the official test split,
``validation_split = "test"``).

``Dataset.x`` is a float32 tensor, or, for data larger than the memory limit, a
:class:`~vaekit.app.data.lazy.LazyArray` that reads rows when indexed (same ``len``, ``shape``,
slicing and index-tensor access, each returning a tensor).

What a run did to its data (binarisation protocol, seed and fingerprints of fixed draws,
standardisation) is written to ``data.json`` in the run directory by :func:`write_run_data`
and applied again by :func:`select_split` / :func:`run_splits` given that directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from vaekit.app.data.binarize import ALGORITHM, binarize_once, fingerprint
from vaekit.app.data.lazy import LazyArray, is_lazy
from vaekit.app.data.standardize import Standardization
from vaekit.errors import VaekitError

SPLITS = ("train", "validation", "test", "all")
RUN_DATA = "data.json"  # the run directory's data record (vaekit.rundir.RunDirectory owns the file)


@dataclass(repr=False)
class Dataset:
    """``x``: float32 ``[N, *event_shape]`` (images ``[N, C, H, W]``, tabular ``[N, D]``),
    a tensor or a :class:`LazyArray`; ``labels``: int64 ``[N]`` or ``None``; ``classes``:
    label names where the data have them (``labels`` index them); ``standardization``: the
    map already applied to ``x``, if any. ``rows``: each example's 0-based position in what
    was loaded (a table's data row, an array's row, an image's place in the folder's sorted
    listing; ``None``: 0..N-1); ``files``: image folders, each example's file relative to
    the folder; ``features``: tables, the column names of ``x``."""

    x: torch.Tensor | LazyArray
    labels: torch.Tensor | None = None
    name: str = "data"
    classes: list[str] | None = None
    standardization: Standardization | None = None
    rows: torch.Tensor | None = None
    files: list[str] | None = None
    features: list[str] | None = None
    origin: str | None = None  # the fingerprint of what was loaded, before splits and treatment

    def __len__(self) -> int:
        return self.x.shape[0]

    def __repr__(self) -> str:
        kind = "read on demand" if is_lazy(self.x) else str(self.x.dtype).replace("torch.", "")
        parts = [repr(self.name), f"shape={list(self.x.shape)}", kind]
        if self.labels is None:
            parts.append("no labels")
        elif self.classes:
            shown = ", ".join(self.classes[:5]) + (", ..." if len(self.classes) > 5 else "")
            parts.append(f"labels with {len(self.classes)} classes ({shown})")
        else:
            parts.append(f"labels {int(self.labels.min())}..{int(self.labels.max())}")
        if self.features:
            parts.append(f"features {', '.join(self.features[:4])}{', ...' if len(self.features) > 4 else ''}")
        if self.standardization is not None:
            parts.append("standardised")
        return f"Dataset({', '.join(parts)})"

    @property
    def positions(self) -> torch.Tensor:
        """``rows``, or 0..N-1 where the data are as loaded."""
        return torch.arange(len(self)) if self.rows is None else self.rows

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.x.dim() == 4

    def subset(self, index: torch.Tensor, name: str | None = None) -> Dataset:
        labels = None if self.labels is None else self.labels[index]
        x = self.x.take(index) if is_lazy(self.x) else self.x[index]
        files = None if self.files is None else [self.files[i] for i in index.tolist()]
        return dataclasses.replace(self, x=x, labels=labels, name=name or self.name,
                                   rows=self.positions[index], files=files)


@dataclass
class DataSplits:
    train: Dataset | None  # None only when load_data was asked for the test split alone
    test: Dataset | None = None

    def __repr__(self) -> str:
        return f"DataSplits(train={self.train!r}, test={self.test!r})"


def load_data(
    spec: str, data_dir: str | None = None, *, mirror: str | None = None, image_size: int = 0,
    image_mode: str = "auto", label_column: str | None = None, quiet: bool = False,
    splits: tuple[str, ...] = ("train", "test"), label_required: bool = True,
) -> DataSplits:
    """Load a dataset by name, a file by path, or a folder of images.

    ``data_dir``: a folder already holding a published dataset's files; ``mirror``: base
    URL(s) to download them from; ``image_size``/``image_mode``: for image folders;
    ``label_column``: for CSV/Parquet tables (``label_required=False``: a table without that
    column comes without labels). ``splits``: the splits wanted; the MNIST family leaves
    out (as None) those not named, other data always come whole.
    """
    from vaekit.app.data import builtin, files, images, mnist, tabular

    path = Path(spec)
    suffix = path.suffix.lower()
    if label_column is not None and suffix not in tabular.SUFFIXES:
        raise VaekitError(f"label_column applies to CSV/Parquet tables, not to '{spec}'")
    is_folder = spec not in builtin.DATASETS and spec not in mnist.REMOTE and path.is_dir()
    if image_size and not is_folder:
        raise VaekitError(f"image_size applies to folders of images, not to '{spec}'")
    if spec in builtin.DATASETS:
        return builtin.DATASETS[spec](data_dir)
    if spec in mnist.REMOTE:
        return mnist.load(spec, data_dir, mirror, quiet, splits)
    if suffix in files.LOADERS:
        return files.load_file(path, quiet)
    if suffix in tabular.SUFFIXES:
        return tabular.load_table(path, label_column, label_required)
    if is_folder:
        return images.load_folder(path, image_size, image_mode, quiet)
    names = [*builtin.DATASETS, *mnist.REMOTE]
    kinds = "/".join(sorted([*files.LOADERS, *tabular.SUFFIXES]))
    if not path.exists() and (len(path.parts) > 1 or spec.startswith(".")):
        raise VaekitError(f"data not found: {spec} (no such file or folder)")
    if path.exists():
        raise VaekitError(f"'{spec}' is not a {kinds} file or a folder of images")
    hint = difflib.get_close_matches(spec, names, n=1)
    extra = f" (did you mean '{hint[0]}'?)" if hint else ""
    raise VaekitError(
        f"unknown data '{spec}'{extra}: no dataset has that name ({', '.join(names)}) and no file or "
        f"folder of that name was found; give a dataset name, a {kinds} file, or a folder of images"
    )


def data_options(config) -> dict:
    """The keyword options of :func:`load_data` that a config sets."""
    return {
        "mirror": getattr(config, "mirror", None),
        "image_size": getattr(config, "image_size", 0),
        "image_mode": getattr(config, "image_mode", "auto"),
        "label_column": getattr(config, "label_column", None),
    }


def split_validation(
    data: Dataset, fraction: float, seed: int
) -> tuple[Dataset, Dataset | None]:
    """Seeded random split of ``data`` into (train, validation)."""
    index = _validation_index(len(data), fraction, seed)
    if index is None:
        return data, None
    return (
        data.subset(index[0], f"{data.name}/train"),
        data.subset(index[1], f"{data.name}/validation"),
    )


def _validation_index(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Sorted (train, validation) positions of a seeded split, or ``None`` for no split."""
    n_val = int(round(n * fraction))
    if n_val == 0:
        return None
    if n_val >= n:
        raise VaekitError(f"validation_fraction {fraction} leaves no training examples")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:].sort().values, order[:n_val].sort().values


def run_splits(
    config, quiet: bool = False, run_dir: str | Path | None = None, only: str | None = None
) -> dict[str, Dataset | None]:
    """The train/validation/test sets of a run, binarised as its protocol says.

    The training set keeps grey levels under dynamic binarisation (drawn per minibatch).
    With ``run_dir``, a standardisation recorded there is applied instead of refitted.
    ``only = "test"`` asks for the test split alone: the MNIST family then never converts
    its training images (a 10k-image evaluation peaked at 650 MB with them), and the other
    splits come back as None unless the data had to be loaded whole anyway.
    """
    record = read_run_data(run_dir) if run_dir else {}
    recorded = record.get("standardization")
    standardize = getattr(config, "standardize", False)
    test_only = only == "test" and not (standardize and recorded is None)
    loaded = load_data(config.data, config.data_dir, quiet=quiet, **data_options(config),
                       **({"splits": ("test",)} if test_only else {}))
    loaded = _as_recorded(loaded, config, record, own=True)
    loaded = _fixed_binarisation(loaded, config)
    if getattr(config, "validation_split", "fraction") == "test":
        if loaded.test is None:
            raise VaekitError(
                f"validation_split = 'test', but {config.data} has no official test split; "
                "use validation_split = 'fraction'"
            )
        train, val, val_positions = loaded.train, loaded.test, None
    elif loaded.train is None:
        train, val, val_positions = None, None, None
    else:
        train, val = split_validation(loaded.train, config.validation_fraction, config.seed)
        index = _validation_index(len(loaded.train), config.validation_fraction, config.seed)
        val_positions = None if index is None else index[1].numpy()
    out = {"train": train, "validation": val, "test": loaded.test}
    if config.binarization.kind == "dynamic":
        # drawn per example position in the loaded set, as a lazily read split would be
        if val is not None and val is not loaded.test:
            out["validation"] = binarize_once(val, config.binarization, config.seed, "validation", val_positions)
        if loaded.test is not None:
            out["test"] = binarize_once(loaded.test, config.binarization, config.seed, "test")
            if val is loaded.test:
                out["validation"] = out["test"]  # one draw of the test set, used for both
    if standardize:
        st = recorded or Standardization.fit(train.x)
        out = {k: None if v is None else _standardized(v, st) for k, v in out.items()}
    return out


def select_split(
    config, split: str, data: str | None = None, run_dir: str | Path | None = None
) -> Dataset:
    """One split of the run's data, or all of ``data`` when the user gives other data.

    With ``run_dir``, the run's recorded data treatment (``data.json``) is applied and the
    fixed binarisation draws are checked against their recorded fingerprints.
    """
    if split not in SPLITS:
        raise VaekitError(f"split must be one of {', '.join(SPLITS)}; got '{split}'")
    record = read_run_data(run_dir) if run_dir else {}
    if not same_data(data, config):
        if split != "all":
            raise VaekitError(
                f"--split {split} applies to the run's own data ({config.data}); "
                "with other data use --split all"
            )
        options = _applicable(data, data_options(config))
        loaded = load_data(data, config.data_dir, **options, label_required=False)
        if _conditional(config) and loaded.train is not None and loaded.train.labels is None:
            column = options.get("label_column")
            where = f"'{column}' column" if column else "labels (class sub-folders, or a .npz 'labels' array)"
            raise VaekitError(f"{data}: this conditional model needs each example's class, but the data have "
                              f"no {where}")
        whole = _all(_as_recorded(loaded, config, record, own=False), config)
        return _apply_recorded(whole, config, record)
    if split == "all":
        loaded = load_data(config.data, config.data_dir, **data_options(config))
        whole = _all(_as_recorded(loaded, config, record, own=True), config)
        return _apply_recorded(whole, config, record)
    chosen = run_splits(config, run_dir=run_dir, only=split)[split]
    if chosen is None:
        reason = (
            f"{config.data} has no official test split"
            if split == "test"
            else "the run was trained with validation_fraction = 0"
        )
        raise VaekitError(f"no {split} split: {reason}; choose another --split")
    _check_fingerprint(chosen, split, config, record)
    return chosen


def select_default_split(config, run_dir: str | Path | None = None) -> tuple[str, Dataset]:
    """(name, data) of the run's default split: ``test`` where the dataset has one, otherwise
    ``validation``, otherwise ``train``; the data are loaded once."""
    from vaekit.app.data import mnist

    known_test = config.data in mnist.REMOTE  # the default is then its test split
    splits = run_splits(config, run_dir=run_dir, only="test" if known_test else None)
    name = next((n for n in ("test", "validation", "train") if splits[n] is not None), "train")
    _check_fingerprint(splits[name], name, config, read_run_data(run_dir) if run_dir else {})
    return name, splits[name]


def same_data(spec: str | None, config) -> bool:
    """Whether ``spec`` (``None``: the run's own) names the data ``config`` was trained on: the
    same dataset name, or the same file or folder wherever the current folder is."""
    return spec is None or absolute_spec(spec) == absolute_spec(config.data)


def absolute_spec(spec: str) -> str:
    """An existing file or folder as an absolute path (what it names no longer depends on the
    current folder); dataset names, and names of nothing, as they are."""
    return spec if is_named(spec) or not os.path.exists(spec) else os.path.abspath(spec)


def is_named(spec: str) -> bool:
    """A built-in or published dataset (verified by vaekit), not a user's file or folder."""
    from vaekit.app.data import builtin, mnist

    return spec in builtin.DATASETS or spec in mnist.REMOTE


def apply_classes(data: Dataset, classes: list[str] | None, strict: bool = True) -> Dataset:
    """``data`` with its labels numbered by ``classes``, a run's class names in the order of
    their indices, instead of by the names its own file happens to hold (each file numbers
    its names in sorted order, so a file with fewer classes would number them differently).

    ``strict`` (a conditional model, which needs the run's numbering): a name the run does
    not know is an error naming it. Otherwise unknown names are numbered after the run's,
    with a note on stderr saying which numbers they got (an index the run never had must
    not pass for one of its classes unsaid), and labels that are numbers where the run's
    were names (or the reverse) stay as given.
    """
    if data.labels is None or (classes is None and data.classes is None):
        return data
    if classes is None or data.classes is None:
        if not strict:
            return data
        theirs = "names" if data.classes else "numbers"
        ours = "numbers" if classes is None else f"the names {_names(classes)}"
        raise VaekitError(f"{data.name}: its labels are {theirs}, but this run's labels were {ours}")
    index = {name: i for i, name in enumerate(classes)}
    unknown = [c for c in data.classes if c not in index]
    if unknown and strict:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise VaekitError(
            f"{data.name}: label '{unknown[0]}'{more} is not one of the classes this run was trained on "
            f"({_names(classes)}); a conditional model can only be given those"
        )
    index.update({c: len(classes) + k for k, c in enumerate(unknown)})
    if unknown:
        from vaekit.app.data.progress import say

        mapped = ", ".join(f"'{c}' → {index[c]}" for c in unknown[:8]) + (", ..." if len(unknown) > 8 else "")
        say(f"{data.name}: {len(unknown)} label name(s) not among the {len(classes)} classes this run was "
            f"trained on ({_names(classes)}, numbered 0..{len(classes) - 1}), numbered after them: {mapped}")
    mapping = torch.tensor([index[c] for c in data.classes], dtype=torch.int64)
    return dataclasses.replace(data, labels=mapping[data.labels], classes=[*classes, *unknown])


def source_fingerprint(data: Dataset) -> str:
    """A SHA-256 of the data as loaded, values and labels (every value in memory; evenly spaced
    rows of data read on demand)."""
    from vaekit.sources import fingerprint as sha

    return sha(data.x, data.labels)


# ---------------------------------------------------------------------- the run's record
def write_run_data(run_dir, config, splits: dict[str, Dataset | None]) -> dict:
    """Write ``data.json`` (into a folder or a :class:`~vaekit.rundir.RunDirectory`): how the
    run's data were binarised and standardised, their class names and feature names, and for
    a file or folder its absolute path and the fingerprints of what was loaded from it (later
    reads of the run's own data are checked against them)."""
    from vaekit.rundir import RunDirectory

    kind = config.binarization.kind
    fixed = {"static": ("train", "validation", "test"), "threshold": ("train", "validation", "test"),
             "dynamic": ("validation", "test")}.get(kind, ())
    prints = {k: fingerprint(splits[k].x) for k in fixed if splits.get(k) is not None}
    present = [s for s in splits.values() if s is not None]
    st = next((s.standardization for s in present), None)
    record = {
        "format": 1,
        "data": config.data,
        "binarize": {"protocol": config.binarize_protocol, "seed": config.seed, "algorithm": ALGORITHM,
                     "fingerprints": {k: v for k, v in prints.items() if v is not None}},
        "standardization": None if st is None else st.to_dict(),
        "read_on_demand": any(is_lazy(s.x) for s in present),
        "classes": next((s.classes for s in present if s.labels is not None), None),
        "features": next((s.features for s in present), None),
    }
    origins = {"train": splits.get("train"), "test": splits.get("test")}
    if not is_named(config.data):
        record["source"] = {"path": absolute_spec(config.data),
                            "fingerprints": {k: v.origin for k, v in origins.items() if v is not None and v.origin}}
    run = run_dir if isinstance(run_dir, RunDirectory) else RunDirectory(run_dir)
    run.write_data_record(record)
    return record


def read_run_data(run_dir: str | Path | None) -> dict:
    """The run's ``data.json`` as a dict (``standardization`` parsed); ``{}`` where the run
    has none (runs written before it existed)."""
    if run_dir is None:
        return {}
    from vaekit.rundir import RunDirectory

    run = RunDirectory(run_dir)
    record = run.read_data_record()
    if record.get("standardization") is not None:
        record["standardization"] = Standardization.from_dict(record["standardization"],
                                                              str(run.file(RUN_DATA)))
    return record


def recorded_standardization(run_dir: str | Path | None) -> Standardization | None:
    """The map a run applied to its data (``None`` if it applied none)."""
    return read_run_data(run_dir).get("standardization")


# ---------------------------------------------------------------------- helpers
def _conditional(config) -> bool:
    return getattr(config, "model", "vae") == "cvae"


def _names(classes: list[str]) -> str:
    return ", ".join(classes[:8]) + (", ..." if len(classes) > 8 else "")


def _as_recorded(loaded: DataSplits, config, record: dict, own: bool) -> DataSplits:
    """Loaded data checked against the run's record and labelled as the run numbered them.

    The run's own file or folder (``own``) must still hold what the run was trained on;
    where the record has no fingerprints yet (training, or a run from before they were
    kept), each part gets its ``origin`` fingerprint to record. Labels are renumbered by the
    run's class names where it recorded them."""
    parts = {"train": loaded.train, "test": loaded.test}
    if own and not is_named(config.data):
        expected = (record.get("source") or {}).get("fingerprints") or {}
        for part, data in parts.items():
            if data is None:
                continue
            found = source_fingerprint(data)
            if expected.get(part) and found != expected[part]:
                raise VaekitError(
                    f"{config.data} differs from the one this run recorded in {RUN_DATA} (the data it was "
                    "trained on; their fingerprints do not match): the file or folder changed since "
                    "training, so its numbers would not be the run's. To score it as it is now, copy it "
                    "elsewhere and pass that with --data"
                )
            parts[part] = dataclasses.replace(data, origin=found)
    if "classes" in record:
        strict = _conditional(config)
        parts = {k: None if v is None else apply_classes(v, record["classes"], strict) for k, v in parts.items()}
    return DataSplits(parts["train"], parts["test"])


def _fixed_binarisation(loaded: DataSplits, config) -> DataSplits:
    if config.binarization.kind not in ("static", "threshold"):
        return loaded
    train, test = loaded.train, loaded.test
    if test is not None:
        test = binarize_once(test, config.binarization, config.seed, split="test")
    if train is not None:
        train = binarize_once(train, config.binarization, config.seed, "train")
    return DataSplits(train, test)


def _all(loaded: DataSplits, config) -> Dataset:
    loaded = _fixed_binarisation(loaded, config)
    whole = _concat(loaded.train, loaded.test)
    if config.binarization.kind == "dynamic":
        whole = binarize_once(whole, config.binarization, config.seed, split="all")
    return whole


def _applicable(spec: str, options: dict) -> dict:
    """The run's options that make sense for other data ``spec`` (a table's label column
    for a table, the image size for a folder)."""
    from vaekit.app.data import tabular

    path = Path(spec)
    return {**options,
            "label_column": options["label_column"] if path.suffix.lower() in tabular.SUFFIXES else None,
            "image_size": options["image_size"] if path.is_dir() else 0}


def _apply_recorded(data: Dataset, config, record: dict) -> Dataset:
    if not getattr(config, "standardize", False):
        return data
    st = record.get("standardization")
    if st is None:
        raise VaekitError(
            "the run standardised its data but records no standardization (data.json): "
            "cannot apply the same map to other data"
        )
    return _standardized(data, st)


def _standardized(data: Dataset, st: Standardization) -> Dataset:
    return dataclasses.replace(st.apply(data), standardization=st)


def _check_fingerprint(data: Dataset, split: str, config, record: dict) -> None:
    recorded = record.get("binarize", {})
    expected = recorded.get("fingerprints", {}).get(split)
    protocol = config.binarize_protocol
    if not expected or recorded.get("protocol") != protocol or recorded.get("seed") != config.seed:
        return
    found = fingerprint(data.x)
    if found is not None and found != expected:
        raise VaekitError(
            f"the {split} split differs from the one this run recorded in {RUN_DATA} "
            f"({protocol} binarisation, seed {config.seed}): the data changed since "
            "training, so its numbers would not be comparable"
        )


def _concat(a: Dataset, b: Dataset | None) -> Dataset:
    if b is None:
        return a
    if is_lazy(a.x) or is_lazy(b.x):
        raise VaekitError("--split all of data read on demand is not supported; choose one split")
    labels = None
    if a.labels is not None and b.labels is not None:
        labels = torch.cat([a.labels, b.labels])
    rows = torch.cat([a.positions, b.positions + len(a)])  # the training part's rows, then the test part's
    return dataclasses.replace(a, x=torch.cat([a.x, b.x]), labels=labels, name=a.name.split("/")[0], rows=rows)
