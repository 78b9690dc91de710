"""``vaekit report``, ``vaekit runs``, ``vaekit explore``: looking at runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vaekit.app.commands.options import (
    Device,
    Opt,
    RunDir,
    Threads,
    check_threads,
)


def report(
    run_dirs: Annotated[list[Path], typer.Argument(metavar="RUN", help="One or more run directories (several: compared side by side).")],
    output: Annotated[Path, Opt("--output", "-o", "--out", help="The HTML file to write.")] = Path("report.html"),
) -> None:
    """Write one self-contained HTML file (opens offline) with each run's config, evaluation
    table, interactive training curves, log-likelihood-vs-K curve and figures; several runs
    side by side, with the settings that differ."""
    from vaekit.app.report import write_report

    print(f"wrote {write_report(run_dirs, output)}")


def runs_command(
    folder: Annotated[Path, typer.Argument(metavar="FOLDER", help="Folder to search for run directories (at any depth).")] = Path("runs"),
    as_json: Annotated[bool, Opt("--json", help="Print a JSON list, one object per run.")] = False,
) -> None:
    """List the runs under FOLDER: name, data, model, epochs done/planned, status, best
    validation ELBO, test log-likelihood (from evaluation-test.json), training wall time.

    Status, read from the run's files: finished (all epochs and evaluation.json); running
    (a file written within twice the longest epoch, or twice checkpoint_minutes, plus a
    minute); stopped (the newest file is a mid-epoch checkpoint, as Ctrl-C or SIGTERM
    leave); killed (anything else). Stopped and killed runs continue with --resume."""
    from vaekit.app.catalog import format_runs, runs_table

    rows = runs_table(folder)
    if as_json:
        print(json.dumps(rows))
    elif not rows:
        print(f"no runs under {folder}")
    else:
        print(format_runs(rows))


def explore(
    run_dir: RunDir,
    data: Annotated[str | None, Opt(help="Other data to encode and show (default: the run's own).")] = None,
    split: Annotated[str | None, Opt(help="train | validation | test | all: the split shown first (default: test if the data has one, else validation); the page switches to the others.")] = None,
    host: Annotated[str, Opt(help="Address to serve on. Anything but a loopback address lets other machines in (a warning says so).")] = "127.0.0.1",
    port: Annotated[int, Opt(help="Port to serve on (0: any free port; the URL is printed).")] = 0,
    browser: Annotated[bool, Opt("--browser/--no-browser", help="Open the page in the default web browser.")] = True,
    points: Annotated[int, Opt(help="Examples shown at most (a seeded random subset of larger data).")] = 10_000,
    device: Device = "auto",
    threads: Threads = 0,
) -> None:
    """Serve a local web page to explore the latent space: the encoded data coloured by
    class (any split of the run's data: a menu switches), a click decodes any point, sliders move z, two picked examples are interpolated,
    the decoded grid lies under the points at the current zoom. Ctrl-C stops it."""
    from vaekit.app.commands.common import thread_policy
    from vaekit.app.explore import serve

    check_threads(threads)
    with thread_policy(threads):  # the encoding at start and every request's decoding
        serve(run_dir, data=data, split=split, host=host, port=port, open_browser=browser, max_points=points,
              device=device)
