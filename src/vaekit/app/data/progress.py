"""Progress bars for slow data work (downloads, decompressing, reading image folders).

A bar appears only once the work has taken longer than a moment (``DELAY`` seconds) and
only on an interactive terminal, so quick loads and logs stay clean.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

DELAY = 0.5


@contextmanager
def progress(
    description: str, total: int | None, quiet: bool = False, unit_bytes: bool = False
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; a rich bar shows up after ``DELAY`` seconds of work."""
    if quiet or not sys.stderr.isatty():
        yield lambda n: None
        return
    start = time.perf_counter()
    state: dict = {"bar": None, "done": 0}

    def advance(n: int) -> None:
        state["done"] += n
        bar = state["bar"]
        if bar is None:
            if time.perf_counter() - start < DELAY:
                return
            bar = state["bar"] = _make_bar(unit_bytes)
            bar.start()
            state["task"] = bar.add_task(description, total=total)
            n = state["done"]
        bar.update(state["task"], advance=n)

    try:
        yield advance
    finally:
        if state["bar"] is not None:
            state["bar"].stop()


def _make_bar(unit_bytes: bool):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    counts = (DownloadColumn(), TransferSpeedColumn()) if unit_bytes else (MofNCompleteColumn(),)
    return Progress(
        "[progress.description]{task.description}", BarColumn(), *counts, TimeRemainingColumn(),
        console=Console(stderr=True), transient=True,
    )


def say(message: str, quiet: bool = False) -> None:
    """A one-line note on stderr (downloads, fallbacks), so logs show what happened."""
    if not quiet:
        print(message, file=sys.stderr)
