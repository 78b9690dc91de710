"""Datasets as tensors in memory, and the splits a run trains and evaluates on.

A data *spec* is a built-in name (``digits``) or a path to a file. Every loader returns
:class:`DataSplits`: the training portion and, where the dataset defines one, the official
test split. The validation set is carved out of the training portion with the run's seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vaekit.config import parse_binarize
from vaekit.data.binarize import binarize_once
from vaekit.errors import VaekitError

SPLITS = ("train", "validation", "test", "all")


@dataclass
class Dataset:
    """``x``: float32 ``[N, *event_shape]`` (images ``[N, C, H, W]``, tabular ``[N, D]``);
    ``labels``: int64 ``[N]`` or ``None``."""

    x: torch.Tensor
    labels: torch.Tensor | None = None
    name: str = "data"

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.x.dim() == 4

    def subset(self, index: torch.Tensor, name: str | None = None) -> Dataset:
        labels = None if self.labels is None else self.labels[index]
        return Dataset(self.x[index], labels, name or self.name)


@dataclass
class DataSplits:
    train: Dataset
    test: Dataset | None = None


def load_data(spec: str, data_dir: str | None = None) -> DataSplits:
    """Load a built-in dataset by name, or a ``.npy``/``.npz`` file by path."""
    from vaekit.data import builtin, files

    if spec in builtin.DATASETS:
        return builtin.DATASETS[spec](data_dir)
    path = Path(spec)
    if path.suffix.lower() in files.LOADERS:
        return files.load_file(path)
    known = ", ".join(sorted(builtin.DATASETS))
    raise VaekitError(
        f"unknown data '{spec}': give a built-in dataset ({known}) "
        f"or a path to a {'/'.join(sorted(files.LOADERS))} file"
    )


def split_validation(
    data: Dataset, fraction: float, seed: int
) -> tuple[Dataset, Dataset | None]:
    """Seeded random split of ``data`` into (train, validation)."""
    n_val = int(round(len(data) * fraction))
    if n_val == 0:
        return data, None
    if n_val >= len(data):
        raise VaekitError(f"validation_fraction {fraction} leaves no training examples")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return (
        data.subset(order[n_val:].sort().values, f"{data.name}/train"),
        data.subset(order[:n_val].sort().values, f"{data.name}/validation"),
    )


def run_splits(config) -> dict[str, Dataset | None]:
    """The train/validation/test sets of a run, binarised as its protocol says.

    The training set keeps grey levels under dynamic binarisation (drawn per minibatch).
    """
    loaded = _fixed_binarisation(load_data(config.data, config.data_dir), config)
    train, val = split_validation(loaded.train, config.validation_fraction, config.seed)
    out = {"train": train, "validation": val, "test": loaded.test}
    if parse_binarize(config.binarize)[0] == "dynamic":
        for key in ("validation", "test"):
            if out[key] is not None:
                out[key] = binarize_once(out[key], "dynamic", config.seed, split=key)
    return out


def select_split(config, split: str, data: str | None = None) -> Dataset:
    """One split of the run's data, or all of ``data`` when the user gives other data."""
    if split not in SPLITS:
        raise VaekitError(f"split must be one of {', '.join(SPLITS)}; got '{split}'")
    if data is not None and data != config.data:
        if split != "all":
            raise VaekitError(
                f"--split {split} applies to the run's own data ({config.data}); "
                "with other data use --split all"
            )
        return _all(load_data(data, config.data_dir), config)
    if split == "all":
        return _all(load_data(config.data, config.data_dir), config)
    chosen = run_splits(config)[split]
    if chosen is None:
        reason = (
            f"{config.data} has no official test split"
            if split == "test"
            else "the run was trained with validation_fraction = 0"
        )
        raise VaekitError(f"no {split} split: {reason}; choose another --split")
    return chosen


def _fixed_binarisation(loaded: DataSplits, config) -> DataSplits:
    if parse_binarize(config.binarize)[0] not in ("static", "threshold"):
        return loaded
    test = loaded.test
    if test is not None:
        test = binarize_once(test, config.binarize, config.seed, split="test")
    return DataSplits(binarize_once(loaded.train, config.binarize, config.seed, "train"), test)


def _all(loaded: DataSplits, config) -> Dataset:
    loaded = _fixed_binarisation(loaded, config)
    whole = _concat(loaded.train, loaded.test)
    if parse_binarize(config.binarize)[0] == "dynamic":
        whole = binarize_once(whole, "dynamic", config.seed, split="all")
    return whole


def default_split(config) -> str:
    """``test`` where the dataset has one, otherwise ``validation``, otherwise ``train``."""
    splits = run_splits(config)
    for name in ("test", "validation", "train"):
        if splits[name] is not None:
            return name
    return "train"


def _concat(a: Dataset, b: Dataset | None) -> Dataset:
    if b is None:
        return a
    labels = None
    if a.labels is not None and b.labels is not None:
        labels = torch.cat([a.labels, b.labels])
    return Dataset(torch.cat([a.x, b.x]), labels, a.name.split("/")[0])
