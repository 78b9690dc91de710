"""``fit``: minibatch stochastic optimisation of an objective, for any model and data.

The loop takes a model (an ``nn.Module`` whose ``encode``/``decode`` return distributions),
data (:mod:`vaekit.sources`), an objective ``(model, batch) -> (loss, terms)``
(:mod:`vaekit.objectives`) and an optimiser (Adam by default). With ``out`` it writes a run
directory (:mod:`vaekit.rundir`): one line per epoch in ``metrics.jsonl``, the weights,
atomic checkpoints every ``checkpoint_every`` epochs and every ``checkpoint_minutes``
(between steps) and on SIGINT/SIGTERM, and at the end a quick evaluation and (optionally)
the figures. ``fit(..., resume=True)`` continues from the checkpoint and, for tensors and
Datasets (whose order vaekit draws), ends bit for bit where the uninterrupted run would.

Random draws (the reparameterisation, the data order, dynamic binarisation) come from
generators seeded from ``seed`` inside a forked copy of torch's global state: the caller's
random state is left as it was.

Under an initialised ``torch.distributed`` process group (``torchrun``), ``fit`` trains data
parallel (see docs/distributed.md): every rank computes the same permutation of the data
(from ``seed`` and the epoch) and takes every ``world``-th example of each global minibatch
of ``batch_size``; gradients are averaged by ``DistributedDataParallel`` with each rank's
loss weighted by its share, so a step is the one a single process takes on the whole
minibatch; dynamic binarisation draws are made for the whole minibatch on every rank, so
an example's draw does not depend on the rank that holds it; metrics, the skip decision for
non-finite steps, signals and checkpoint timing are agreed by one small all-reduce per
step. Rank 0 alone touches the run directory.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vaekit import checkpoint, distributed
from vaekit.checkpoint import EpochProgress, TrainState
from vaekit.devices import autocast, check_precision, forked_rng, resolve_device
from vaekit.errors import Interrupted, VaekitError, WriteError
from vaekit.model import num_classes
from vaekit.objectives import Batch, elbo_objective, elbo_terms
from vaekit.protocol import check_model
from vaekit.rundir import RunDirectory
from vaekit.schedules import Schedule, TimeBudget, TorchScheduler, as_schedule
from vaekit.sources import Source, training_fingerprint

TERMS = ("elbo", "reconstruction", "kl")
FINAL_K = 100  # importance samples of the quick evaluation a run stores in evaluation.json


class Callback:
    """Hooks into :func:`fit`'s loop (progress bars, early stopping, experiment trackers).
    Override what you need; ``loop`` is the running :class:`Loop`."""

    def on_fit_start(self, loop: Loop) -> None:
        """Before the first step (after a resume: before the first step left)."""

    def on_step_end(self, loop: Loop, loss: float) -> None:
        """After every optimisation step (``loss``: the minibatch's objective)."""

    def on_epoch_end(self, loop: Loop, record: dict[str, Any]) -> None:
        """After every epoch, with its metrics record (what ``metrics.jsonl`` gets)."""

    def on_fit_end(self, loop: Loop) -> None:
        """After the last epoch, before the final evaluation."""

    def on_results(self, loop: Loop, evaluation: dict[str, Any] | None) -> None:
        """At the very end: the final evaluation (None without a run directory) and the
        figures are written (trackers log them here)."""


@dataclass
class History:
    """What :func:`fit` returns: one metrics record per epoch, the best validation epoch,
    and the run directory if one was written."""

    epochs: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    out: Path | None = None
    stopped_early: bool = False

    def __len__(self) -> int:
        return len(self.epochs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.epochs[i]


class Loop:
    """The running loop as callbacks and schedules see it: ``model``, ``optimizer``,
    ``epoch`` (counting from 1), ``epochs`` (None: until another budget ends the run),
    ``step`` (within the epoch), ``steps_per_epoch``, ``steps_done`` (in the whole run),
    ``total_steps`` (the planned length, None while a time budget has not planned it yet),
    ``epochs_done`` (fractional), ``progress`` (0 → 1 over the planned steps), ``seconds``
    (training time so far, resumed runs included), ``history``, ``out`` (None on ranks other
    than 0, which never write the run directory), ``rank`` and ``world_size`` (0 and 1 in one
    process); ``stop()`` asks it to end after the current epoch (with its checkpoint; under
    torch.distributed every rank stops when one asks)."""

    def __init__(self, model, optimizer, epochs: int | None, steps_per_epoch: int, history: History,
                 out: RunDirectory | None):
        self.model, self.optimizer, self.epochs = model, optimizer, epochs
        self.steps_per_epoch, self.history, self.out = steps_per_epoch, history, out
        self.epoch, self.step, self.stop_requested = 0, 0, False
        self.steps_done, self.epochs_done = 0, 0.0
        self.total_steps: int | None = None
        self.last_validation: float | None = None
        self.rank, self.world_size = 0, 1
        self.budget: TimeBudget | None = None
        self._clock: Callable[[], float] = lambda: 0.0

    @property
    def progress(self) -> float:
        if self.budget is not None:
            return self.budget.progress(self.steps_done)
        return min(1.0, self.steps_done / self.total_steps) if self.total_steps else 0.0

    @property
    def seconds(self) -> float:
        return self._clock()

    def stop(self) -> None:
        self.stop_requested = True


def fit(
    model: torch.nn.Module,
    train_data,
    *,
    validation=None,
    epochs: int | None = None,
    steps: int | None = None,
    time_budget: float | None = None,
    batch_size: int = 128,
    objective: Callable | None = None,
    optimizer: torch.optim.Optimizer | Callable | None = None,
    schedule=None,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    seed: int = 0,
    dynamic_binarization: bool = False,
    grad_clip: float = 0.0,
    max_bad_steps: int = 20,
    out: str | Path | RunDirectory | None = None,
    overwrite: bool = False,
    resume: bool = False,
    checkpoint_every: int = 1,
    checkpoint_minutes: float = 10.0,
    save_best: bool = True,
    figures: bool = False,
    callbacks: Iterable[Callback] = (),
    progress: bool = False,
    class_names: list[str] | None = None,
    feature_names: list[str] | None = None,
    data_units: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> History:
    """Train ``model`` on ``train_data``; returns the :class:`History`.

    - Budget: ``epochs`` passes (default 10), or ``steps`` optimisation steps (the last
      epoch is cut short), or ``time_budget`` seconds of training (steps, validation and
      checkpoints): the number of steps is planned from the measured time per step and
      re-planned if the pace changes (:class:`vaekit.schedules.TimeBudget`; the plan is in
      the checkpoint). ``epochs`` given with ``steps`` or ``time_budget`` is a further limit.

    - ``train_data`` / ``validation``: a tensor [N, ...], an ``(x, labels)`` pair, a
      ``torch.utils.data.Dataset`` (items ``x`` or ``(x, y)``) or a ``DataLoader`` (used as
      given). Labels reach a conditional model (``model.num_classes > 0``).
    - ``objective``: ``(model, batch) -> (loss, terms)`` with ``batch`` a
      :class:`vaekit.objectives.Batch`; or a function returning per-example values to
      maximise (e.g. :func:`vaekit.objectives.elbo`). Default: the ELBO.
    - ``optimizer``: an optimiser over the model's parameters, a function
      ``params -> optimiser``, or None for Adam(``lr``, ``weight_decay``).
    - ``schedule``: the learning rate over training: a :class:`vaekit.schedules.Schedule`
      (multipliers of each group's initial rate, set before every step), a
      ``torch.optim.lr_scheduler`` scheduler or a function ``optimizer -> scheduler``
      (stepped after every epoch); None keeps the rate constant. Its state is checkpointed.
    - ``device``: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; the model is moved
      there and data follow per batch. ``precision``: ``fp32`` or ``bf16`` (autocast for
      training steps; validation and evaluation run in fp32).
    - ``dynamic_binarization``: draw x ~ Bernoulli(x) afresh for every training minibatch.
    - ``out``: write a run directory (refused if it holds a run, unless ``overwrite``);
      ``resume=True`` continues the run there. ``figures``: draw its figures at the end.
    - ``callbacks``: :class:`Callback` objects; ``progress``: a progress bar on stderr.
    - ``class_names`` (label ``i`` is ``class_names[i]``) and ``feature_names`` (the columns
      of ``[N, D]`` data) label the figures; ``data_units`` maps ``[N, D]`` values back to
      the data's units for them (e.g. undoing a standardisation).

    A step whose loss or gradient is not finite makes no update and is counted; after
    ``max_bad_steps`` in a row training stops with a clear error.

    Under ``torchrun`` (an initialised process group) ``batch_size`` is the global minibatch,
    split across the ranks; the ``objective``'s loss must then be a mean over the batch's
    examples (vaekit's are; free bits' floor applies to each rank's share). A DataLoader
    must shard with a ``DistributedSampler`` (its batch size is per rank). Rank 0 alone
    writes ``out``; the other ranks never open it. A time budget runs on rank 0's clock,
    which every step's all-reduce carries, so every rank plans and stops alike.
    """
    if objective is None:
        objective = elbo_objective
    check_precision(precision)
    if epochs is None and steps is None and time_budget is None:
        epochs = 10
    if steps is not None and time_budget is not None:
        raise VaekitError("give steps or time_budget, not both: each is a budget for the whole run")
    for name, value in (("epochs", epochs), ("checkpoint_every", checkpoint_every), ("steps", steps)):
        if value is not None and value < 0:
            raise VaekitError(f"{name} must be 0 or more, got {value}")
    budget = None if time_budget is None else TimeBudget(time_budget)
    schedule = as_schedule(schedule)
    if batch_size < 1:
        raise VaekitError(f"batch_size must be at least 1, got {batch_size}")
    if resume and out is None:
        raise VaekitError("resume=True continues the run in a run directory: give out=")
    group = distributed.current()
    device = distributed.local_device(resolve_device(device))
    source = Source(train_data, what="the training data")
    if len(source) == 0:
        raise VaekitError("the training data is empty")
    val_source = None if validation is None else Source(validation, what="the validation data")
    if group is not None:
        _check_distributed(group, source, batch_size)
    if device.type == "cuda":
        source.pin()
    settings = {"batch_size": batch_size, "seed": seed, "objective": _describe(objective),
                "dynamic_binarization": dynamic_binarization, "precision": precision,
                "grad_clip": grad_clip, "data": source.kind, "epochs": epochs,
                "checkpoint_every": checkpoint_every, "checkpoint_minutes": checkpoint_minutes,
                "max_bad_steps": max_bad_steps, "device": str(device), "save_best": save_best,
                "steps": steps, "time_budget": time_budget}
    # rank 0 alone prepares (or locks) the run directory; a refusal stops every rank
    run = distributed.together(lambda: _run_directory(out, overwrite, resume), group, main_only=True)
    where = None if out is None else Path(out.path if isinstance(out, RunDirectory) else out)
    world = {"world_size": 1 if group is None else group.world,
             "backend": None if group is None else group.backend_for(device)}
    rank = 0 if group is None else group.rank
    try:
        model.to(device)
        with forked_rng(device, None if resume else distributed.rank_seed(seed, rank)):
            # a run directory replaces an old run only once the model has met the data
            _materialize(model, source, batch_size, device, always=where is not None)
            optimizer = _make_optimizer(model, optimizer, lr, weight_decay, device)
            settings["optimizer"] = describe_optimizer(optimizer)
            settings["schedule"] = "constant"
            if schedule is not None:
                schedule.start(optimizer)
                settings["schedule"] = schedule.describe()
                if schedule.needs_total and epochs is None and steps is None and budget is None:
                    raise VaekitError(f"the schedule {schedule.describe()} follows the planned length: give a budget")
            # hashing the data costs 0.2 s for MNIST: only a run directory's checkpoints need it
            # (and only rank 0's: the others compare a sample of rows, which reads little)
            fingerprint = "" if run is None else training_fingerprint(source, val_source)
            if group is not None and where is not None:
                _check_ranks_same_data(group, training_fingerprint(source, val_source, sampled=True))
            if resume:
                def check() -> bytes:
                    raw = checkpoint.read(run.path)
                    ckpt = checkpoint.load(run.path, raw)
                    checkpoint.check_settings(ckpt, settings)
                    _check_same_data(ckpt, fingerprint, source, val_source, run)
                    return raw

                raw = distributed.together(check, group, main_only=True)
                if group is not None:
                    raw = distributed.broadcast(raw, group)
                ckpt = checkpoint.load(where, raw)
                state = checkpoint.restore(ckpt, model, optimizer, rank)
                state.fingerprint = fingerprint
                if schedule is not None and ckpt.meta.get("schedule") is not None:
                    schedule.load_state_dict(ckpt.meta["schedule"])
                if budget is not None:
                    budget.load_state_dict(ckpt.meta.get("plan"))

                def resumed() -> None:
                    run.remove_temporary_files()
                    run.write_metrics(state.metrics)
                    run.write_info(model.event_shape, **_run_record(model, device, settings, world,
                                                                    _history(run, state, world)))
                    run.commit()  # from here on the run is the new one

                distributed.together(resumed, group, main_only=True)
            else:
                state = TrainState.fresh(seed, fingerprint)

                def start() -> None:
                    if run is not None:
                        run.write_info(model.event_shape, **_run_record(model, device, settings, world,
                                                                        [{"epoch": 0, "step": 0, **world}]))
                        run.write_metrics([])
                        run.commit()  # from here on the run is the new one

                distributed.together(start, group, main_only=True)
            if schedule is not None and not isinstance(schedule, TorchScheduler):
                for param_group in optimizer.param_groups:  # what the multipliers multiply (kept in the checkpoint)
                    param_group.setdefault("initial_lr", param_group["lr"])
            trainer = _Trainer(model, optimizer, objective, source, val_source, state, settings, run,
                               device, list(callbacks), progress, group, where, world, schedule, budget)
            trainer.names = {"class_names": class_names, "feature_names": feature_names, "data_units": data_units}
            return trainer.train(figures)
    except BaseException:
        if run is not None:
            run.discard()  # a run that never started: the folder is as it was (no-op once started)
        raise
    finally:
        if run is not None:
            run.release()


def _check_same_data(ckpt, fingerprint: str, source: Source, val_source: Source | None, run: RunDirectory) -> None:
    stored = ckpt.meta["data_fingerprint"]
    # checkpoints of earlier versions fingerprinted large or on-demand data by sampled rows only
    if stored != fingerprint and stored != training_fingerprint(source, val_source, sampled=True):
        raise VaekitError(
            f"the data are not the data {run.path} was trained on: resuming on other data "
            "would not continue the same run"
        )


def _run_record(model, device: torch.device, settings: dict, world: dict, trained_with: list) -> dict:
    """What run.json says about how the run is trained (the plan `vaekit runs` reads), with
    the world size and backend of each stretch of it."""
    return {"model": type(model).__name__, "device": str(device), "precision": settings["precision"],
            "epochs": settings["epochs"], "steps": settings["steps"], "time_budget": settings["time_budget"],
            "checkpoint_minutes": settings["checkpoint_minutes"], **world,
            "trained_with": trained_with}


def _history(run: RunDirectory, state: TrainState, world: dict) -> list:
    """run.json's ``trained_with`` on a resume: a stretch added when the world size or the
    backend changes (runs of earlier versions count as one process)."""
    try:
        info = run.read_info()
    except VaekitError:
        info = {}
    before = {"world_size": info.get("world_size", 1), "backend": info.get("backend")}
    history = info.get("trained_with")
    if not isinstance(history, list):
        history = [{"epoch": 0, "step": 0, **before}]
    if before == world:
        return history
    step = 0 if state.in_epoch is None else state.in_epoch.step
    return [*history, {"epoch": state.epoch, "step": step, **world}]


def _check_distributed(group: distributed.Group, source: Source, batch_size: int) -> None:
    """What data parallelism needs of the data: a minibatch with an example for every rank,
    and a DataLoader that shards."""
    if source.kind == "loader":
        from torch.utils.data import DistributedSampler

        sampler = getattr(source.loader.batch_sampler, "sampler", None) or source.loader.sampler
        if not isinstance(sampler, DistributedSampler):
            raise VaekitError(
                "under torch.distributed a DataLoader must shard its data: give it "
                "sampler=DistributedSampler(dataset, seed=...) (its batch size is then per rank), "
                "or pass the tensors or the Dataset and let fit split each minibatch"
            )
    elif batch_size < group.world:
        raise VaekitError(
            f"batch_size {batch_size} is smaller than the {group.world} processes: the global "
            "minibatch is split across them, and each needs at least one example"
        )


def _check_ranks_same_data(group: distributed.Group, fingerprint: str) -> None:
    prints = distributed.exchange(fingerprint.encode(), group)
    other = next((r for r, f in enumerate(prints) if f != prints[0]), None)
    if other is not None:
        raise VaekitError(
            f"rank {other} reads other data than rank 0 (their fingerprints differ): every "
            "process must read the same training and validation data"
        )


def _run_directory(out, overwrite: bool, resume: bool) -> RunDirectory | None:
    if out is None:
        return None
    run = out if isinstance(out, RunDirectory) else RunDirectory(out)
    if resume:
        run.lock()
    elif not run.prepared:
        run.prepare(overwrite)
    return run


def _materialize(model, source: Source, batch_size: int, device: torch.device, always: bool = False) -> None:
    """One forward pass without gradients, in eval mode, on a first batch: networks with
    lazily sized layers and the model's data and latent shapes are settled before the
    optimiser sees the parameters, and (``always``) a model that does not fit the data fails
    here, before a run directory is touched. Draws from a forked generator, before the run's
    own draws start."""
    needs = (model.event_shape is None or getattr(model, "latent_dim", 1) is None
             or any(isinstance(p, torch.nn.UninitializedParameter) for p in model.parameters()))
    if not (needs or always):
        return
    x, y = source.first_batch(min(batch_size, 8))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), forked_rng(device):
            check_model(model, x[:8].to(device), _labels(model, y, device, 8))
    finally:
        model.train(was_training)


def _labels(model, y, device, n: int | None = None):
    if not num_classes(model):
        return None
    if y is None:
        raise VaekitError("this conditional model needs class labels with its data: give (x, labels)")
    y = torch.as_tensor(y).long()
    return (y if n is None else y[:n]).to(device, non_blocking=True)


def _make_optimizer(model, optimizer, lr: float, weight_decay: float, device: torch.device):
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer is not None:
        return optimizer(params)
    # fused=True runs Adam's update as one kernel: the default per-parameter loop was the
    # largest single cost of a CPU training step in profiles (see docs/performance.md).
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay,
                            fused=device.type in ("cpu", "cuda"))


def describe_optimizer(optimizer: torch.optim.Optimizer) -> str:
    """The optimiser's class and the hyper-parameters that define its update (not the
    learning rate, which a schedule changes): what a resume compares."""
    group = optimizer.param_groups[0] if optimizer.param_groups else {}
    keys = ("betas", "eps", "weight_decay", "momentum", "nesterov", "lr_decay", "amsgrad", "dampening")
    args = ", ".join(f"{k}={tuple(group[k]) if isinstance(group[k], list) else group[k]!r}"
                     for k in keys if k in group)
    return f"{type(optimizer).__name__}({args})"


def _describe(objective) -> str:
    """A stable description of an objective (no memory addresses): what resume compares."""
    if isinstance(objective, functools.partial):
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(objective.keywords.items()))
        return f"{_describe(objective.func)}({args})"
    name = getattr(objective, "__qualname__", None) or type(objective).__qualname__
    return f"{getattr(objective, '__module__', '')}.{name}"


class _Trainer:
    """The state of one fit call; ``train`` trains until the budget is spent."""

    def __init__(self, model, optimizer, objective, source: Source, val_source: Source | None,
                 state: TrainState, settings: dict, run: RunDirectory | None, device: torch.device,
                 callbacks: list[Callback], progress: bool, group: distributed.Group | None = None,
                 where: Path | None = None, world: dict | None = None, schedule: Schedule | None = None,
                 budget: TimeBudget | None = None):
        self.model, self.optimizer, self.objective = model, optimizer, objective
        self.source, self.val_source, self.state = source, val_source, state
        self.settings, self.run, self.device = settings, run, device
        # run: the run directory on the rank that writes it (rank 0); where: its path, on every rank
        self.group, self.where, self.world = group, where, world or {}
        self.main = group is None or group.main
        self.batch_size, self.epochs = settings["batch_size"], settings["epochs"]
        self.max_steps = settings["steps"]
        self.schedule, self.budget = schedule, budget
        if progress and self.main:
            callbacks = [ProgressBar(), *callbacks]
        self.callbacks = callbacks
        # Per-step overhead is what bounds small-batch training on a CPU (docs/performance.md):
        # the parameter list is gathered once, gradients are dropped by hand (zero_grad wraps a
        # profiler region), and one synchronising check per step covers loss and gradients.
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.history = History(epochs=state.metrics, best=state.best, out=where)
        per_epoch = source.steps(self.batch_size)
        self.loop = loop = Loop(model, optimizer, self.epochs, per_epoch, self.history, run)
        loop.rank, loop.world_size = (0, 1) if group is None else (group.rank, group.world)
        if state.steps is None:  # a checkpoint written before the step count was kept: whole epochs so far
            state.steps = state.epoch * per_epoch + (0 if state.in_epoch is None else state.in_epoch.step)
        loop.steps_done, loop.budget = state.steps, budget
        started, before = time.perf_counter(), state.seconds
        loop._clock = lambda: before + time.perf_counter() - started
        self.spent = False  # the steps or the time budget are used up
        self.saver = _Checkpoints(run, model, optimizer, state, settings, group, where, world, schedule, budget, loop)
        self.parallel = None if group is None else _data_parallel(model, objective, source, self.batch_size, device)
        self.example = None  # shape and dtype of one example, for binarisation draws of a rank with none
        if group is not None and settings["dynamic_binarization"] and source.kind != "loader":
            x0, _ = source.first_batch(1)
            self.example = (tuple(x0.shape[1:]), x0.dtype)
        self.names: dict[str, Any] = {}  # class and feature names, data units: for the figures

    def train(self, figures: bool) -> History:
        try:
            return self._train(figures)
        except RuntimeError as err:
            if self.group is None or not distributed.lost_peer(err):
                raise
            raise VaekitError(self._lost(err)) from None
        finally:
            # DDP's communication threads go now, not after the process group is destroyed
            # (the traceback of an interruption would keep them alive until then: a C++ abort)
            self.parallel = None

    def _lost(self, err: BaseException) -> str:
        """What rank 0 (or any survivor) says when a collective fails because a rank is gone."""
        kept = self.saver.kept() if self.run is not None else ""
        return (
            f"training stopped: another of the {self.group.world} processes of this job is gone "
            f"({distributed.reason(err)}); this one had reached {self.state.where()}. {kept}"
            f"{'' if self.saver.holds is None else f' It holds {self.saver.holds}.'} "
            f"Continue with: vaekit train --resume {self.where} (under torchrun with any number of "
            "processes, or as one process)"
        ).replace("  ", " ")

    def total_steps(self) -> int | None:
        if self.budget is not None:
            return self.budget.total_steps
        if self.max_steps is not None:
            return self.max_steps
        return None if self.epochs is None else self.epochs * self.loop.steps_per_epoch

    def budget_spent(self, seconds: float) -> bool:
        """After a step: whether the steps or the time budget are used up (``seconds``: the
        training time on rank 0's clock, the same number on every rank)."""
        loop = self.loop
        if self.max_steps is not None and loop.steps_done >= self.max_steps:
            return True
        return self.budget is not None and self.budget.done(loop.steps_done, seconds)

    def _train(self, figures: bool) -> History:
        saver, loop = self.saver, self.loop
        loop.total_steps = self.total_steps()
        with _StopOnSignal(self.where is not None) as stop:
            for callback in self.callbacks:
                callback.on_fit_start(loop)
            self.spent = self.state.in_epoch is None and self.budget_spent(self._shared_seconds())
            epoch = self.state.epoch
            while not self.spent and (self.epochs is None or epoch < self.epochs):
                epoch += 1
                loop.epoch = epoch
                if self.state.in_epoch is None:
                    self.state.in_epoch = EpochProgress.begin(self.state.order, self.state.bad_in_a_row)
                current = self.state.in_epoch
                saver.epoch_started()

                def on_step(loss: float, signum: int, due: bool, seconds: float,
                            current: EpochProgress = current) -> bool:
                    loop.step = current.step
                    loop.steps_done = self.state.steps = self.state.steps + 1
                    if self.budget is not None:
                        self.budget.update(loop.steps_done, seconds)
                        loop.total_steps = self.budget.total_steps
                    for callback in self.callbacks:
                        callback.on_step_end(loop, loss)
                    self.spent = self.budget_spent(seconds)
                    mid_epoch = self.source.kind != "loader"  # a DataLoader's position cannot be saved
                    if mid_epoch and not self.spent and (signum or due):
                        saver.save()
                    if not self.spent:
                        stop.check(self.state, self.where, mid_epoch, signum)
                    return self.spent

                def poll() -> tuple[int, bool, float]:
                    return stop.signum or 0, saver.time_due(), loop.seconds

                self.model.train()
                try:
                    stats = self.train_epoch(current, epoch, on_step, poll)
                except NonFiniteTraining as err:
                    raise self._everywhere(VaekitError(f"{err} {saver.kept()}")) from None
                record = self.end_epoch(epoch, stats, current, saver.epoch_seconds())
                if self.schedule is not None:
                    self.schedule.on_epoch_end(loop, record)
                for callback in self.callbacks:
                    callback.on_epoch_end(loop, record)
                signum, loop.stop_requested, seconds = self._agree(stop.signum or 0, loop.stop_requested, loop.seconds)
                if self.budget is not None and not self.spent:
                    self.budget.update(loop.steps_done, seconds, epoch_end=True)
                    loop.total_steps = self.budget.total_steps
                    self.spent = self.budget_spent(seconds)
                last = epoch == self.epochs or loop.stop_requested or self.spent
                if saver.epoch_due(epoch, last) or signum:
                    saver.save()
                stop.check(self.state, self.where, True, signum)
                if loop.stop_requested:
                    self.history.stopped_early = not self.spent and (self.epochs is None or epoch < self.epochs)
                    break
            for callback in self.callbacks:
                callback.on_fit_end(loop)
        self._check_learned()
        self.model.eval()
        evaluation = self.finish(figures) if self.where is not None else None
        self.model.train()
        for callback in self.callbacks:
            callback.on_results(loop, evaluation)
        return self.history

    def _everywhere(self, err: VaekitError) -> VaekitError:
        """Mark an error every rank raises alike (the CLI prints it on rank 0 only)."""
        if self.group is not None:
            err.shared = True
        return err

    def _agree(self, signum: int, stop: bool, seconds: float) -> tuple[int, bool, float]:
        """A signal any rank received and a stop any rank's callback asked for, on every
        rank, and rank 0's training seconds (what a time budget counts)."""
        if self.group is None:
            return signum, stop, seconds
        flags = torch.tensor([signum == signal.SIGINT, signum == signal.SIGTERM, stop,
                              seconds if self.main else 0.0], dtype=torch.float64)
        sigint, sigterm, stop_any, seconds = distributed.all_max(flags, self.group).tolist()
        return _signal_of(sigint, sigterm), bool(stop_any), seconds

    def _shared_seconds(self) -> float:
        """Rank 0's training seconds on every rank (where no step carries them)."""
        if self.group is None or self.budget is None:
            return self.loop.seconds
        return self._agree(0, False, self.loop.seconds)[2]

    def _check_learned(self) -> None:
        """A run whose every step was skipped (non-finite loss or gradient), but never
        max_bad_steps of them in a row, learned nothing: an error, not an exit 0 with NaNs."""
        records = self.history.epochs
        if records and all(r.get("train_elbo") != r.get("train_elbo") for r in records):
            steps = sum(r.get("train_skipped_steps", 0) for r in records)
            kept = "" if self.run is None else f" The checkpoint is kept in {self.run.checkpoint_path}."
            raise self._everywhere(VaekitError(
                f"training made no update: all {steps} steps had a non-finite loss or gradient and were "
                f"skipped. {_bad_steps_message(steps, self.model, self.optimizer).split('. ', 1)[1]}{kept}"
            ))

    def train_epoch(self, progress: EpochProgress, epoch: int, on_step,
                    poll=lambda: (0, False, 0.0)) -> dict[str, float]:
        """One pass in random minibatches; the per-example mean terms, skipped steps and
        clamped encoder log-variances. ``progress`` continues an epoch a checkpoint
        interrupted: the shuffle is replayed from the order generator's state saved before
        it and the batches already done are skipped. ``poll()`` gives this rank's (signal,
        checkpoint due, training seconds) after each step; ``on_step`` gets the minibatch's
        loss and those as every rank agreed them (the seconds: rank 0's), and ends the epoch
        early by returning True (a step or time budget spent)."""
        state, n, size = self.state, len(self.source), self.batch_size
        state.order.set_state(progress.order_start)
        order = torch.randperm(n, generator=state.order) if self.source.kind != "loader" else None
        if progress.totals is None:
            progress.totals = torch.zeros(len(TERMS))
        done = progress.step * size
        dynamic = self.settings["dynamic_binarization"]
        max_bad = self.settings["max_bad_steps"]
        amp = autocast(self.device, self.settings["precision"])
        schedule, loop = self.schedule, self.loop
        group = self.group
        rank, world = (0, 1) if group is None else (group.rank, group.world)
        if group is not None and self.source.kind == "loader":
            _set_epoch(self.source.loader, epoch)
        for x, y, total in self.source.batches(size, order, progress.step, rank, world):
            if group is None:
                if dynamic:
                    x = torch.bernoulli(x, generator=state.draws)
            elif dynamic:
                x = self._binarize(x, total, rank, world)
            if x is not None:
                x = x.to(self.device, non_blocking=True)
                batch = Batch(x, _labels(self.model, y, self.device), (epoch - 1) + done / n)
            loop.epochs_done = (epoch - 1) + done / n
            if schedule is not None:
                schedule.before_step(loop)
            for p in self.params:
                p.grad = None
            if group is None:
                with amp:
                    loss, terms = _call_objective(self.objective, self.model, batch)
                loss.backward()
            else:
                share = 0 if x is None else len(x)
                with amp:
                    loss, terms = self.parallel(batch if share else None)
                # DDP averages the ranks' gradients: weighting each rank's mean loss by its
                # share of the minibatch makes that the gradient of the minibatch's mean
                weight = 1.0 if self.source.kind == "loader" else share * world / total
                (loss * weight).backward()
            norm = _gradient_check(self.params, self.settings["grad_clip"])
            progress.step += 1
            if group is None:
                done += len(x)
                progress.clamped += int(getattr(self.model, "clamped", 0))
                finite = bool(torch.isfinite(loss + norm))
                sums = torch.stack([_term(terms, k, x) for k in TERMS]).cpu() if finite else None
                examples, loss_value = len(x), None
                signum, due, seconds = poll()
            else:
                finite, loss_value, sums, examples, clamped, signum, due, seconds = self._reduce_step(
                    loss, terms, x, norm, poll())
                done += examples
                progress.clamped += clamped
            if finite:
                self.optimizer.step()
                progress.totals += sums
                progress.examples += examples
                progress.bad_in_a_row = 0
            else:
                progress.skipped += 1
                progress.bad_in_a_row += 1
                if progress.bad_in_a_row >= max_bad:
                    raise NonFiniteTraining(_bad_steps_message(progress.bad_in_a_row, self.model, self.optimizer))
            if on_step(loss.item() if loss_value is None else loss_value, signum, due, seconds):
                break
        # an epoch whose every step was skipped has no mean: NaN, not a flattering 0
        used = progress.examples if progress.examples else float("nan")
        means = (progress.totals / used).tolist()
        return {**dict(zip(TERMS, means, strict=True)), "skipped_steps": progress.skipped,
                "logvar_clamped": progress.clamped}

    def _binarize(self, x: torch.Tensor | None, total: int, rank: int, world: int) -> torch.Tensor | None:
        """x ~ Bernoulli(x), drawn for the whole minibatch on every rank (one shared
        generator) and taken at this rank's rows, so each example's draw is the one a single
        process makes (for one process, ``u < x`` is exactly ``torch.bernoulli``). A
        DataLoader's batches have no global positions: each rank takes its own block."""
        if self.source.kind == "loader":
            shape, dtype, rows = (world * len(x), *x.shape[1:]), x.dtype, slice(rank * len(x), (rank + 1) * len(x))
        else:
            shape, dtype = (total, *self.example[0]), self.example[1]
            rows = slice(rank, None, world)
        u = torch.rand(shape, generator=self.state.draws, dtype=dtype if dtype.is_floating_point else torch.float32)
        return None if x is None else (u[rows] < x).to(x.dtype)

    def _reduce_step(self, loss, terms, x, norm, flags: tuple[int, bool, float]):
        """One all-reduce per step: the minibatch's loss, term sums, examples, clamped
        log-variances, and the ranks' signals and rank 0's checkpoint clock and training
        seconds."""
        share = 0 if x is None else len(x)
        device = loss.device
        sums = (torch.stack([_term(terms, k, x) for k in TERMS]).double() if share
                else torch.zeros(len(TERMS), dtype=torch.float64, device=device))
        signum, due, seconds = flags
        extra = torch.tensor([share, int(getattr(self.model, "clamped", 0)) if share else 0,
                              signum == signal.SIGINT, signum == signal.SIGTERM, due,
                              seconds if self.main else 0.0],
                             dtype=torch.float64, device=device)
        local = torch.cat([(loss.detach().double() * share).reshape(1), sums.to(device), extra])
        reduced = distributed.all_sum(local, self.group).cpu()
        examples = int(reduced[1 + len(TERMS)])
        loss_value = float(reduced[0]) / max(1, examples)
        finite = math.isfinite(loss_value) and bool(torch.isfinite(norm))
        sigint, sigterm, due_any, seconds = reduced[2 + len(TERMS) + 1 :].tolist()
        return (finite, loss_value, reduced[1 : 1 + len(TERMS)].float() if finite else None, examples,
                int(reduced[2 + len(TERMS)]), _signal_of(sigint, sigterm), bool(due_any), seconds)

    def end_epoch(self, epoch: int, stats: dict, current: EpochProgress, seconds: float) -> dict:
        record = {"epoch": epoch, **{f"train_{k}": v for k, v in stats.items()}}
        if self.val_source is not None:
            seed = self.settings["seed"] if self.settings["dynamic_binarization"] else None
            val = validation_terms(self.model, self.val_source, self.device, binarize_seed=seed, group=self.group)
            record.update({f"validation_{k}": v for k, v in val.items()})
            self.loop.last_validation = val["elbo"]
        sigma = getattr(getattr(self.model, "likelihood", None), "sigma", None)
        if callable(sigma) and getattr(self.model.likelihood, "mode", "fixed") != "fixed":
            record["sigma_g_min"] = float(sigma().detach().min())  # how close σ_G came to its floor
        record["seconds"] = seconds
        record["steps"] = self.state.steps  # in the whole run: the last epoch of a steps or time budget is partial
        if self.optimizer.param_groups:
            record["lr"] = float(self.optimizer.param_groups[0]["lr"])
        state = self.state
        state.epoch, state.in_epoch, state.bad_in_a_row = epoch, None, current.bad_in_a_row
        state.metrics.append(record)
        improved = self._track_best(record)

        def write() -> None:
            if self.run is None:
                return
            self.run.append_metrics(record)
            self.run.save_weights(self.model)
            # the best weights after the epoch's: a kill in between re-does the epoch after
            # resume and writes the same file again, whereas the other order could lose them
            if improved and self.settings["save_best"]:
                self.run.save_weights(self.model, "best", epoch=record["epoch"], validation_elbo=state.best["value"])

        distributed.together(write, self.group, main_only=True)
        return record

    def _track_best(self, record: dict) -> bool:
        """Remember the best validation ELBO; whether this epoch is it."""
        value = record.get("validation_elbo")
        if value is None or value != value:
            return False
        state = self.state
        if state.best is None or value > state.best["value"]:
            state.best = {"metric": "validation_elbo", "value": value, "epoch": record["epoch"]}
            self.history.best = state.best
            return True
        return False

    def finish(self, figures: bool) -> dict | None:
        """The quick evaluation (``evaluation.json``, returned) and the figures of a run
        directory (the evaluation shared by every rank, the writing and drawing rank 0's)."""
        from vaekit.evaluation import evaluate

        shown = self.val_source or self.source
        x, labels = _evaluation_data(shown, self.settings["dynamic_binarization"], self.settings["seed"],
                                     whole=self.group is not None)
        name = "validation" if self.val_source is not None else "train"
        result = None
        if len(x):
            result = {"split": name, **evaluate(
                self.model, (x, labels if num_classes(self.model) else None),
                importance_samples=FINAL_K, seed=self.settings["seed"])}
            distributed.together(lambda: self.run and self.run.write_evaluation(result), self.group, main_only=True)
        if figures and self.run is not None:
            from vaekit import plots

            train_x, train_labels = _evaluation_data(self.source, False, self.settings["seed"], limit=20000,
                                                     whole=self.group is not None)
            plots.draw_all(self.run.path, self.model, train_x, train_labels, x, labels,
                           self.run.read_metrics(), **self.names)
        return result


class _ObjectiveStep(torch.nn.Module):
    """The objective as a module's forward, for DistributedDataParallel (which prepares its
    gradient all-reduce in forward, while objectives call ``encode``/``decode``). A rank
    whose share of a minibatch is empty still takes part, with a zero loss over every
    parameter."""

    def __init__(self, model: torch.nn.Module, objective: Callable):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: Batch | None):
        if batch is None:
            return sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0, {}
        return _call_objective(self.objective, self.model, batch)


def _data_parallel(model, objective, source: Source, batch_size: int, device: torch.device):
    """The model and objective under DistributedDataParallel (which also makes every rank
    start from rank 0's weights). Buffers are not broadcast at every step: vaekit's are
    constants, and a user's BatchNorm statistics stay each rank's own (rank 0's are saved)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # torch 2.13 renamed the switch (and syncs buffers once at the start, which is wanted)
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    buffers = {"forward_sync_buffers" if newer else "broadcast_buffers": False}
    return DistributedDataParallel(_ObjectiveStep(model, objective), device_ids=ids, **buffers,
                                   find_unused_parameters=_leaves_parameters_out(model, objective, source,
                                                                                 batch_size, device))


def _leaves_parameters_out(model, objective, source: Source, batch_size: int, device: torch.device) -> bool:
    """Whether the objective leaves some trainable parameter without a gradient, tried on a
    few examples (no draws leak out, buffers are put back). DDP then has to search the graph
    for them at every step; otherwise it is told not to, which costs nothing."""
    x, y = source.first_batch(min(batch_size, 8))
    params = [p for p in model.parameters() if p.requires_grad]
    buffers = [b.detach().clone() for b in model.buffers()]
    with forked_rng(device):
        loss, _ = _call_objective(objective, model, Batch(x[:8].to(device), _labels(model, y, device, 8), 0.0))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    with torch.no_grad():
        for b, saved in zip(model.buffers(), buffers, strict=True):
            b.copy_(saved)
    return any(g is None for g in grads)


def _set_epoch(loader, epoch: int) -> None:
    sampler = getattr(loader.batch_sampler, "sampler", None) or loader.sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch - 1)  # the sampler's shuffle: a function of its seed and the epoch


def _signal_of(sigint: float, sigterm: float) -> int:
    return int(signal.SIGTERM) if sigterm else int(signal.SIGINT) if sigint else 0


def _evaluation_data(source: Source, binarize: bool, seed: int, limit: int | None = None, whole: bool = False):
    """Tensors of ``source`` for the final evaluation and figures (a DataLoader or Dataset
    read once; at most ``limit`` examples); binarised once, from ``seed``, when training
    binarised dynamically. ``whole``: a DataLoader's whole dataset, not the rank's shard."""
    from vaekit.sources import as_tensors

    if whole and source.kind == "loader":
        source = Source(source.loader.dataset, what=source.what)
    x, labels = as_tensors(source)
    if limit is not None and len(x) > limit:
        x, labels = x[:limit], None if labels is None else labels[:limit]
    if binarize:
        x = torch.bernoulli(x[:] if not torch.is_tensor(x) else x, generator=torch.Generator().manual_seed(seed))
    return x, labels


def _call_objective(objective, model, batch: Batch):
    out = objective(model, batch)
    if torch.is_tensor(out):  # per-example values to maximise, e.g. objectives.elbo
        return -out.mean(), {"elbo": out}
    return out


def _term(terms: dict, key: str, x: torch.Tensor) -> torch.Tensor:
    value = terms.get(key)
    if value is None:
        return torch.tensor(float("nan"), device=x.device)
    return value.detach().float().sum()


@torch.no_grad()
def validation_terms(model, source: Source, device: torch.device, batch_size: int = 1000,
                     binarize_seed: int | None = None, group: distributed.Group | None = None) -> dict[str, float]:
    """Per-example means of ELBO, reconstruction and KL over ``source`` (one draw per
    example, the KL in closed form where there is one; fp32, no gradients). With
    ``binarize_seed`` the data are binarised by one fixed draw (binary data stay as they are).
    With ``group`` each rank scores every ``world``-th batch and the sums are all-reduced
    (the binarisation draws are the same; the reparameterisation draws are each rank's)."""
    was_training = model.training
    model.eval()
    draws = None if binarize_seed is None else torch.Generator().manual_seed(binarize_seed)
    totals, n = torch.zeros(len(TERMS), dtype=torch.float64), 0
    if group is None:
        for x, y in source.in_order(batch_size):
            if draws is not None:
                x = torch.bernoulli(x, generator=draws)
            totals, n = _add_terms(model, x, y, device, totals, n)
    else:
        example = None
        if draws is not None and source.kind != "loader":
            x0, _ = source.first_batch(1)
            example = (tuple(x0.shape[1:]), x0.dtype)
        for x, y, size in source.part_in_order(batch_size, group.rank, group.world):
            if draws is not None:
                shape, dtype = ((size, *example[0]), example[1]) if example else (x.shape, x.dtype)
                u = torch.rand(shape, generator=draws, dtype=dtype if dtype.is_floating_point else torch.float32)
                x = None if x is None else (u < x).to(x.dtype)  # torch.bernoulli's draw, made on every rank
            if x is not None:
                totals, n = _add_terms(model, x, y, device, totals, n)
        summed = distributed.all_sum(torch.cat([totals, torch.tensor([float(n)], dtype=torch.float64)]), group)
        totals, n = summed[: len(TERMS)], float(summed[-1])
    model.train(was_training)
    return dict(zip(TERMS, (totals / n).tolist(), strict=True))


def _add_terms(model, x, y, device, totals, n):
    x = x.to(device)
    terms = elbo_terms(model, x, 1, "auto", _labels(model, y, device))
    return totals + torch.stack([terms[k].double().sum() for k in TERMS]).cpu(), n + len(x)


class NonFiniteTraining(VaekitError):
    """Too many consecutive steps with a non-finite loss or gradient."""


def _gradient_check(params: list[torch.Tensor], grad_clip: float) -> torch.Tensor:
    """A number that is finite exactly when every gradient is: the clipped norm when clipping,
    else the sum of the per-tensor sums (a sum, not a norm: one pass without squares, 55
    against 99 µs for Burda's 424k gradients on one thread). A sum can overflow only for
    gradients near 1e38, and those are no more usable than infinite ones."""
    if grad_clip:
        return torch.nn.utils.clip_grad_norm_(params, grad_clip)
    sums = [p.grad.sum() for p in params if p.grad is not None]
    return torch.stack(sums).sum() if sums else torch.zeros(())


def _bad_steps_message(count: int, model, optimizer) -> str:
    lr = optimizer.param_groups[0].get("lr") if optimizer.param_groups else None
    floor = getattr(getattr(model, "likelihood", None), "sigma_min", None)
    return (
        f"training stopped: {count} steps in a row had a non-finite loss or gradient (each was "
        "skipped, so the weights are not poisoned). Usual causes: a learning rate too high"
        + ("" if lr is None else f" (lr = {float(lr):g})")
        + "; with a Gaussian likelihood, a σ_G floor too small"
        + ("" if floor is None else f" (sigma_min = {floor:g})")
        + " or data on a huge scale; with the Bernoulli likelihood, data outside [0, 1]."
    )


class _Checkpoints:
    """When to write checkpoints, and writing them (nothing without a run directory). Under
    torch.distributed every rank takes part (each sends its generator state) and rank 0
    writes."""

    def __init__(self, run: RunDirectory | None, model, optimizer, state: TrainState, settings: dict,
                 group: distributed.Group | None = None, where: Path | None = None, world: dict | None = None,
                 schedule: Schedule | None = None, budget: TimeBudget | None = None, loop: Loop | None = None):
        self.run, self.model, self.optimizer = run, model, optimizer
        self.state, self.settings = state, settings
        self.schedule, self.budget, self.loop = schedule, budget, loop
        self.group, self.world = group, world
        self.enabled = run is not None or where is not None
        self.holds = None if state.epoch == 0 and state.in_epoch is None else state.where()  # the last checkpoint's
        self.config = None
        if run is not None and run.has_config():
            self.config = run.read_config()
        self.last = time.monotonic()
        self.started = time.perf_counter()

    def epoch_started(self) -> None:
        self.started = time.perf_counter()

    def epoch_seconds(self) -> float:
        current = self.state.in_epoch
        before = current.seconds if current is not None else 0.0
        return before + time.perf_counter() - self.started

    def time_due(self) -> bool:
        """Rank 0's clock (the others learn it from the step's all-reduce)."""
        minutes = self.settings["checkpoint_minutes"]
        return self.run is not None and minutes > 0 and time.monotonic() - self.last >= 60 * minutes

    def epoch_due(self, epoch: int, last: bool) -> bool:
        every = self.settings["checkpoint_every"]
        return every > 0 and (epoch % every == 0 or last)

    def save(self) -> None:
        if not self.enabled:
            return
        current = self.state.in_epoch
        if current is not None:
            current.seconds, self.started = self.epoch_seconds(), time.perf_counter()
        state = self.state
        if self.loop is not None:
            state.seconds = self.loop.seconds
        state.schedule = None if self.schedule is None else self.schedule.state_dict()
        state.plan = None if self.budget is None else self.budget.state_dict()
        try:
            json.dumps(state.schedule)
        except (TypeError, ValueError) as err:
            raise VaekitError(f"the learning-rate schedule's state cannot be stored in a checkpoint ({err})") from None
        ranks = None if self.group is None else self._rank_states()

        def write() -> None:
            if self.run is None:
                return
            try:
                checkpoint.save(self.run, self.model, self.optimizer, self.state, self.settings, self.config,
                                ranks, None if self.group is None else self.world)
            except WriteError as err:
                hint = f"Once that is fixed, continue with: vaekit train --resume {self.run.path}"
                if self.run.checkpoint_path.is_file():
                    raise WriteError(f"{err}. {hint}") from None
                raise

        distributed.together(write, self.group, main_only=True)
        self.last, self.holds = time.monotonic(), self.state.where()

    def _rank_states(self) -> dict[str, torch.Tensor]:
        """Every rank's reparameterisation generator (rank 0's is the checkpoint's own
        ``rng.torch``), sent as safetensors bytes."""
        from vaekit.rundir import decode_tensors, encode_tensors

        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        mine = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(device)
        states = {}
        for rank, data in enumerate(distributed.exchange(encode_tensors(mine), self.group)):
            if rank:
                tensors, _ = decode_tensors(data, Path(f"rank {rank}"), "a generator state")
                states.update({f"rng.rank{rank}.{k}": v for k, v in tensors.items()})
        return states

    def kept(self) -> str:
        if self.run is None:
            return ""
        if not self.run.checkpoint_path.is_file():
            return "No checkpoint had been written yet."
        return f"The last good checkpoint is kept in {self.run.checkpoint_path}."


class _StopOnSignal:
    """With a run directory, SIGINT and SIGTERM ask the loop to finish its step, checkpoint
    and stop; a second signal stops at once (the last complete checkpoint is still there).
    The previous handlers are restored on the way out. Under torch.distributed the ranks
    agree on the signal after each step (any rank's counts), so they stop together."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self) -> _StopOnSignal:
        self.signum: int | None = None
        self.previous = {}
        if self.enabled and threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def check(self, state: TrainState, run_path: Path | None, saved: bool, signum: int) -> None:
        """Stop (raise :class:`Interrupted`) when ``signum``, the agreed signal, is set."""
        if not signum:
            return
        name = signal.Signals(signum).name
        where = state.where() if saved else f"epoch {state.epoch} (a DataLoader's epoch restarts)"
        raise Interrupted(
            f"stopped by {name}; the checkpoint holds {where}. Resume with: vaekit train --resume {run_path} "
            "(or fit(..., resume=True))",
            signum,
        )


class ProgressBar(Callback):
    """A rich progress bar on stderr: epoch, steps, the minibatch's −ELBO, the last
    validation ELBO, time elapsed and left. Redrawn at most 10 times a second: redrawing on
    every small-batch step cost more than the step's maths."""

    def __init__(self, seconds: float = 0.1):
        self.seconds = seconds

    def on_fit_start(self, loop: Loop) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                            transient=not sys.stderr.isatty())
        self.bar.start()
        self.total = loop.total_steps
        self.task = self.bar.add_task("training", total=self.total, completed=loop.steps_done)
        self.pending, self.last = 0, time.monotonic()

    def on_step_end(self, loop: Loop, loss: float) -> None:
        self.pending += 1
        now = time.monotonic()
        if now - self.last >= self.seconds:
            if loop.total_steps != self.total:  # a time budget's plan
                self.total = loop.total_steps
                self.bar.update(self.task, total=self.total)
            val = "" if loop.last_validation is None else f"  validation ELBO {loop.last_validation:.2f}"
            self.bar.update(self.task, advance=self.pending,
                            description=f"epoch {_epoch_of(loop)}  -ELBO {loss:.2f}{val}")
            self.pending, self.last = 0, now

    def on_epoch_end(self, loop: Loop, record: dict) -> None:
        val = "" if loop.last_validation is None else f"  validation ELBO {loop.last_validation:.2f}"
        self.bar.update(self.task, advance=self.pending, description=f"epoch {_epoch_of(loop)}{val}")
        self.pending = 0

    def on_fit_end(self, loop: Loop) -> None:
        self.bar.stop()


def _epoch_of(loop: Loop) -> str:
    """'3/10', or '3' when another budget than epochs ends the run."""
    return str(loop.epoch) if loop.epochs is None else f"{loop.epoch}/{loop.epochs}"


class EarlyStopping(Callback):
    """Stop when the validation ELBO has not improved for ``patience`` epochs; with
    ``restore_best`` the model ends with the weights of its best epoch."""

    def __init__(self, patience: int, restore_best: bool = True):
        if patience < 1:
            raise VaekitError(f"patience must be at least 1, got {patience}")
        self.patience, self.restore_best = patience, restore_best
        self.best_state: dict | None = None

    def on_epoch_end(self, loop: Loop, record: dict) -> None:
        best = loop.history.best
        if best is None:
            return
        if best["epoch"] == record["epoch"] and self.restore_best:
            self.best_state = {k: v.detach().clone() for k, v in loop.model.state_dict().items()}
        if record["epoch"] - best["epoch"] >= self.patience:
            loop.stop()

    def on_fit_end(self, loop: Loop) -> None:
        if not self.restore_best or loop.history.best is None:
            return
        if self.best_state is not None:
            loop.model.load_state_dict(self.best_state)
        else:  # a resumed run: the best epoch came before the restart, its weights are in the run
            if loop.out is not None and loop.out.weights_path("best").is_file():
                loop.out.load_weights(loop.model, "best")
            elif loop.world_size == 1:
                return
            # rank 0 alone reads the run directory (every rank lacks best_state alike)
            distributed.broadcast_weights(loop.model, distributed.current())
        if loop.out is not None:
            loop.out.save_weights(loop.model)
