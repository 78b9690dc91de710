"""Presets: published protocols as TOML files (``<name>.toml`` in this folder), each a
``[preset]`` table (paper, model, protocol, metric, the published number, notes; ``unconfirmed``
instead of ``published`` says where the paper's number is and why it is not given) and a
``[settings]`` table of :class:`~vaekit.app.config.Config` keys. ``vaekit train --preset NAME``
starts from the settings; a ``--config`` file and flags override them.

A reproduction run (``benchmarks/reproduce.py NAME``) writes its record to
``records/<name>.json`` here; ``vaekit presets`` shows the measured number from it next to
the published one, or "not yet run".
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaekit.errors import VaekitError

FOLDER = Path(__file__).resolve().parent
RECORDS = FOLDER / "records"
META_KEYS = {"paper": str, "reference": str, "model": str, "protocol": str, "protocol_details": str, "metric": str,
             "measure": str, "published": (int, float), "unconfirmed": str, "note": str}
# What a reproduction measures on the test set: the NLL (−log-likelihood, K = 5000), the
# loss (−ELBO) or the ELBO; the published number is in the same units.
MEASURES = ("nll", "loss", "elbo")


@dataclass
class Preset:
    name: str
    meta: dict[str, Any]
    settings: dict[str, Any]

    def config(self):
        """The preset's settings as a checked :class:`~vaekit.app.config.Config`."""
        from vaekit.app.config import Config

        return Config.from_dict({**self.settings, "preset": self.name}, source=f"preset {self.name}")

    @property
    def published(self) -> float | None:
        return self.meta.get("published")

    @property
    def measure(self) -> str:
        return self.meta.get("measure", "nll")


def names() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.toml"))


def load(name: str) -> Preset:
    """The preset ``name`` (a clear error naming the known ones otherwise)."""
    path = FOLDER / f"{name}.toml"
    if "/" in name or "\\" in name or not path.is_file():
        import difflib

        known = names()
        hint = difflib.get_close_matches(name, known, n=1)
        extra = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise VaekitError(f"unknown preset '{name}'{extra}; known: {', '.join(known)} (vaekit presets lists them)")
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise VaekitError(f"preset file {path} is not valid TOML: {err}") from None
    meta, settings = values.get("preset"), values.get("settings")
    if not isinstance(meta, dict) or not isinstance(settings, dict) or set(values) - {"preset", "settings"}:
        raise VaekitError(f"preset file {path} must hold exactly a [preset] and a [settings] table")
    for key, value in meta.items():
        if key not in META_KEYS or not isinstance(value, META_KEYS[key]) or isinstance(value, bool):
            raise VaekitError(f"preset file {path}: unknown or mistyped [preset] entry '{key}'")
    if meta.get("measure", "nll") not in MEASURES:
        raise VaekitError(f"preset file {path}: measure must be one of {', '.join(MEASURES)}")
    return Preset(name, meta, settings)


def record(name: str, folder: Path | None = None) -> dict[str, Any] | None:
    """The reproduction record of preset ``name`` (``benchmarks/reproduce.py``), if any."""
    path = (folder or RECORDS) / f"{name}.json"
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise VaekitError(f"cannot read the record {path}: {err}") from None
    return value if isinstance(value, dict) else None


def measured_text(rec: dict[str, Any] | None) -> str:
    """The measured column: the number with its standard error, training time and date."""
    if rec is None or not isinstance(rec.get("measured"), (int, float)):
        return "not yet run"
    text = f"{rec['measured']:.2f}"
    if isinstance(rec.get("measured_se"), (int, float)):
        se = rec["measured_se"]
        text += " ± <0.01" if se < 0.005 else f" ± {se:.2f}"
    extra = []
    if isinstance(rec.get("training_seconds"), (int, float)):
        extra.append(_duration(rec["training_seconds"]))
    if rec.get("budget_reached") is False:
        extra.append(f"stopped at {rec.get('reached', 'part of the budget')}")
    if isinstance(rec.get("date"), str):
        extra.append(rec["date"])
    return text + (f" ({', '.join(extra)})" if extra else "")


def table(folder: Path | None = None) -> list[dict[str, Any]]:
    """One row per preset: name, paper, model, protocol, metric, published, measured."""
    rows = []
    for name in names():
        preset = load(name)
        rec = record(name, folder)
        rows.append({"name": name, "paper": preset.meta.get("paper", ""), "model": preset.meta.get("model", ""),
                     "protocol": preset.meta.get("protocol", ""), "metric": preset.meta.get("metric", ""),
                     "published": preset.published, "unconfirmed": preset.meta.get("unconfirmed"),
                     "measured": measured_text(rec),
                     "measured_value": None if rec is None else rec.get("measured")})
    return rows


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"
