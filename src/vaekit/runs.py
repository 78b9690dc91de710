"""Run directories: what a run writes and how it is read back, with no code execution.

A run directory holds ``config.json`` (the resolved :class:`~vaekit.config.Config`),
``run.json`` (format version, data shape), ``model.safetensors`` (weights), ``metrics.jsonl``
(one line per epoch), ``evaluation.json``, the figures, and while training
``checkpoint.safetensors`` (see :mod:`vaekit.checkpoint`) and ``best.safetensors`` (the
weights of the best validation epoch). Nothing is pickled: weights go through safetensors
and everything else is JSON checked against a schema on the way in. Every file is written
atomically, and the safetensors files vaekit writes carry a SHA-256 of their content in the
header, so a damaged or edited file is refused instead of silently used.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vaekit import __version__
from vaekit.config import Config
from vaekit.errors import VaekitError, WriteError

FORMAT = 1
CONFIG, INFO, WEIGHTS, METRICS, EVALUATION = (
    "config.json",
    "run.json",
    "model.safetensors",
    "metrics.jsonl",
    "evaluation.json",
)
CHECKPOINT, BEST = "checkpoint.safetensors", "best.safetensors"
DATA = "data.json"  # how the data were binarised/standardised (vaekit.data.write_run_data)
# The files a run writes besides its figures: what --overwrite replaces, and nothing else.
RUN_FILES = (CONFIG, INFO, WEIGHTS, METRICS, EVALUATION, CHECKPOINT, BEST, DATA)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write via a temporary file in the same directory, fsync it, rename it over ``path``
    and fsync the directory: readers (and a restart after a crash) see the old file or the
    new one, never a torn one. A failed write (full disk, no permission) leaves ``path`` as
    it was, removes the temporary file and raises :class:`~vaekit.errors.WriteError`."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp = None
    try:
        fd, tmp = _create_temporary(path)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_directory(path.parent)
    except OSError as err:
        raise WriteError(
            f"could not write {path}: {err.strerror or err}; the previous {path.name}, if any, "
            "is unchanged"
        ) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _create_temporary(path: Path) -> tuple[int, str]:
    # Not tempfile.mkstemp: its files are private (0600); this one gets the umask's mode,
    # like any file the user creates.
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {path}")


def _fsync_directory(folder: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def remove_temporary_files(run_dir: str | Path) -> None:
    """Delete what an atomic write killed half-way left behind (``.NAME.*.tmp``)."""
    for name in RUN_FILES:
        for leftover in Path(run_dir).glob(f".{name}.*.tmp"):
            leftover.unlink(missing_ok=True)


def check_writable(folder: str | Path) -> None:
    """Raise :class:`VaekitError` unless a file can be created in ``folder``."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".vaekit-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise WriteError(f"cannot write to {folder}: {err.strerror or err}") from None


def write_output(path: str | Path, writer: Callable[[io.BytesIO], Any]) -> None:
    """Atomically write what ``writer`` puts in a buffer (``np.save``, ``savefig``, ...):
    a failure leaves no half-written file behind."""
    buffer = io.BytesIO()
    writer(buffer)
    atomic_write(path, buffer.getvalue())


def write_json(path: str | Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, indent=2) + "\n")


# ---------------------------------------------------------------------- tensors
def encode_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> bytes:
    """safetensors bytes of ``tensors``, with ``meta`` as JSON under the header's one
    ``vaekit`` key (one key: safetensors stores metadata unordered, and one key keeps the
    bytes reproducible), plus a SHA-256 over the names, shapes, values and ``meta`` that
    :func:`read_tensors` checks."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    meta = dict(meta or {})
    meta["sha256"] = _digest(tensors, meta)
    return save(tensors, metadata={"vaekit": json.dumps(meta, sort_keys=True)})


def read_tensors(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, vaekit metadata) of a safetensors file, refusing anything else (a pickle,
    a truncated file) and any file whose vaekit checksum does not match its content.
    A safetensors file from elsewhere (no vaekit metadata) gives empty metadata."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise VaekitError(f"{path.parent}: no {path.name} ({what})") from None
    except OSError as err:
        raise VaekitError(f"cannot read {path} ({what}): {err.strerror or err}") from None
    try:
        tensors = load(data)
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
        meta = json.loads(header.get("vaekit", "{}"))
        if not isinstance(meta, dict):
            raise ValueError("its vaekit metadata is not a table")
    except (SafetensorError, ValueError, UnicodeDecodeError, AttributeError) as err:
        raise VaekitError(
            f"{path}: {what} is not a readable safetensors file ({err}); it may be truncated, "
            "or not a safetensors file at all"
        ) from None
    digest = meta.pop("sha256", None)
    if digest is not None and digest != _digest(tensors, meta):
        raise VaekitError(
            f"{path}: {what} does not match its checksum: the file was damaged or edited"
        )
    return tensors, meta


def _digest(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def save_weights(model: torch.nn.Module, path: str | Path, **meta: Any) -> None:
    atomic_write(path, encode_tensors(model.state_dict(), meta))


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
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VaekitError(
            f"{path.parent}: no {path.name} ({what}); is this a vaekit run directory?"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise VaekitError(f"{path}: {what} is not valid JSON ({err})") from None
    except OSError as err:
        raise VaekitError(f"cannot read {path} ({what}): {err.strerror or err}") from None


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
    if not path.is_file():
        raise VaekitError(
            f"{path.parent}: no {path.name}; the run has no saved weights (did training finish?)"
        )
    state, _ = read_tensors(path, "the weights")
    load_state(model, state, path)


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``state`` into ``model`` after checking names, shapes, dtypes and finiteness."""
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
    kinds = [k for k in expected if state[k].dtype != expected[k].dtype]
    if kinds:
        k = kinds[0]
        raise VaekitError(f"{path}: {k} is stored as {state[k].dtype}, the model uses {expected[k].dtype}")
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
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise VaekitError(f"cannot read {path}: {err}") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise VaekitError(f"{path}: line {number} is not valid JSON") from None
        if not (isinstance(row, dict) and isinstance(row.get("epoch"), int)):
            raise VaekitError(f"{path}: line {number} is not an epoch's record (an object with 'epoch')")
        rows.append(row)
    return rows


def write_metrics(run_dir: str | Path, rows: list[dict[str, Any]]) -> None:
    """Replace ``metrics.jsonl`` by ``rows`` (the checkpoint's copy is the authority on resume)."""
    atomic_write(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in rows))


def append_metrics(run_dir: str | Path, row: dict[str, Any]) -> None:
    """Add one epoch's line; a failed write is rolled back so the file never ends torn."""
    path = Path(run_dir) / METRICS
    try:
        with open(path, "a") as f:
            size = f.tell()
            try:
                f.write(json.dumps(row) + "\n")
                f.flush()
            except OSError:
                f.truncate(size)
                raise
    except OSError as err:
        raise WriteError(f"could not write {path}: {err.strerror or err}") from None
