"""What :func:`vaekit.fit` does before its first step: settle the model's shapes, build the
optimiser, describe the settings a resume compares, and start a run's state fresh or restore
it from the checkpoint (rank 0 reads; every rank restores)."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from vaekit import checkpoint, noise, rundir
from vaekit.arguments import Budget
from vaekit.callbacks import SessionTime, earlier_sessions
from vaekit.checkpoint import TrainState
from vaekit.devices import uncompiled
from vaekit.errors import VaekitError
from vaekit.model import num_classes
from vaekit.rundir import RunDirectory
from vaekit.schedules import TorchScheduler
from vaekit.sources import Source, training_fingerprint


def open_run(out, overwrite: bool, resume: bool) -> tuple[RunDirectory | None, bool]:
    """(the run directory, whether fit prepared or locked it, and so ends it). A
    :class:`RunDirectory` the caller prepared (or locked, to resume) stays the caller's."""
    if out is None:
        return None, False
    run = out if isinstance(out, RunDirectory) else RunDirectory(out)
    if resume:
        return (run, False) if run.locked else (run.lock(), True)
    return (run, False) if run.prepared else (run.prepare(overwrite), True)


def materialize(model, source: Source, batch_size: int, device: torch.device) -> None:
    """Before the first step: one forward pass without gradients, in eval mode, on a first
    batch (:func:`vaekit.protocol.check_model`). Networks with lazily sized layers and the
    model's data and latent shapes are settled before the optimiser sees the parameters, and
    a model that does not keep vaekit's protocol or does not fit the data (a network that is
    not an nn.Module, an encoder width that does not fit the latent size, a decoder output
    of another shape than the data's) fails here, before a run directory is touched. Draws
    from a forked generator, before the run's own draws start."""
    from vaekit.protocol import check_model

    x, y = source.first_batch(min(batch_size, 8))
    check_model(model, x[:8].to(device), labels(model, y, device, 8))


def labels(model, y, device: torch.device, n: int | None = None) -> torch.Tensor | None:
    """The labels a conditional model gets (None for an unconditional one)."""
    if not num_classes(model):
        return None
    if y is None:
        raise VaekitError("this conditional model needs class labels with its data: give (x, labels)")
    y = torch.as_tensor(y).long()
    return (y if n is None else y[:n]).to(device, non_blocking=True)


def make_optimizer(model, optimizer, lr: float | None, weight_decay: float, device: torch.device):
    """``optimizer`` itself, ``optimizer(params)``, or fused Adam(``lr``): the default
    per-parameter loop was the largest single cost of a CPU step (docs/performance.md)."""
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer is not None:
        return optimizer(params)
    return torch.optim.Adam(params, lr=1e-3 if lr is None else lr, weight_decay=weight_decay,
                            fused=device.type in ("cpu", "cuda"))


def describe_optimizer(optimizer: torch.optim.Optimizer) -> str:
    """The optimiser's class and the hyper-parameters that define its update (not the
    learning rate, which a schedule changes): what a resume compares."""
    group = optimizer.param_groups[0] if optimizer.param_groups else {}
    keys = ("betas", "eps", "weight_decay", "momentum", "nesterov", "lr_decay", "amsgrad", "dampening")
    args = ", ".join(f"{k}={tuple(group[k]) if isinstance(group[k], list) else group[k]!r}"
                     for k in keys if k in group)
    return f"{type(optimizer).__name__}({args})"


def describe(objective) -> str:
    """A stable description of an objective (no memory addresses): what resume compares.
    A compiled objective is described as the objective it compiles (the same maths)."""
    objective = uncompiled(objective)
    if isinstance(objective, functools.partial):
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(objective.keywords.items()))
        return f"{describe(objective.func)}({args})"
    name = getattr(objective, "__qualname__", None) or type(objective).__qualname__
    return f"{getattr(objective, '__module__', '')}.{name}"


def set_lr(optimizer, lr: float, schedule) -> None:
    """Every parameter group trains at ``lr`` from now on (a :class:`Schedule` multiplies it)."""
    if isinstance(schedule, TorchScheduler):
        raise VaekitError("a torch scheduler keeps its own base learning rates: a resumed run cannot change "
                          "lr under one (start a new run, or change the rate through the scheduler)")
    for group in optimizer.param_groups:
        if "initial_lr" in group:
            group["initial_lr"] = lr
        group["lr"] = lr


def begin(run: RunDirectory | None, model, device: torch.device, settings: dict, world: dict, strategy,
          seed: int, fingerprint: str, session: SessionTime) -> TrainState:
    """A new run's state; its run.json (the session's clock started) and an empty
    metrics.jsonl, and the run committed (a replaced old run is gone from here on)."""
    settings["noise"] = noise.KEYED

    def start() -> None:
        if run is not None:
            session.start(run, model.event_shape,
                          run_record(model, device, settings, world,
                                     [{"epoch": 0, "step": 0, **_stretch(world, settings)}]), [])
            run.write_metrics([])
            run.commit()

    strategy.together(start, main_only=True)
    return TrainState.fresh(seed, fingerprint)


def restore(run: RunDirectory | None, where: Path, model, optimizer, device: torch.device, settings: dict,
            world: dict, strategy, fingerprint: str, sources: tuple[Source, Source | None], schedule,
            budget, lr: float | None, session: SessionTime, plan: Budget) -> tuple[TrainState, bool]:
    """The checkpoint's state, after checking that the settings and data are the run's (rank
    0 reads the file and sends it to the others); a changed ``lr`` is applied and recorded.
    And whether the run is already :func:`finished` under ``plan``: then nothing is written."""
    def check() -> bytes:
        raw = checkpoint.read(run.path)
        ckpt = checkpoint.load(run.path, raw)
        checkpoint.check_settings(ckpt, settings)
        stored = ckpt.meta["data_fingerprint"]
        # checkpoints of earlier versions fingerprinted large or on-demand data by sampled rows only
        if stored != fingerprint and stored != training_fingerprint(*sources, sampled=True):
            raise VaekitError(f"the data are not the data {run.path} was trained on: resuming on other data "
                              "would not continue the same run")
        return raw

    ckpt = checkpoint.load(where, strategy.broadcast(strategy.together(check, main_only=True)))
    state = checkpoint.restore(ckpt, model, optimizer, strategy.rank)
    state.fingerprint = fingerprint
    saved = ckpt.settings or {}
    settings["noise"] = saved.get("noise", noise.GLOBAL)  # runs of earlier versions keep their draws
    settings["lr"] = saved.get("lr")
    if lr is not None and optimizer.param_groups:
        group = optimizer.param_groups[0]
        if lr != group.get("initial_lr", group["lr"]):
            set_lr(optimizer, lr, schedule)
            settings["lr"] = lr
    if schedule is not None and ckpt.meta.get("schedule") is not None:
        schedule.load_state_dict(ckpt.meta["schedule"])
    if budget is not None:
        budget.load_state_dict(ckpt.meta.get("plan"))
    steps = state.steps
    if steps is None:  # a checkpoint written before the step count was kept
        steps = state.epoch * sources[0].steps(settings["batch_size"])
    done = strategy.broadcast(strategy.together(
        lambda: b"1" if finished(run.path, state.epoch, state.in_epoch, steps, state.seconds, state.plan, plan)
        else b"0", main_only=True))
    if done == b"1":
        return state, True

    def resumed() -> None:
        run.remove_temporary_files()
        run.write_metrics(state.metrics)
        info = _info(run)
        record = run_record(model, device, settings, world, _stretches(info, state, _stretch(world, settings)))
        session.start(run, model.event_shape, record, earlier_sessions(info))
        run.commit()

    strategy.together(resumed, main_only=True)
    return state, False


def finished(run_dir: str | Path, epoch: int, in_epoch, steps: int | None, seconds: float, plan: dict | None,
             budget: Budget) -> bool:
    """Whether the run at this checkpoint position (``epoch`` done, ``in_epoch`` the progress
    inside the next, ``steps`` and training ``seconds`` in all, a time budget's ``plan``) has
    nothing left to train under ``budget`` (as fit's loop decides) and its last session
    ended (:func:`ended`: the final evaluation and figures were made after it). A resume of
    a finished run changes nothing; a larger budget trains on."""
    if in_epoch is not None:
        return False
    spent = ((budget.epochs is not None and epoch >= budget.epochs)
             or (budget.steps is not None and steps is not None and steps >= budget.steps)
             or (budget.time is not None and (seconds >= budget.time or (  # a plan made for this budget
                 plan is not None and plan.get("budget") == budget.time and steps is not None
                 and steps >= plan["total_steps"]))))
    if not spent:
        return False
    recorded = ended(run_dir)
    if recorded is not None:
        return recorded
    # a run from before run.json recorded it: the final evaluation no older than the checkpoint
    folder = Path(run_dir)
    try:
        return (folder / rundir.EVALUATION).stat().st_mtime >= (folder / rundir.CHECKPOINT).stat().st_mtime
    except OSError:
        return False


def ended(run_dir: str | Path) -> bool | None:
    """Whether the run's last training session ended (budget spent or asked to stop, then
    the final evaluation and figures made), rather than being stopped by a signal, killed or
    still running: run.json's ``ended``. None where run.json does not say (runs from before
    it was recorded, an unreadable run.json). The status `vaekit runs` shows follows it."""
    try:
        info = rundir.read_json(Path(run_dir) / rundir.INFO, "the run's description", rundir.RECORD_BYTES)
    except (OSError, VaekitError):
        return None
    value = info.get("ended") if isinstance(info, dict) else None
    return value if isinstance(value, bool) else None


def run_record(model, device: torch.device, settings: dict, world: dict, trained_with: list) -> dict:
    """What run.json says about how the run is trained (the plan `vaekit runs` reads), with
    the world size and backend of each stretch of it."""
    return {"model": type(model).__name__, "device": str(device), "precision": settings["precision"],
            "epochs": settings["epochs"], "steps": settings["steps"], "time_budget": settings["time_budget"],
            "checkpoint_minutes": settings["checkpoint_minutes"], **world, "trained_with": trained_with}


def _info(run: RunDirectory) -> dict:
    """run.json as it was before this session ({} where it cannot be read)."""
    try:
        return run.read_info()
    except VaekitError:
        return {}


def _stretch(world: dict, settings: dict) -> dict:
    """What a stretch of run.json's ``trained_with`` is trained with: the world size, the
    backend and the precision."""
    return {**world, "precision": settings["precision"]}


def _stretches(info: dict, state: TrainState, world: dict) -> list:
    """run.json's ``trained_with`` on a resume: a stretch added when the world size, the
    backend or the precision changes (runs of earlier versions count as one fp32 process)."""
    before = {"world_size": info.get("world_size", 1), "backend": info.get("backend"),
              "precision": info.get("precision", "fp32")}
    history = info.get("trained_with")
    if not isinstance(history, list):
        history = [{"epoch": 0, "step": 0, **before}]
    if before == world:
        return history
    step = 0 if state.in_epoch is None else state.in_epoch.step
    return [*history, {"epoch": state.epoch, "step": step, **world}]
