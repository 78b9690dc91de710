"""``vaekit presets``: the published protocols and their reproductions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vaekit.app.commands.options import (
    Opt,
)


def command(
    name: Annotated[str | None, typer.Argument(metavar="NAME", help="A preset to show in full (its notes and settings).", show_default=False)] = None,
    records: Annotated[Path | None, Opt(help="Folder of reproduction records (NAME.json, from benchmarks/reproduce.py) to read the measured numbers from (default: the ones shipped with vaekit).")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print JSON.")] = False,
) -> None:
    """List the presets (published protocols): name, paper, model, protocol, the published
    number and the one measured by a reproduction run (benchmarks/reproduce.py NAME).
    Train one with: vaekit train --preset NAME [flags that override it]."""
    from vaekit.app import presets as known

    if name is not None:
        preset = known.load(name)
        rec = known.record(name, records)
        if as_json:
            print(json.dumps({"name": name, **preset.meta, "settings": preset.settings, "record": rec}))
            return
        for key in ("paper", "reference", "model", "protocol", "protocol_details", "metric", "published"):
            if key in preset.meta:
                print(f"{key}: {preset.meta[key]}")
        if "unconfirmed" in preset.meta:
            print(f"published: not confirmed ({preset.meta['unconfirmed']})")
        print(f"measured: {known.measured_text(rec)}")
        if "note" in preset.meta:
            print("note: " + " ".join(preset.meta["note"].split()))
        print("settings:")
        for key, value in preset.settings.items():
            print(f"  {key} = {json.dumps(value)}")
        return
    rows = known.table(records)
    if as_json:
        print(json.dumps(rows))
        return
    header = ("name", "paper", "model", "protocol", "published", "measured")
    lines = [header] + [(r["name"], r["paper"], r["model"], r["protocol"],
                         _published(r), r["measured"]) for r in rows]
    caps = (40, 30, 46, 46, 11, 60)  # `vaekit presets NAME` shows a preset in full
    widths = [min(max(len(str(line[i])) for line in lines), cap) for i, cap in enumerate(caps)]
    for line in lines:
        cells = [str(c) if len(str(c)) <= w else str(c)[: w - 1] + "…" for c, w in zip(line, widths, strict=True)]
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    if any(r["published"] is None and r.get("unconfirmed") for r in rows):
        print("unconfirmed: the paper's number could not be confirmed or does not measure this protocol "
              "(vaekit presets NAME says which)")
    print("train one: vaekit train --preset NAME [flags]; details: vaekit presets NAME")


def _published(row: dict) -> str:
    """The published column: the number, "unconfirmed" where the paper's could not be
    confirmed (``vaekit presets NAME`` says why), or "-"."""
    if row["published"] is not None:
        return f"{row['published']:.2f}"
    return "unconfirmed" if row.get("unconfirmed") else "-"
