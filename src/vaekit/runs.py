"""Run directories: what a run writes and how it is read back, with no code execution.

A run directory holds ``config.json`` (the resolved :class:`~vaekit.config.Config`),
``run.json`` (format version, data shape), ``model.safetensors`` (weights), ``metrics.jsonl``
(one line per epoch), ``evaluation.json`` and the figures. Nothing is pickled: weights go
through safetensors and everything else is JSON checked against a schema on the way in.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from vaekit import __version__
from vaekit.config import Config
from vaekit.errors import VaekitError

FORMAT = 1
CONFIG, INFO, WEIGHTS, METRICS, EVALUATION = (
    "config.json",
    "run.json",
    "model.safetensors",
    "metrics.jsonl",
    "evaluation.json",
)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write via a temporary file in the same directory and rename: readers see the old
    file or the new one, never a torn one."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, indent=2) + "\n")


def save_weights(model: torch.nn.Module, path: str | Path) -> None:
    from safetensors.torch import save

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(path, save(state))


def save(model: torch.nn.Module, config: Config, run_dir: str | Path) -> Path:
    """Write ``config.json``, ``run.json`` and ``model.safetensors`` into ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / CONFIG, config.to_dict())
    write_json(
        run_dir / INFO,
        {"format": FORMAT, "vaekit_version": __version__, "event_shape": list(model.event_shape)},
    )
    save_weights(model, run_dir / WEIGHTS)
    return run_dir


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise VaekitError(
            f"{path.parent}: no {path.name} ({what}); is this a vaekit run directory?"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise VaekitError(f"{path}: {what} is not valid JSON ({err})") from None


def load_config(run_dir: str | Path) -> Config:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise VaekitError(f"run directory not found: {run_dir}")
    return Config.from_dict(read_json(run_dir / CONFIG, "the run's config"), str(run_dir / CONFIG))


def load_info(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / INFO
    info = read_json(path, "the run's description")
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        found = info.get("format") if isinstance(info, dict) else None
        raise VaekitError(f"{path}: run format {found!r} is not one this vaekit reads ({FORMAT})")
    shape = info.get("event_shape")
    if not (isinstance(shape, list) and shape and all(isinstance(s, int) and s > 0 for s in shape)):
        raise VaekitError(f"{path}: event_shape must be a list of positive integers, got {shape!r}")
    return info


def load_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load

    if not path.is_file():
        raise VaekitError(
            f"{path.parent}: no {path.name}; the run has no saved weights (did training finish?)"
        )
    try:
        state = load(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as err:
        raise VaekitError(f"{path}: not a readable safetensors file ({err})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:4])}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:4])}")
        if wrong:
            k = wrong[0]
            found, needed = tuple(state[k].shape), tuple(expected[k].shape)
            parts.append(f"{k} has shape {found}, the config needs {needed}")
        raise VaekitError(f"{path}: weights do not match the run's config ({'; '.join(parts)})")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise VaekitError(f"{path}: weights hold NaN or infinite values ({', '.join(bad[:4])})")
    model.load_state_dict(state)


def load_run(run_dir: str | Path):
    """(model in eval mode, config) from a run directory."""
    from vaekit.model import build_model

    run_dir = Path(run_dir)
    config = load_config(run_dir)
    info = load_info(run_dir)
    model = build_model(config, tuple(info["event_shape"]))
    load_weights(model, run_dir / WEIGHTS)
    return model.eval(), config


def load(run_dir: str | Path):
    """The trained model stored in ``run_dir``, rebuilt from its config, in eval mode."""
    return load_run(run_dir)[0]


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise VaekitError(f"{path}: line {number} is not valid JSON") from None
    return rows
