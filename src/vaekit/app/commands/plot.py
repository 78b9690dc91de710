"""``vaekit plot``: (re)draw a run's figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from vaekit.app.commands.common import (
    data_units,
    thread_policy,
)
from vaekit.app.commands.options import (
    Device,
    Opt,
    RunDir,
    Threads,
    Weights,
    check_threads,
)
from vaekit.errors import VaekitError


def command(
    run_dir: RunDir,
    output: Annotated[Path | None, Opt("--output", "-o", "--out", help="Folder for the figures, created if missing (default: "
                                                              "the run directory, whose figures are redrawn in place).")] = None,
    device: Device = "auto",
    weights: Weights = "last",
    threads: Threads = 0,
    overwrite: Annotated[bool, Opt(help="Replace figures already in another --output folder.")] = False,
) -> None:
    """(Re)draw a run's figures from its weights and metrics."""
    from vaekit import plots
    from vaekit.app.data import read_run_data, run_splits
    from vaekit.app.runs import load_run
    from vaekit.rundir import FIGURES, RunDirectory, read_metrics, remove_temporary_files

    check_threads(threads)
    RunDirectory(run_dir).check_exists()
    folder = run_dir if output is None else output
    if folder.exists() and not folder.is_dir():
        raise VaekitError(f"--output {folder} is a file, not a folder")
    if folder.resolve() != run_dir.resolve() and not overwrite:
        there = [name for name in FIGURES if (folder / name).exists()]
        if there:
            raise VaekitError(f"{folder} already holds {', '.join(there[:3])}; pass --overwrite to replace them")
    model, config = load_run(run_dir, weights, device=device)
    splits = run_splits(config, run_dir=run_dir)
    remove_temporary_files(run_dir)  # what killed writers left in the run
    train, shown = splits["train"], splits.get("validation") or splits.get("test") or splits["train"]
    folder.mkdir(parents=True, exist_ok=True)  # only now: a run that fails to load leaves no empty folder
    with thread_policy(threads):
        paths = plots.draw_all(folder, model, train.x, train.labels, shown.x, shown.labels, read_metrics(run_dir),
                               class_names=train.classes, feature_names=read_run_data(run_dir).get("features"),
                               data_units=data_units(run_dir))
    for path in paths:
        print(f"wrote {path}")
