"""Checkpoints: everything a run needs to continue exactly where it stopped.

One file, ``checkpoint.safetensors`` in the run directory. Its tensors are the model's
weights (``model.*``), Adam's state (``optimizer.<param>.<name>``), every random generator's
state (``rng.torch``: the global generator that ``rsample`` draws from; ``rng.order``: the
data order; ``rng.draws``: dynamic binarisation; ``rng.numpy``, ``rng.python``) and, inside
an epoch, the epoch's running sums. Everything else (counters, the metrics so far, the best
validation score, Adam's hyper-parameters, the resolved config, a fingerprint of the data)
is JSON in the safetensors header. :func:`vaekit.runs.encode_tensors` adds a SHA-256 over
both, so a damaged or edited checkpoint is refused. The file is replaced atomically
(:func:`vaekit.runs.atomic_write`): a kill at any instant leaves the previous complete
checkpoint or the new one.

Exact resume: checkpoints are taken only between optimisation steps. One taken inside an
epoch stores the data-order generator's state from *before* the epoch's shuffle and the
number of batches done; resuming replays the same shuffle and skips those batches, so every
later random draw and every floating-point operation is the one the uninterrupted run makes.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaekit import __version__, runs
from vaekit.config import Config
from vaekit.errors import VaekitError

FORMAT = 1

# Settings that say how long to train or how often to save, not what is computed: a resumed
# run may change them. Any other difference is refused (the result would not be the run's).
MAY_CHANGE_ON_RESUME = (
    "epochs", "checkpoint_every", "checkpoint_minutes", "max_bad_steps", "threads", "data_dir",
)


@dataclass
class EpochProgress:
    """How far the current epoch has got: enough to finish it after a restart."""

    order_start: torch.Tensor  # data-order generator state before this epoch's shuffle
    step: int = 0  # batches done (updates and skipped steps alike)
    totals: torch.Tensor | None = None  # summed per-example terms of the batches used
    examples: int = 0  # examples in those batches
    skipped: int = 0  # steps skipped for a non-finite loss or gradient
    clamped: int = 0  # encoder log-variance entries clamped
    bad_in_a_row: int = 0  # consecutive skipped steps, carried across epochs
    seconds: float = 0.0  # training time spent in this epoch before the last checkpoint

    @classmethod
    def begin(cls, order: torch.Generator, bad_in_a_row: int = 0) -> EpochProgress:
        return cls(order.get_state(), bad_in_a_row=bad_in_a_row)


@dataclass
class TrainState:
    """Counters and generators of a training run, besides the model and optimiser."""

    order: torch.Generator
    draws: torch.Generator
    fingerprint: str
    epoch: int = 0  # completed epochs
    in_epoch: EpochProgress | None = None  # progress inside epoch ``epoch + 1``
    bad_in_a_row: int = 0
    best: dict[str, Any] | None = None  # {"metric", "value", "epoch"} of the best validation epoch
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def fresh(cls, seed: int, fingerprint: str) -> TrainState:
        return cls(
            order=torch.Generator().manual_seed(seed),
            draws=torch.Generator().manual_seed(seed + 1),
            fingerprint=fingerprint,
        )

    def where(self) -> str:
        """'epoch 3' at an epoch's end, 'epoch 4, step 17' inside one."""
        if self.in_epoch is None:
            return f"epoch {self.epoch}"
        return f"epoch {self.epoch + 1}, step {self.in_epoch.step}"


def seed_everything(seed: int) -> None:
    """Seed the global generators: torch (initialisation, ``rsample``), numpy and Python."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


FULL_HASH_BYTES = 512 * 1024**2  # above this (or for data read on demand), hash a sample of rows
SAMPLED_ROWS = 4096


def fingerprint(*arrays) -> str:
    """SHA-256 of the data a run trains on (resuming on other data is refused): of every
    value for in-memory data up to ``FULL_HASH_BYTES`` (MNIST: 0.2 s), else of the shape and
    ``SAMPLED_ROWS`` evenly spaced rows, so huge or on-demand data are not read in full."""
    h = hashlib.sha256()
    for x in arrays:
        if x is None:
            continue
        h.update(json.dumps(list(x.shape)).encode())
        if not (torch.is_tensor(x) and x.numel() * x.element_size() <= FULL_HASH_BYTES):
            x = x[torch.linspace(0, len(x) - 1, min(len(x), SAMPLED_ROWS)).long()]
        h.update(x.contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


# ---------------------------------------------------------------------- writing
def save(run_dir: Path, model, optimizer, state: TrainState, config: Config) -> None:
    """Write ``run_dir/checkpoint.safetensors`` atomically."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in opt["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.order"] = state.order.get_state()
    tensors["rng.draws"] = state.draws.get_state()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, gauss_next = random.getstate()
    tensors["rng.python"] = torch.tensor(internal, dtype=torch.int64)
    epoch = None
    if state.in_epoch is not None:
        p = state.in_epoch
        tensors["epoch.order_start"] = p.order_start
        tensors["epoch.totals"] = p.totals if p.totals is not None else torch.zeros(0)
        names = ("step", "examples", "skipped", "clamped", "bad_in_a_row", "seconds")
        epoch = {k: getattr(p, k) for k in names}
    meta = {
        "format": FORMAT,
        "vaekit_version": __version__,
        "config": config.to_dict(),
        "event_shape": list(model.event_shape),
        "data_fingerprint": state.fingerprint,
        "epoch": state.epoch,
        "in_epoch": epoch,
        "bad_in_a_row": state.bad_in_a_row,
        "best": state.best,
        "metrics": state.metrics,
        "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
        "rng": {
            "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
            "python": {"version": version, "gauss_next": gauss_next},
        },
    }
    runs.atomic_write(run_dir / runs.CHECKPOINT, runs.encode_tensors(tensors, meta))


# ---------------------------------------------------------------------- reading
@dataclass
class Checkpoint:
    path: Path
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    config: Config

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["event_shape"])


_SCHEMA = {
    "format": int, "vaekit_version": str, "config": dict, "event_shape": list,
    "data_fingerprint": str, "epoch": int, "in_epoch": (dict, type(None)), "bad_in_a_row": int,
    "best": (dict, type(None)), "metrics": list, "optimizer": dict, "rng": dict,
}


def load(run_dir: str | Path) -> Checkpoint:
    """Read and check ``run_dir``'s checkpoint; nothing in it is executed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise VaekitError(f"run directory not found: {run_dir}")
    path = run_dir / runs.CHECKPOINT
    if not path.is_file():
        raise VaekitError(
            f"{run_dir} has no {runs.CHECKPOINT} to resume from (the run stopped before its "
            "first checkpoint, or checkpoint_every and checkpoint_minutes were both 0); "
            "start it again with --overwrite"
        )
    tensors, meta = runs.read_tensors(path, "the checkpoint")
    if "format" not in meta:
        raise VaekitError(f"{path}: not a vaekit checkpoint (its header has no vaekit format)")
    if meta["format"] != FORMAT:
        found, version = meta["format"], meta.get("vaekit_version", "unknown")
        raise VaekitError(
            f"{path}: checkpoint format {found!r} (written by vaekit {version}) is not the one "
            f"this vaekit {__version__} reads ({FORMAT}); resume it with the vaekit that wrote it"
        )
    for key, kind in _SCHEMA.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise VaekitError(f"{path}: checkpoint field '{key}' is missing or has the wrong type")
    if not all(isinstance(r, dict) and isinstance(r.get("epoch"), int) for r in meta["metrics"]):
        raise VaekitError(f"{path}: checkpoint field 'metrics' must be a list of epoch records")
    config = Config.from_dict(meta["config"], f"{path} (its config)")
    return Checkpoint(path, meta, tensors, config)


def restore(ckpt: Checkpoint, model, optimizer) -> TrainState:
    """Put the checkpoint's weights, optimiser state and every generator state back; return
    the training counters. Call it last before training: it sets the global generators."""
    meta, tensors, path = ckpt.meta, ckpt.tensors, ckpt.path
    runs.load_state(model, _strip(tensors, "model."), path)
    _restore_optimizer(optimizer, meta["optimizer"], _strip(tensors, "optimizer."), path)
    try:
        order, draws = torch.Generator(), torch.Generator()
        order.set_state(tensors["rng.order"])
        draws.set_state(tensors["rng.draws"])
        in_epoch = None
        if meta["in_epoch"] is not None:
            e = meta["in_epoch"]
            totals = tensors["epoch.totals"]
            torch.Generator().set_state(tensors["epoch.order_start"])  # refuse a bad state now
            in_epoch = EpochProgress(
                order_start=tensors["epoch.order_start"], step=int(e["step"]),
                totals=totals if totals.numel() else None, examples=int(e["examples"]),
                skipped=int(e["skipped"]), clamped=int(e["clamped"]),
                bad_in_a_row=int(e["bad_in_a_row"]), seconds=float(e["seconds"]),
            )
        state = TrainState(
            order=order, draws=draws, fingerprint=meta["data_fingerprint"], epoch=meta["epoch"],
            in_epoch=in_epoch, bad_in_a_row=meta["bad_in_a_row"], best=meta["best"],
            metrics=meta["metrics"],
        )
        rng = meta["rng"]
        torch.set_rng_state(tensors["rng.torch"])
        n = rng["numpy"]
        keys = tensors["rng.numpy"].numpy().astype(np.uint32)
        np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached"]))
        p = rng["python"]
        random.setstate((p["version"], tuple(tensors["rng.python"].tolist()), p["gauss_next"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise VaekitError(f"{path}: the checkpoint's training state is inconsistent ({err})") from None
    return state


def _restore_optimizer(optimizer, saved: dict, tensors: dict[str, torch.Tensor], path: Path) -> None:
    current = optimizer.state_dict()
    groups = saved.get("param_groups")
    if not isinstance(groups, list) or [g.get("params") for g in groups if isinstance(g, dict)] != [
        g["params"] for g in current["param_groups"]
    ]:
        raise VaekitError(f"{path}: the optimiser state does not fit this model's parameters")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        if not index.isdigit() or int(index) >= len(params):
            raise VaekitError(f"{path}: unexpected optimiser entry '{key}'")
        if name in ("exp_avg", "exp_avg_sq") and value.shape != params[int(index)].shape:
            raise VaekitError(f"{path}: optimiser entry '{key}' does not fit its parameter")
        state.setdefault(int(index), {})[name] = value
    for index, values in saved.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise VaekitError(f"{path}: the optimiser state cannot be loaded ({err})") from None


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def resume_config(ckpt: Checkpoint, stored: Config, changes: dict[str, Any]) -> Config:
    """The config a resumed run uses: ``stored`` (the run's config.json) with ``changes``
    applied; refused, listing the differences, if anything but a budget setting differs
    from what the checkpoint was trained with."""
    config = stored.override(changes, source="--resume")
    refused = [
        line for line in ckpt.config.diff(config) if line.split(":", 1)[0] not in MAY_CHANGE_ON_RESUME
    ]
    if refused:
        raise VaekitError(
            f"cannot resume {ckpt.path.parent}: settings differ from the ones its checkpoint was "
            f"trained with ({'; '.join(refused)}); only {', '.join(MAY_CHANGE_ON_RESUME)} may "
            "change on resume. Start a new run (another --out) instead"
        )
    return config
