"""``vaekit data list|fetch``: the published datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vaekit.app.commands.options import (
    Command,
    Opt,
)
from vaekit.errors import VaekitError

app = typer.Typer(no_args_is_help=True, help="Published datasets: what is known and cached; fetch ahead of time.")


@app.command("list")
def data_list() -> None:
    """Show the known datasets, whether each is in the cache, and its size."""
    from vaekit.app.console import size_text
    from vaekit.app.data import download, mnist

    rows = [("name", "cached", "size", "verified by"),
            ("digits", "built in", "-", "(bundled with scikit-learn)")]
    for ds in mnist.REMOTE.values():
        present, size = download.status(ds)
        total = len(ds.files)
        cached = "yes" if present == total else "no" if present == 0 else f"partly ({present}/{total} files)"
        rows.append((ds.name, cached, size_text(size) if present else f"{ds.download_size} to download",
                     ds.verified_by))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"cache: {download.cache_dir()} (set ${download.ENV_CACHE} to use another folder)")


@app.command("fetch", cls=Command)
def data_fetch(
    name: Annotated[str, typer.Argument(metavar="NAME", help="mnist | fashion-mnist | kmnist.")],
    mirror: Annotated[str | None, Opt(help="Base URL(s), comma-separated, to download from as URL/<file name>.")] = None,
    data_dir: Annotated[Path | None, Opt(help="Download into this folder instead of the cache.")] = None,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="No progress bar or messages.")] = False,
) -> None:
    """Download a published dataset ahead of time (and re-check files already there)."""
    from vaekit.app.config import parse_mirrors
    from vaekit.app.data import download, mnist

    if name not in mnist.REMOTE:
        known = ", ".join(mnist.REMOTE)
        extra = " (digits is built in: nothing to fetch)" if name == "digits" else ""
        raise VaekitError(f"unknown dataset '{name}'{extra}; known: {known}")
    if mirror is not None:
        parse_mirrors(mirror)
    ds = mnist.REMOTE[name]
    folder = download.fetch(ds, mirror=mirror, dest=data_dir, quiet=quiet, verify=True)
    print(f"{name}: {len(ds.files)} files verified ({ds.verified_by}) in {folder}")


# ---------------------------------------------------------------------- helpers
