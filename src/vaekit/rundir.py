"""Run directories: the files a run writes, owned by one object (:class:`RunDirectory`),
read back with no code execution.

A run directory holds ``run.json`` (format version, data shape, how it was trained),
``model.safetensors`` (weights), ``metrics.jsonl`` (one line per epoch), ``evaluation.json``
(and ``evaluation-SPLIT.json`` from ``vaekit evaluate``), the figures, and while training
``checkpoint.safetensors`` (see :mod:`vaekit.checkpoint`) and ``best.safetensors`` (the
weights of the best validation epoch). Runs started from a config (the CLI) also hold
``config.json`` (the resolved settings) and ``data.json`` (how the data were binarised or
standardised); this module keeps them as plain JSON and leaves their meaning to the app.

Nothing is pickled: weights go through safetensors and everything else is JSON checked
against a schema on the way in. Every file is written atomically, and the safetensors files
vaekit writes carry a SHA-256 of their content in the header, so a damaged or edited file
is refused instead of silently used.
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
DATA = "data.json"  # how the data were binarised/standardised (the app's data record)
# The files a run writes besides its figures: what --overwrite replaces, and nothing else.
RUN_FILES = (CONFIG, INFO, WEIGHTS, METRICS, EVALUATION, CHECKPOINT, BEST, DATA)
FIGURES = ("latent.png", "manifold.png", "reconstructions.png", "samples.png", "curves.png",
           "traversals.png", "interpolations.png")


class RunDirectory:
    """The files of one run directory: their names, and reading and writing each of them.

    ``prepare`` readies it for a new run (refusing to replace a run unless told to); after
    that every write is atomic. Readers check what they read and never execute it.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.prepared = False

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------ setting up
    def present(self) -> list[str]:
        """The run files already there."""
        return [name for name in RUN_FILES if (self.path / name).exists()]

    def prepare(self, overwrite: bool = False) -> RunDirectory:
        """Create the folder (or reuse it); refuse one holding a run unless ``overwrite``, in
        which case that run's files (and only those, figures included) are removed."""
        if self.path.exists() and not self.path.is_dir():
            raise VaekitError(f"--out {self.path} exists and is not a directory")
        present = self.present()
        if present and not overwrite:
            raise VaekitError(
                f"{self.path} already holds a run ({', '.join(present[:3])}); choose another --out, "
                f"continue it with --resume {self.path}, or pass --overwrite to replace it"
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise VaekitError(f"cannot create {self.path}: {err.strerror or err}") from None
        check_writable(self.path)
        if present:
            self.remove_temporary_files()
            for name in (*RUN_FILES, *FIGURES):
                try:
                    (self.path / name).unlink(missing_ok=True)
                except OSError as err:
                    raise VaekitError(f"cannot remove the old {self.path / name}: {err.strerror or err}") from None
        self.prepared = True
        return self

    def discard(self) -> None:
        """Remove a run that failed before it was complete (none left to mistake for real)."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)

    def remove_temporary_files(self) -> None:
        remove_temporary_files(self.path)

    def check_exists(self) -> None:
        if not self.path.is_dir():
            raise VaekitError(f"run directory not found: {self.path}")

    # ------------------------------------------------------------------ records
    def write_info(self, event_shape, **extra: Any) -> None:
        """``run.json``: the format, the vaekit version, the data's shape and ``extra``."""
        write_json(self.path / INFO, {"format": FORMAT, "vaekit_version": __version__,
                                      "event_shape": list(event_shape), **extra})

    def read_info(self) -> dict[str, Any]:
        return load_info(self.path)

    def update_info(self, **changes: Any) -> None:
        """Rewrite ``run.json`` with ``changes`` merged in (the other keys kept)."""
        write_json(self.path / INFO, {**self.read_info(), **changes})

    def has_config(self) -> bool:
        return (self.path / CONFIG).is_file()

    def write_config(self, values: dict[str, Any]) -> None:
        write_json(self.path / CONFIG, values)

    def read_config(self) -> dict[str, Any]:
        self.check_exists()
        values = read_json(self.path / CONFIG, "the run's config")
        if not isinstance(values, dict):
            raise VaekitError(f"{self.path / CONFIG}: expected a table of settings")
        return values

    def write_data_record(self, record: dict[str, Any]) -> None:
        write_json(self.path / DATA, record)

    def read_data_record(self) -> dict[str, Any]:
        """``data.json`` as a dict; ``{}`` where the run has none."""
        path = self.path / DATA
        if not path.is_file():
            return {}
        record = read_json(path, "the run's data record")
        if not isinstance(record, dict) or not isinstance(record.get("binarize", {}), dict):
            raise VaekitError(f"{path}: not a vaekit data record")
        return record

    # ------------------------------------------------------------------ metrics and results
    def read_metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        write_metrics(self.path, rows)

    def append_metrics(self, row: dict[str, Any]) -> None:
        append_metrics(self.path, row)

    def evaluation_path(self, split: str | None = None) -> Path:
        return self.path / (EVALUATION if split is None else f"evaluation-{split}.json")

    def write_evaluation(self, result: dict[str, Any], split: str | None = None) -> Path:
        path = self.evaluation_path(split)
        write_json(path, result)
        return path

    def figure(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------ weights
    def weights_path(self, which: str = "last") -> Path:
        if which not in ("last", "best"):
            raise VaekitError(f"weights must be 'last' or 'best', got '{which}'")
        return self.path / (WEIGHTS if which == "last" else BEST)

    def save_weights(self, model: torch.nn.Module, which: str = "last", **meta: Any) -> None:
        save_weights(model, self.weights_path(which), **meta)

    def load_weights(self, model: torch.nn.Module, which: str = "last") -> dict[str, Any]:
        """Load the stored weights into ``model`` (checked); returns their metadata."""
        path = self.weights_path(which)
        if not path.is_file():
            what = "saved weights (did training finish?)" if which == "last" else "best weights (no validation data?)"
            raise VaekitError(f"{self.path}: no {path.name}; the run has no {what}")
        state, meta = read_tensors(path, "the weights")
        load_state(model, state, path)
        return meta

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT


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
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise VaekitError(f"{path.parent}: no {path.name} ({what})") from None
    except OSError as err:
        raise VaekitError(f"cannot read {path} ({what}): {err.strerror or err}") from None
    return decode_tensors(data, path, what)


def decode_tensors(data: bytes, path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """:func:`read_tensors` of a file's bytes read elsewhere (another rank sent them);
    ``path`` names the file in messages."""
    from safetensors import SafetensorError
    from safetensors.torch import load

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


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``state`` into ``model`` after checking names, shapes, dtypes and finiteness
    (parameters not yet sized, such as a lazily built per-dimension σ_G, take the stored
    shape); the model keeps its device."""
    _materialize(model, state)
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
            parts.append(f"{k} has shape {found}, the model needs {needed}")
        raise VaekitError(f"{path}: weights do not match the model ({'; '.join(parts)})")
    kinds = [k for k in expected if state[k].dtype != expected[k].dtype]
    if kinds:
        k = kinds[0]
        raise VaekitError(f"{path}: {k} is stored as {state[k].dtype}, the model uses {expected[k].dtype}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise VaekitError(f"{path}: weights hold NaN or infinite values ({', '.join(bad[:4])})")
    model.load_state_dict(state)


def _materialize(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    for name, param in model.named_parameters():
        if isinstance(param, torch.nn.UninitializedParameter) and name in state:
            param.materialize(state[name].shape)


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
