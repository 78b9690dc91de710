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
"""

from __future__ import annotations

import functools
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vaekit import checkpoint
from vaekit.checkpoint import EpochProgress, TrainState
from vaekit.devices import autocast, check_precision, forked_rng, resolve_device
from vaekit.errors import Interrupted, VaekitError, WriteError
from vaekit.objectives import Batch, elbo_objective, elbo_terms
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
    (training time so far, resumed runs included), ``history``, ``out``; ``stop()`` asks it
    to end after the current epoch (with its checkpoint)."""

    def __init__(self, model, optimizer, epochs: int | None, steps_per_epoch: int, history: History,
                 out: RunDirectory | None):
        self.model, self.optimizer, self.epochs = model, optimizer, epochs
        self.steps_per_epoch, self.history, self.out = steps_per_epoch, history, out
        self.epoch, self.step, self.stop_requested = 0, 0, False
        self.steps_done, self.epochs_done = 0, 0.0
        self.total_steps: int | None = None
        self.last_validation: float | None = None
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

    A step whose loss or gradient is not finite makes no update and is counted; after
    ``max_bad_steps`` in a row training stops with a clear error.
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
    device = resolve_device(device)
    source = Source(train_data, what="the training data")
    if len(source) == 0:
        raise VaekitError("the training data is empty")
    val_source = None if validation is None else Source(validation, what="the validation data")
    settings = {"batch_size": batch_size, "seed": seed, "objective": _describe(objective),
                "dynamic_binarization": dynamic_binarization, "precision": precision,
                "grad_clip": grad_clip, "data": source.kind, "epochs": epochs,
                "checkpoint_every": checkpoint_every, "checkpoint_minutes": checkpoint_minutes,
                "max_bad_steps": max_bad_steps, "device": str(device), "save_best": save_best,
                "steps": steps, "time_budget": time_budget}
    run = _run_directory(out, overwrite, resume)
    model.to(device)
    with forked_rng(device, None if resume else seed):
        _materialize(model, source, batch_size, device)
        optimizer = _make_optimizer(model, optimizer, lr, weight_decay, device)
        settings["optimizer"] = describe_optimizer(optimizer)
        settings["schedule"] = "constant"
        if schedule is not None:
            schedule.start(optimizer)
            settings["schedule"] = schedule.describe()
            if schedule.needs_total and epochs is None and steps is None and budget is None:
                raise VaekitError(f"the schedule {schedule.describe()} follows the planned length: give a budget")
        # hashing the data costs 0.2 s for MNIST: only a run directory's checkpoints need it
        fingerprint = "" if run is None else training_fingerprint(source, val_source)
        if resume:
            ckpt = checkpoint.load(run.path)
            checkpoint.check_settings(ckpt, settings)
            if ckpt.meta["data_fingerprint"] != fingerprint:
                raise VaekitError(
                    f"the data are not the data {run.path} was trained on: resuming on other data "
                    "would not continue the same run"
                )
            state = checkpoint.restore(ckpt, model, optimizer)
            if schedule is not None and ckpt.meta.get("schedule") is not None:
                schedule.load_state_dict(ckpt.meta["schedule"])
            if budget is not None:
                budget.load_state_dict(ckpt.meta.get("plan"))
            run.remove_temporary_files()
            run.write_metrics(state.metrics)
        else:
            state = TrainState.fresh(seed, fingerprint)
            if run is not None:
                try:
                    run.write_info(model.event_shape, model=type(model).__name__, device=str(device),
                                   precision=precision)
                    run.write_metrics([])
                except VaekitError:
                    run.discard()  # no half-written run left to mistake for a real one
                    raise
        if schedule is not None and not isinstance(schedule, TorchScheduler):
            for group in optimizer.param_groups:  # what the multipliers multiply (kept in the checkpoint)
                group.setdefault("initial_lr", group["lr"])
        trainer = _Trainer(model, optimizer, objective, source, val_source, state, settings, run,
                           device, list(callbacks), progress, schedule, budget)
        return trainer.train(figures)


def _run_directory(out, overwrite: bool, resume: bool) -> RunDirectory | None:
    if out is None:
        return None
    run = out if isinstance(out, RunDirectory) else RunDirectory(out)
    if resume:
        run.check_exists()
    elif not run.prepared:
        run.prepare(overwrite)
    return run


def _materialize(model, source: Source, batch_size: int, device: torch.device) -> None:
    """One forward pass without gradients on a first batch: networks with lazily sized
    layers and the model's data and latent shapes are settled before the optimiser sees the
    parameters. Draws from the forked generator, before the run's own draws start."""
    needs = (model.event_shape is None or getattr(model, "latent_dim", 1) is None
             or any(isinstance(p, torch.nn.UninitializedParameter) for p in model.parameters()))
    if not needs:
        return
    x, y = source.first_batch(min(batch_size, 8))
    was_training = model.training
    with torch.no_grad(), forked_rng(device):
        q = model.encode(x[:8].to(device), _labels(model, y, device, 8))
        model.decode(q.mean, _labels(model, y, device, 8))
    model.train(was_training)


def _labels(model, y, device, n: int | None = None):
    if not getattr(model, "num_classes", 0):
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
                 callbacks: list[Callback], progress: bool, schedule: Schedule | None = None,
                 budget: TimeBudget | None = None):
        self.model, self.optimizer, self.objective = model, optimizer, objective
        self.source, self.val_source, self.state = source, val_source, state
        self.settings, self.run, self.device = settings, run, device
        self.batch_size, self.epochs = settings["batch_size"], settings["epochs"]
        self.max_steps = settings["steps"]
        self.schedule, self.budget = schedule, budget
        if progress:
            callbacks = [ProgressBar(), *callbacks]
        self.callbacks = callbacks
        # Per-step overhead is what bounds small-batch training on a CPU (docs/performance.md):
        # the parameter list is gathered once, gradients are dropped by hand (zero_grad wraps a
        # profiler region), and one synchronising check per step covers loss and gradients.
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.history = History(epochs=state.metrics, best=state.best, out=None if run is None else run.path)
        per_epoch = source.steps(self.batch_size)
        self.loop = loop = Loop(model, optimizer, self.epochs, per_epoch, self.history, run)
        if state.steps is None:  # a checkpoint written before the step count was kept: whole epochs so far
            state.steps = state.epoch * per_epoch + (0 if state.in_epoch is None else state.in_epoch.step)
        loop.steps_done, loop.budget = state.steps, budget
        started, before = time.perf_counter(), state.seconds
        loop._clock = lambda: before + time.perf_counter() - started
        self.spent = False  # the steps or the time budget are used up

    def total_steps(self) -> int | None:
        if self.budget is not None:
            return self.budget.total_steps
        if self.max_steps is not None:
            return self.max_steps
        return None if self.epochs is None else self.epochs * self.loop.steps_per_epoch

    def budget_spent(self) -> bool:
        """After a step: whether the steps or the time budget are used up."""
        loop = self.loop
        if self.max_steps is not None and loop.steps_done >= self.max_steps:
            return True
        return self.budget is not None and self.budget.done(loop.steps_done, loop.seconds)

    def train(self, figures: bool) -> History:
        saver = _Checkpoints(self.run, self.model, self.optimizer, self.state, self.settings,
                             self.schedule, self.budget, self.loop)
        loop = self.loop
        loop.total_steps = self.total_steps()
        with _StopOnSignal(self.run is not None) as stop:
            for callback in self.callbacks:
                callback.on_fit_start(loop)
            self.spent = self.state.in_epoch is None and self.budget_spent()
            epoch = self.state.epoch
            while not self.spent and (self.epochs is None or epoch < self.epochs):
                epoch += 1
                loop.epoch = epoch
                if self.state.in_epoch is None:
                    self.state.in_epoch = EpochProgress.begin(self.state.order, self.state.bad_in_a_row)
                current = self.state.in_epoch
                saver.epoch_started()

                def on_step(loss: float, current: EpochProgress = current) -> bool:
                    loop.step = current.step
                    loop.steps_done = self.state.steps = self.state.steps + 1
                    if self.budget is not None:
                        self.budget.update(loop.steps_done, loop.seconds)
                        loop.total_steps = self.budget.total_steps
                    for callback in self.callbacks:
                        callback.on_step_end(loop, loss)
                    self.spent = self.budget_spent()
                    mid_epoch = self.source.kind != "loader"  # a DataLoader's position cannot be saved
                    if mid_epoch and not self.spent and (stop.signum is not None or saver.time_due()):
                        saver.save()
                    if not self.spent:
                        stop.check(self.state, self.run, mid_epoch)
                    return self.spent

                self.model.train()
                try:
                    stats = self.train_epoch(current, epoch, on_step)
                except NonFiniteTraining as err:
                    raise VaekitError(f"{err} {saver.kept()}") from None
                record = self.end_epoch(epoch, stats, current, saver.epoch_seconds())
                if self.schedule is not None:
                    self.schedule.on_epoch_end(loop, record)
                if self.budget is not None and not self.spent:
                    self.budget.update(loop.steps_done, loop.seconds, epoch_end=True)
                    loop.total_steps = self.budget.total_steps
                    self.spent = self.budget_spent()
                for callback in self.callbacks:
                    callback.on_epoch_end(loop, record)
                last = epoch == self.epochs or loop.stop_requested or self.spent
                if saver.epoch_due(epoch, last) or stop.signum is not None:
                    saver.save()
                stop.check(self.state, self.run, True)
                if loop.stop_requested:
                    self.history.stopped_early = not self.spent and (self.epochs is None or epoch < self.epochs)
                    break
            for callback in self.callbacks:
                callback.on_fit_end(loop)
        self.model.eval()
        if self.run is not None:
            self.finish(figures)
        self.model.train()
        return self.history

    def train_epoch(self, progress: EpochProgress, epoch: int, on_step) -> dict[str, float]:
        """One pass in random minibatches; the per-example mean terms, skipped steps and
        clamped encoder log-variances. ``progress`` continues an epoch a checkpoint
        interrupted: the shuffle is replayed from the order generator's state saved before
        it and the batches already done are skipped."""
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
        for x, y in self.source.batches(size, order, progress.step):
            if dynamic:
                x = torch.bernoulli(x, generator=state.draws)
            x = x.to(self.device, non_blocking=True)
            batch = Batch(x, _labels(self.model, y, self.device), (epoch - 1) + done / n)
            loop.epochs_done = batch.epochs_done
            if schedule is not None:
                schedule.before_step(loop)
            with amp:
                loss, terms = _call_objective(self.objective, self.model, batch)
            for p in self.params:
                p.grad = None
            loss.backward()
            norm = _gradient_check(self.params, self.settings["grad_clip"])
            progress.step += 1
            done += len(x)
            progress.clamped += int(getattr(self.model, "clamped", 0))
            if bool(torch.isfinite(loss + norm)):
                self.optimizer.step()
                progress.totals += torch.stack([_term(terms, k, x) for k in TERMS]).cpu()
                progress.examples += len(x)
                progress.bad_in_a_row = 0
            else:
                progress.skipped += 1
                progress.bad_in_a_row += 1
                if progress.bad_in_a_row >= max_bad:
                    raise NonFiniteTraining(_bad_steps_message(progress.bad_in_a_row, self.model, self.optimizer))
            if on_step(loss.item()):
                break
        # an epoch whose every step was skipped has no mean: NaN, not a flattering 0
        used = progress.examples if progress.examples else float("nan")
        means = (progress.totals / used).tolist()
        return {**dict(zip(TERMS, means, strict=True)), "skipped_steps": progress.skipped,
                "logvar_clamped": progress.clamped}

    def end_epoch(self, epoch: int, stats: dict, current: EpochProgress, seconds: float) -> dict:
        record = {"epoch": epoch, **{f"train_{k}": v for k, v in stats.items()}}
        if self.val_source is not None:
            seed = self.settings["seed"] if self.settings["dynamic_binarization"] else None
            val = validation_terms(self.model, self.val_source, self.device, binarize_seed=seed)
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
        if self.run is not None:
            self.run.append_metrics(record)
            self.run.save_weights(self.model)
        self._track_best(record)
        return record

    def _track_best(self, record: dict) -> None:
        """Remember the best validation ELBO; with ``save_best`` keep its weights.

        Written before the epoch's checkpoint: a kill in between re-does the epoch after resume
        and writes the same file again, whereas the other order could lose the best weights."""
        value = record.get("validation_elbo")
        if value is None or value != value:
            return
        state = self.state
        if state.best is None or value > state.best["value"]:
            state.best = {"metric": "validation_elbo", "value": value, "epoch": record["epoch"]}
            self.history.best = state.best
            if self.run is not None and self.settings["save_best"]:
                self.run.save_weights(self.model, "best", epoch=record["epoch"], validation_elbo=value)

    def finish(self, figures: bool) -> None:
        """The quick evaluation (``evaluation.json``) and the figures of a run directory."""
        from vaekit.evaluation import evaluate

        shown = self.val_source or self.source
        x, labels = _evaluation_data(shown, self.settings["dynamic_binarization"], self.settings["seed"])
        name = "validation" if self.val_source is not None else "train"
        if len(x):
            result = evaluate(self.model, (x, labels if getattr(self.model, "num_classes", 0) else None),
                              importance_samples=FINAL_K, seed=self.settings["seed"])
            self.run.write_evaluation({"split": name, **result})
        if figures:
            from vaekit import plots

            train_x, train_labels = _evaluation_data(self.source, False, self.settings["seed"], limit=20000)
            plots.draw_all(self.run.path, self.model, train_x, train_labels, x, labels,
                           self.run.read_metrics())


def _evaluation_data(source: Source, binarize: bool, seed: int, limit: int | None = None):
    """Tensors of ``source`` for the final evaluation and figures (a DataLoader or Dataset
    read once; at most ``limit`` examples); binarised once, from ``seed``, when training
    binarised dynamically."""
    from vaekit.sources import as_tensors

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
                     binarize_seed: int | None = None) -> dict[str, float]:
    """Per-example means of ELBO, reconstruction and KL over ``source`` (one draw per
    example, the KL in closed form where there is one; fp32, no gradients). With
    ``binarize_seed`` the data are binarised by one fixed draw (binary data stay as they are)."""
    was_training = model.training
    model.eval()
    draws = None if binarize_seed is None else torch.Generator().manual_seed(binarize_seed)
    totals, n = torch.zeros(len(TERMS), dtype=torch.float64), 0
    for x, y in source.in_order(batch_size):
        if draws is not None:
            x = torch.bernoulli(x, generator=draws)
        x = x.to(device)
        terms = elbo_terms(model, x, 1, "auto", _labels(model, y, device))
        totals += torch.stack([terms[k].double().sum() for k in TERMS]).cpu()
        n += len(x)
    model.train(was_training)
    return dict(zip(TERMS, (totals / n).tolist(), strict=True))


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
    """When to write checkpoints, and writing them (nothing without a run directory)."""

    def __init__(self, run: RunDirectory | None, model, optimizer, state: TrainState, settings: dict,
                 schedule: Schedule | None = None, budget: TimeBudget | None = None, loop: Loop | None = None):
        self.run, self.model, self.optimizer = run, model, optimizer
        self.state, self.settings = state, settings
        self.schedule, self.budget, self.loop = schedule, budget, loop
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
        minutes = self.settings["checkpoint_minutes"]
        return self.run is not None and minutes > 0 and time.monotonic() - self.last >= 60 * minutes

    def epoch_due(self, epoch: int, last: bool) -> bool:
        every = self.settings["checkpoint_every"]
        return every > 0 and (epoch % every == 0 or last)

    def save(self) -> None:
        if self.run is None:
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
        try:
            checkpoint.save(self.run, self.model, self.optimizer, state, self.settings, self.config)
        except WriteError as err:
            hint = f"Once that is fixed, continue with: vaekit train --resume {self.run.path}"
            if self.run.checkpoint_path.is_file():
                raise WriteError(f"{err}. {hint}") from None
            raise
        self.last = time.monotonic()

    def kept(self) -> str:
        if self.run is None:
            return ""
        if not self.run.checkpoint_path.is_file():
            return "No checkpoint had been written yet."
        return f"The last good checkpoint is kept in {self.run.checkpoint_path}."


class _StopOnSignal:
    """With a run directory, SIGINT and SIGTERM ask the loop to finish its step, checkpoint
    and stop; a second signal stops at once (the last complete checkpoint is still there).
    The previous handlers are restored on the way out."""

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

    def check(self, state: TrainState, run: RunDirectory | None, saved: bool) -> None:
        if self.signum is None:
            return
        name = signal.Signals(self.signum).name
        where = state.where() if saved else f"epoch {state.epoch} (a DataLoader's epoch restarts)"
        raise Interrupted(
            f"stopped by {name}; the checkpoint holds {where}. Resume with: vaekit train --resume {run.path} "
            "(or fit(..., resume=True))",
            self.signum,
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
            of = "" if loop.epochs is None else f"/{loop.epochs}"
            val = "" if loop.last_validation is None else f"  validation ELBO {loop.last_validation:.2f}"
            self.bar.update(self.task, advance=self.pending,
                            description=f"epoch {loop.epoch}{of}  -ELBO {loss:.2f}{val}")
            self.pending, self.last = 0, now

    def on_epoch_end(self, loop: Loop, record: dict) -> None:
        self.bar.update(self.task, advance=self.pending)
        self.pending = 0

    def on_fit_end(self, loop: Loop) -> None:
        self.bar.stop()


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
        elif loop.out is not None and loop.out.weights_path("best").is_file():
            loop.out.load_weights(loop.model, "best")  # a resumed run: the best epoch came before the restart
        else:
            return
        if loop.out is not None:
            loop.out.save_weights(loop.model)
