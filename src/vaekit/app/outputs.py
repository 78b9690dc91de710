"""The files the commands that read a run write (sample, reconstruct, encode, plot, evaluate's
per-example scores): where they go by default, the refusal to replace one, and the columns
that tie each output row back to its source.

By default an output goes into the run directory under a name that says what it holds
(``samples-prior.png``, ``latents-validation.npy``, ...), never over the run's own files;
an existing file is replaced only with ``--overwrite``, as ``vaekit train`` does for runs.
"""

from __future__ import annotations

from pathlib import Path

from vaekit.errors import VaekitError


def output_path(given: Path | None, run_dir: Path, default: str, suffixes: tuple[str, ...],
                overwrite: bool, companions: tuple[str, ...] = ()) -> Path:
    """The file to write: ``given``, or ``run_dir / default``; checked for its suffix and
    folder, and refused if it (or a ``companions`` file written next to it, named by
    replacing its suffix) exists, unless ``overwrite``."""
    from vaekit.rundir import RunDirectory

    if given is None:  # into the run: "a file, not a run directory" before any talk of folders
        RunDirectory(run_dir).check_exists()
    path = run_dir / default if given is None else given
    if path.suffix.lower() not in suffixes:
        raise VaekitError(f"output {path} must end in {' or '.join(suffixes)}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise VaekitError(f"output folder {parent} does not exist")
    for target in (path, *(path.with_suffix(s) for s in companions)):
        if target.exists() and not overwrite:
            raise VaekitError(f"{target} already exists; pass --overwrite to replace it, or -o another file")
    return path


def default_name(what: str, data: str | None, split: str, suffix: str) -> str:
    """``what-SPLIT.suffix`` for the run's own data, ``what-STEM.suffix`` for other data."""
    tag = split if data is None else (Path(data).stem or Path(data).name or "data")
    return f"{what}-{tag}{suffix}"


def source_columns(dataset) -> dict[str, list]:
    """Columns that tie rows back to their source: ``row`` (0-based row of the table or
    array file, or place in an image folder's sorted listing), ``file`` (image folders: the
    file, relative to the folder) and ``label_name`` (the class name, where labels have names)."""
    columns: dict[str, list] = {"row": dataset.positions.tolist()}
    if dataset.files is not None:
        columns["file"] = list(dataset.files)
    if dataset.labels is not None and dataset.classes:
        names = dataset.classes
        columns["label_name"] = [names[i] if 0 <= i < len(names) else str(i) for i in dataset.labels.tolist()]
    return columns


def class_index(label: str, classes: int, names: list[str] | None) -> int:
    """A conditional model's class given as an index or by name (the run's class names)."""
    if names and label in names:
        return names.index(label)
    try:
        index = int(label)
    except ValueError:
        known = f"; its classes are {', '.join(names)}" if names else " (the run's labels have no names)"
        raise VaekitError(f"--label '{label}' is not a class of this model{known}") from None
    if not 0 <= index < classes:
        raise VaekitError(f"--label must be in 0..{classes - 1} for this model, got {label}")
    return index


def check_table_output(output: Path, model) -> None:
    if output.suffix.lower() == ".csv" and len(model.event_shape) != 1:
        raise VaekitError(f"{output}: CSV output is for rows of features ([N, D] data); this model's data are "
                          f"shaped {list(model.event_shape)}: write .png or .npy")


def write_rows(x, output: Path, title: str, features: list[str] | None = None) -> None:
    """Images or rows of features to .png (a grid), .npy, or .csv (rows headed by the
    column names)."""
    import numpy as np

    suffix = output.suffix.lower()
    if suffix == ".npy":
        from vaekit.rundir import write_output

        write_output(output, lambda f: np.save(f, x.numpy()))
    elif suffix == ".csv":
        from vaekit.evaluation import write_table
        from vaekit.plots import feature_names_for

        names = feature_names_for(x.shape[1], features)
        write_table(output, dict(zip(names, x.double().numpy().T, strict=True)), float_format="%.8g")
    else:
        from vaekit.plots import images_figure

        images_figure(x, output, title)
    print(f"wrote {output}")


def write_latents(output: Path, mu, logvar, labels=None, ids: dict | None = None) -> None:
    """Posterior means and log-variances ([N, L] arrays) to FILE.npy (means; log-variances
    in FILE.logvar.npy), FILE.npz (mu, logvar, labels and the ``ids`` columns) or FILE.csv
    (mu_1.., logvar_1.., label, then the ``ids`` columns)."""
    import numpy as np

    from vaekit.evaluation import write_table
    from vaekit.rundir import write_output

    ids = ids or {}
    suffix = output.suffix.lower()
    if suffix == ".npy":
        write_output(output, lambda f: np.save(f, mu))
        write_output(output.with_suffix(".logvar.npy"), lambda f: np.save(f, logvar))
    elif suffix == ".npz":
        arrays = {"mu": mu, "logvar": logvar}
        if labels is not None:
            arrays["labels"] = labels
        arrays.update({k: np.asarray(v) for k, v in ids.items()})
        write_output(output, lambda f: np.savez(f, **arrays))
    else:
        d = mu.shape[1]
        columns = {**{f"mu_{i + 1}": mu[:, i] for i in range(d)}, **{f"logvar_{i + 1}": logvar[:, i] for i in range(d)}}
        if labels is not None:
            columns["label"] = labels
        write_table(output, {**columns, **ids}, float_format="%.8g")


def store_in_run(path: Path, write, what: str) -> str:
    """Write ``path`` into a run directory (clearing what killed writers left there first);
    a run that cannot be written (read-only, someone else's) gets a warning, not a failure:
    the printed result is what counts."""
    from vaekit.rundir import remove_temporary_files

    remove_temporary_files(path.parent)
    try:
        write(path)
    except VaekitError as err:
        return f"warning: could not store {what} in the run: {err}"
    return f"stored {what} in {path}" if what == "the result" else f"wrote {path}"
