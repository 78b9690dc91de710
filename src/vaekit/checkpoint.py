"""Checkpoints: everything a run needs to continue exactly where it stopped.

One file, ``checkpoint.safetensors`` in the run directory. Its tensors are the model's
weights (``model.*``), the optimiser's state (``optimizer.<param>.<name>``), every random
generator's state (``rng.torch``: the generator ``rsample`` draws from, which training keeps
in a forked copy of torch's global one; ``rng.cuda`` on a GPU; ``rng.order``: the data
order; ``rng.draws``: dynamic binarisation; under torch.distributed, ``rng.rank<r>.torch``
(and ``.cuda``) for every rank r > 0) and, inside an epoch, the epoch's running sums.
Everything else (counters, the metrics so far, the best validation score, the optimiser's
hyper-parameters, the training settings, the resolved config of a CLI run, a fingerprint of
the data) is JSON in the safetensors header. :func:`vaekit.rundir.encode_tensors` adds a SHA-256 over
both, so a damaged or edited checkpoint is refused. The file is replaced atomically
(:func:`vaekit.rundir.atomic_write`): a kill at any instant leaves the previous complete
checkpoint or the new one.

Exact resume: checkpoints are taken only between optimisation steps. One taken inside an
epoch stores the data-order generator's state from *before* the epoch's shuffle and the
number of batches done; resuming replays the same shuffle and skips those batches, so every
later random draw and every floating-point operation is the one the uninterrupted run makes.

Data-parallel runs (:mod:`vaekit.distributed`): everything but the per-rank generators is the
same on every rank and counts global minibatches, so a checkpoint resumes at any world size;
at the world size that wrote it, exactly; at another, each rank it did not hold starts a
fresh stream seeded from (seed, rank, position).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vaekit import __version__, rundir
from vaekit.errors import NoCheckpoint, VaekitError
from vaekit.policy import MAY_CHANGE_ON_RESUME  # the one resume policy

FORMAT = 1



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
    steps: int | None = 0  # optimisation steps in the whole run (None: not recorded, older checkpoints)
    seconds: float = 0.0  # training time so far (at the last checkpoint)
    schedule: dict[str, Any] | None = None  # the learning-rate schedule's own state
    plan: dict[str, Any] | None = None  # a time budget's plan (vaekit.schedules.TimeBudget)

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


# ---------------------------------------------------------------------- writing
def save(run: rundir.RunDirectory, model, optimizer, state: TrainState, settings: dict[str, Any],
         config: dict[str, Any] | None = None, ranks: dict[str, torch.Tensor] | None = None,
         distributed: dict[str, Any] | None = None) -> None:
    """Write the run's ``checkpoint.safetensors`` atomically (tensors copied to the CPU, so it
    loads on any device). ``settings``: fit's training settings; ``config``: a CLI run's;
    ``ranks``: the generator states of ranks other than 0 (``rng.rank<r>.torch``, ...);
    ``distributed``: ``{"world_size", "backend"}`` of a data-parallel run."""
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
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    tensors.update(ranks or {})
    tensors["rng.order"] = state.order.get_state()
    tensors["rng.draws"] = state.draws.get_state()
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
        "config": config,
        "settings": settings,
        "event_shape": list(model.event_shape),
        "data_fingerprint": state.fingerprint,
        "epoch": state.epoch,
        "in_epoch": epoch,
        "bad_in_a_row": state.bad_in_a_row,
        "best": state.best,
        "metrics": state.metrics,
        "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
        "rng": {"device": device.type},
        "steps": state.steps,
        "seconds": state.seconds,
        "schedule": state.schedule,
        "plan": state.plan,
    }
    if distributed is not None:
        meta["distributed"] = distributed
    rundir.atomic_write(run.checkpoint_path, rundir.encode_tensors(tensors, meta))


# ---------------------------------------------------------------------- reading
@dataclass
class Checkpoint:
    path: Path
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def config(self) -> dict[str, Any] | None:
        """The resolved config of a run started from one (the CLI), else None."""
        return self.meta.get("config")

    @property
    def settings(self) -> dict[str, Any] | None:
        """fit's training settings (None in checkpoints written before fit existed)."""
        return self.meta.get("settings")

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["event_shape"])


_SCHEMA = {
    "format": int, "vaekit_version": str, "config": (dict, type(None)), "event_shape": list,
    "data_fingerprint": str, "epoch": int, "in_epoch": (dict, type(None)), "bad_in_a_row": int,
    "best": (dict, type(None)), "metrics": list, "optimizer": dict, "rng": dict,
}
# Fields later versions added: absent from older checkpoints, checked when present.
_OPTIONAL = {"steps": (int, type(None)), "seconds": (int, float), "schedule": (dict, type(None)),
             "plan": (dict, type(None))}


def read(run_dir: str | Path) -> bytes:
    """The bytes of ``run_dir``'s checkpoint file (checked by :func:`load`)."""
    run = rundir.RunDirectory(run_dir)
    run.check_exists()
    path = run.checkpoint_path
    try:
        return rundir.read_regular(path, "the checkpoint", None)
    except FileNotFoundError:
        raise NoCheckpoint(run.path, path.name) from None


def load(run_dir: str | Path, data: bytes | None = None) -> Checkpoint:
    """Read and check ``run_dir``'s checkpoint; nothing in it is executed. ``data``: the
    file's bytes as read elsewhere (rank 0 sends them to the other ranks), checked alike."""
    path = rundir.RunDirectory(run_dir).checkpoint_path
    if data is None:
        data = read(run_dir)
    tensors, meta = rundir.decode_tensors(data, path, "the checkpoint")
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
    for key, kind in _OPTIONAL.items():
        if key in meta and (not isinstance(meta[key], kind) or isinstance(meta[key], bool)):
            raise VaekitError(f"{path}: checkpoint field '{key}' has the wrong type")
    if not all(isinstance(r, dict) and isinstance(r.get("epoch"), int) for r in meta["metrics"]):
        raise VaekitError(f"{path}: checkpoint field 'metrics' must be a list of epoch records")
    if not isinstance(meta.get("settings", {}), (dict, type(None))):
        raise VaekitError(f"{path}: checkpoint field 'settings' has the wrong type")
    if not isinstance(meta.get("distributed", {}), dict):
        raise VaekitError(f"{path}: checkpoint field 'distributed' has the wrong type")
    return Checkpoint(path, meta, tensors)


def restore(ckpt: Checkpoint, model, optimizer, rank: int = 0) -> TrainState:
    """Put the checkpoint's weights, optimiser state and every generator state back; return
    the training counters. Call it last before training, inside a forked RNG state: it sets
    torch's global generators to the run's (rank ``rank``'s; a rank the checkpoint did not
    hold gets a fresh stream from the seed, the rank and the position)."""
    meta, tensors, path = ckpt.meta, ckpt.tensors, ckpt.path
    rundir.load_state(model, _strip(tensors, "model."), path)
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
            metrics=meta["metrics"], steps=meta.get("steps"), seconds=_seconds(meta),
            schedule=meta.get("schedule"), plan=meta.get("plan"),
        )
        prefix = "rng." if rank == 0 else f"rng.rank{rank}."
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        if prefix + "torch" in tensors:
            torch.set_rng_state(tensors[prefix + "torch"])
            if device.type == "cuda" and prefix + "cuda" in tensors:
                torch.cuda.set_rng_state(tensors[prefix + "cuda"], device)
        else:  # a rank the run did not have before: a stream of its own for the rest of it
            from vaekit.devices import seed_draws
            from vaekit.distributed import rank_seed

            seed = int((ckpt.settings or {}).get("seed", 0))
            step = 0 if in_epoch is None else in_epoch.step
            seed_draws(device, rank_seed(seed, rank, state.epoch, step))
        # checkpoints of vaekit 0.1 also hold numpy's and Python's generators, which nothing
        # in training draws from any more: they are left alone
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
        state.setdefault(int(index), {})[name] = value  # torch moves it to the parameter's device
    for index, values in saved.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise VaekitError(f"{path}: the optimiser state cannot be loaded ({err})") from None


def _seconds(meta: dict[str, Any]) -> float:
    """Training time at the checkpoint; for checkpoints that do not record it, the epochs'
    seconds summed (and the current epoch's so far)."""
    if isinstance(meta.get("seconds"), (int, float)):
        return float(meta["seconds"])
    done = sum(float(r.get("seconds", 0.0)) for r in meta["metrics"] if isinstance(r.get("seconds"), (int, float)))
    return done + float((meta.get("in_epoch") or {}).get("seconds", 0.0))


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def check_settings(ckpt: Checkpoint, settings: dict[str, Any]) -> None:
    """Refuse to resume with training settings other than the checkpoint's (listing them),
    except :data:`vaekit.policy.MAY_CHANGE_ON_RESUME`."""
    saved = ckpt.settings
    if saved is None:
        return
    differ = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in settings.items()
              if k not in MAY_CHANGE_ON_RESUME and k in saved and saved[k] != v]
    if differ:
        raise VaekitError(
            f"cannot resume {ckpt.path.parent}: settings differ from the ones its checkpoint was "
            f"trained with ({'; '.join(differ)}); only {', '.join(MAY_CHANGE_ON_RESUME)} may change on resume"
        )
