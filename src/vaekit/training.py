"""``fit``: minibatch stochastic optimisation of an objective, for any model and data.

The loop takes a model (an ``nn.Module`` whose ``encode``/``decode`` return distributions),
data (:mod:`vaekit.sources`), an objective ``(model, batch) -> (loss, terms)``
(:mod:`vaekit.objectives`) and an optimiser (Adam by default). Where a step runs (one
process, or data parallel under ``torchrun``) is a :mod:`vaekit.strategies` object; what
happens around the loop (progress, early stopping, trackers, and with ``out`` the run
directory's metrics, weights, checkpoints, final evaluation and figures) are
:mod:`vaekit.callbacks`. ``fit(..., resume=True)`` continues from the checkpoint and, for
tensors and Datasets (whose order vaekit draws), ends bit for bit where the uninterrupted
run would.

Random draws come from generators seeded from ``seed`` inside a forked copy of torch's
global state (the caller's random state is left as it was): the data order and dynamic
binarisation from the run's own generators, the reparameterisation noise from a stream keyed
by (seed, step, example) (:mod:`vaekit.noise`), the same at any world size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path

import torch

from vaekit import distributed, noise, start, strategies
from vaekit.arguments import Budget, Checkpointing, FigureLabels, Guards
from vaekit.callbacks import (  # noqa: F401
    Callback,
    Checkpointer,
    EarlyStopping,
    History,
    Loop,
    ProgressBar,
    SessionTime,
    run_writers,
)
from vaekit.checkpoint import EpochProgress, TrainState
from vaekit.devices import autocast, check_precision, forked_rng, resolve_device, uncompiled, warn_emulated_bf16
from vaekit.errors import VaekitError, WriteError
from vaekit.evaluation import validation_terms  # noqa: F401  (where it used to be)
from vaekit.objectives import Batch, elbo, elbo_objective
from vaekit.rundir import RunDirectory
from vaekit.schedules import TimeBudget, TorchScheduler, as_schedule
from vaekit.sources import Source, training_fingerprint
from vaekit.strategies import TERMS, Flags, StopOnSignal


def fit(
    model: torch.nn.Module,
    train_data,
    *,
    validation=None,
    epochs: int | None = None,
    budget: Budget | None = None,
    batch_size: int = 128,
    objective: Callable | None = None,
    optimizer: torch.optim.Optimizer | Callable | None = None,
    lr: float | None = None,
    schedule=None,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    seed: int = 0,
    dynamic_binarization: bool = False,
    guards: Guards = Guards(),
    out: str | Path | RunDirectory | None = None,
    overwrite: bool = False,
    resume: bool = False,
    checkpointing: Checkpointing = Checkpointing(),
    figures: bool | FigureLabels = False,
    callbacks: Iterable[Callback] = (),
) -> History:
    """Train ``model`` on ``train_data``; returns the :class:`History`.

    - ``epochs`` (default 10) or a :class:`Budget` (steps, time) says how long.
    - ``train_data`` / ``validation``: a tensor [N, ...], an ``(x, labels)`` pair, a
      ``torch.utils.data.Dataset`` (items ``x`` or ``(x, y)``) or a ``DataLoader`` (used as
      given). Labels reach a conditional model (``model.num_classes > 0``).
    - ``objective``: ``(model, batch) -> (loss, terms)`` with ``batch`` a
      :class:`vaekit.objectives.Batch`; or a function returning per-example values to
      maximise (e.g. :func:`vaekit.objectives.elbo`). Default: the ELBO.
    - ``optimizer``: an optimiser over the model's parameters, a function ``params ->
      optimiser``, or None for Adam(``lr``, default 1e-3). ``lr`` on a resume: the rate from
      now on (recorded in the checkpoint's settings; the epochs' records show it).
    - ``schedule``: a :class:`vaekit.schedules.Schedule` (multipliers of each group's initial
      rate, set before every step), a ``torch.optim.lr_scheduler`` scheduler or a function
      ``optimizer -> scheduler`` (stepped after every epoch); None keeps the rate. Checkpointed.
    - ``device``: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; data follow per batch.
      ``precision``: ``fp32`` or ``bf16`` (autocast for training steps only).
    - ``dynamic_binarization``: draw x ~ Bernoulli(x) afresh for every training minibatch.
    - ``guards``: gradient clipping and the non-finite step limit (:class:`Guards`).
    - ``out``: write a run directory (a path: refused if it holds a run, unless
      ``overwrite``; a :class:`RunDirectory` the caller prepared or locked stays the
      caller's to end); ``resume=True`` continues the run there. ``checkpointing``: when
      (:class:`Checkpointing`); ``figures``: draw the figures at the end (a
      :class:`FigureLabels` labels them).
    - ``callbacks``: :class:`Callback` objects (e.g. :class:`ProgressBar`, trackers).

    Under ``torchrun`` (an initialised process group) ``batch_size`` is the global minibatch,
    split across the ranks; the ``objective``'s loss must then be a mean over the batch's
    examples (vaekit's are; free bits' floor applies to each rank's share). A DataLoader must
    shard with a ``DistributedSampler`` (its batch size is per rank). Rank 0 alone writes
    ``out``. A time budget runs on rank 0's clock, so every rank plans and stops alike.
    """
    session = SessionTime(time.perf_counter())  # run.json's sessions_seconds count from here
    budget = Budget.of(epochs, budget)
    if checkpointing.every < 0:
        raise VaekitError(f"checkpoint_every must be 0 or more, got {checkpointing.every}")
    if batch_size < 1:
        raise VaekitError(f"batch_size must be at least 1, got {batch_size}")
    if resume and out is None:
        raise VaekitError("resume=True continues the run in a run directory: give out=")
    check_precision(precision)
    objective = elbo_objective if objective is None else objective
    planner = None if budget.time is None else TimeBudget(budget.time)
    schedule = as_schedule(schedule)
    strategy = strategies.strategy()
    device = distributed.local_device(resolve_device(device))
    warn_emulated_bf16(device, precision)
    source = Source(train_data, what="the training data")
    if len(source) == 0:
        raise VaekitError("the training data is empty")
    val_source = None if validation is None else Source(validation, what="the validation data")
    strategy.check(source, batch_size)
    if device.type == "cuda":
        source.pin()
    settings = {"batch_size": batch_size, "seed": seed, "objective": start.describe(objective),
                "dynamic_binarization": dynamic_binarization, "precision": precision,
                "grad_clip": guards.grad_clip, "data": source.kind, "epochs": budget.epochs,
                "checkpoint_every": checkpointing.every, "checkpoint_minutes": checkpointing.minutes,
                "max_bad_steps": guards.max_bad_steps, "device": str(device), "save_best": checkpointing.save_best,
                "steps": budget.steps, "time_budget": budget.time}
    # rank 0 alone opens the run directory (and owns it if it prepared or locked it); a refusal stops every rank
    run, owned = strategy.together(lambda: start.open_run(out, overwrite, resume), main_only=True) or (None, False)
    where = None if out is None else Path(out.path if isinstance(out, RunDirectory) else out)
    world = strategy.record(device)
    with run if owned else nullcontext():
        model.to(device)
        with forked_rng(device, None if resume else distributed.rank_seed(seed, strategy.rank)):
            # a run directory replaces an old run only once the model has met the data
            start.materialize(model, source, batch_size, device)
            optimizer = start.make_optimizer(model, optimizer, lr, 0.0, device)
            settings["optimizer"] = start.describe_optimizer(optimizer)
            settings["schedule"] = "constant" if schedule is None else schedule.describe()
            if schedule is not None:
                schedule.start(optimizer)
                if schedule.needs_total and budget.epochs is None and budget.steps is None and planner is None:
                    raise VaekitError(f"the schedule {schedule.describe()} follows the planned length: give a budget")
            # hashing the data costs 0.2 s for MNIST: only a run directory's checkpoints need it
            # (and only rank 0's: the others compare a sample of rows, which reads little)
            fingerprint = "" if run is None else training_fingerprint(source, val_source)
            if where is not None:
                strategy.check_same_data(training_fingerprint(source, val_source, sampled=True))
            if resume:
                state, finished = start.restore(run, where, model, optimizer, device, settings, world, strategy,
                                                fingerprint, (source, val_source), schedule, planner, lr, session,
                                                budget)
                if finished:  # nothing left to train: the run stays as it is
                    return History(epochs=state.metrics, best=state.best, out=where)
            else:
                if lr is not None:
                    start.set_lr(optimizer, lr, None)
                settings["lr"] = lr
                state = start.begin(run, model, device, settings, world, strategy, seed, fingerprint, session)
            if schedule is not None and not isinstance(schedule, TorchScheduler):
                for group in optimizer.param_groups:  # what the multipliers multiply (kept in the checkpoint)
                    group.setdefault("initial_lr", group["lr"])
            trainer = _Trainer(model, optimizer, objective, source, val_source, state, settings, strategy, device,
                               schedule, planner, run, where, list(callbacks), guards)
            if where is not None:
                trainer.writers = run_writers(run, where, strategy, state, settings, world, schedule, source,
                                              val_source, checkpointing, figures, session)
                trainer.checkpointer = next(w for w in trainer.writers if isinstance(w, Checkpointer))
            return trainer.train()


class _Trainer:
    """The loop of one fit call: ``train`` trains until the budget is spent."""

    def __init__(self, model, optimizer, objective, source: Source, val_source: Source | None, state: TrainState,
                 settings: dict, strategy, device: torch.device, schedule, budget: TimeBudget | None,
                 run: RunDirectory | None, where: Path | None, callbacks: list[Callback], guards: Guards):
        self.model, self.optimizer, self.source, self.val_source = model, optimizer, source, val_source
        self.state, self.settings, self.strategy, self.device = state, settings, strategy, device
        self.schedule, self.budget, self.run, self.where, self.guards = schedule, budget, run, where, guards
        self.callbacks, self.writers, self.checkpointer = callbacks, [], None
        self.epochs, self.max_steps, self.batch_size = settings["epochs"], settings["steps"], settings["batch_size"]
        # Per-step overhead bounds small-batch training on a CPU (docs/performance.md): the
        # parameters are gathered once, gradients dropped by hand, one synchronising check per step.
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.stream = noise.Stream(settings["seed"], device) if settings.get("noise") == noise.KEYED else None
        per_epoch = source.steps(self.batch_size)
        if state.steps is None:  # a checkpoint written before the step count was kept: whole epochs so far
            state.steps = state.epoch * per_epoch + (0 if state.in_epoch is None else state.in_epoch.step)
        self.history = History(epochs=state.metrics, best=state.best, out=where)
        self.loop = Loop(model, optimizer, self.epochs, per_epoch, self.history, run, state, budget)
        self.loop.rank, self.loop.world_size, self.loop.settings = strategy.rank, strategy.world, settings
        strategy.prepare(model, _step_of(objective), source, self.batch_size, device)

    def train(self) -> History:
        try:
            return self._train()
        except WriteError as err:
            if self.run is not None and self.run.checkpoint_path.is_file():
                err.resumable = self.where  # once there is room, the run continues from its checkpoint
            raise
        except RuntimeError as err:
            if not self.strategy.lost(err):
                raise
            raise self._lost(err) from None
        finally:
            self.strategy.close()

    def _train(self) -> History:
        loop, state = self.loop, self.state
        self.hooks = (*self.callbacks, *self.writers)  # your callbacks, then the run's writers
        loop.total_steps = self._total_steps()
        with StopOnSignal(self.where is not None) as stop:
            self._each("on_fit_start", loop)
            loop.spent = state.in_epoch is None and self._spent(self._shared_seconds())
            epoch = state.epoch
            while not loop.spent and (self.epochs is None or epoch < self.epochs):
                epoch += 1
                loop.epoch = epoch
                if state.in_epoch is None:
                    state.in_epoch = EpochProgress.begin(state.order, state.bad_in_a_row)
                current = state.in_epoch
                loop.mark_epoch_clock()
                self.model.train()
                stats = self._epoch(current, epoch, stop)
                record = self._end_epoch(epoch, stats, current)
                if self.schedule is not None:
                    self.schedule.on_epoch_end(loop, record)
                for callback in self.callbacks:
                    callback.on_epoch_end(loop, record)
                loop.flags = flags = self.strategy.agree(Flags(stop.signum or 0, False, loop.stop_requested,
                                                               loop.seconds))
                loop.stop_requested = flags.stop
                if self.budget is not None and not loop.spent:
                    self.budget.update(loop.steps_done, flags.seconds, epoch_end=True)
                    loop.total_steps = self.budget.total_steps
                    loop.spent = self._spent(flags.seconds)
                loop.final_epoch = epoch == self.epochs or loop.stop_requested or loop.spent
                for writer in self.writers:
                    writer.on_epoch_end(loop, record)
                StopOnSignal.check(flags.signum, self.where, state.where())
                if loop.stop_requested:
                    self.history.stopped_early = not loop.spent and (self.epochs is None or epoch < self.epochs)
                    break
        self._check_learned()
        self._each("on_fit_end", loop)
        self._each("on_results", loop, loop.evaluation)
        return self.history

    def _each(self, hook: str, *args) -> None:
        """Your callbacks, then the run's writers."""
        for callback in self.hooks:
            getattr(callback, hook)(*args)

    def _epoch(self, progress: EpochProgress, epoch: int, stop: StopOnSignal) -> dict[str, float]:
        """One pass in random minibatches; the per-example mean terms, skipped steps and
        clamped encoder log-variances. ``progress`` continues an epoch a checkpoint
        interrupted: the shuffle is replayed from the order generator's state saved before
        it and the batches already done are skipped."""
        state, s, loop, model, n = self.state, self.strategy, self.loop, self.model, len(self.source)
        state.order.set_state(progress.order_start)
        order = torch.randperm(n, generator=state.order) if self.source.kind != "loader" else None
        if progress.totals is None:
            progress.totals = torch.zeros(len(TERMS))
        elif len(progress.totals) < len(TERMS):  # a checkpoint from before train_objective: unknown this epoch
            progress.totals = torch.cat([progress.totals, torch.full((len(TERMS) - len(progress.totals),), torch.nan)])
        done, dynamic = progress.step * self.batch_size, self.settings["dynamic_binarization"]
        amp = autocast(self.device, self.settings["precision"])
        s.start_epoch(self.source, epoch)
        for x, y, total in self.source.batches(self.batch_size, order, progress.step, s.rank, s.world):
            if dynamic:
                x = s.binarize(x, total, state.draws)
            share = 0 if x is None else len(x)
            loop.epochs_done = (epoch - 1) + done / n
            batch = None
            if share:
                x = x.to(self.device, non_blocking=True)
                batch = Batch(x, start.labels(model, y, self.device), loop.epochs_done)
            if self.schedule is not None:
                self.schedule.before_step(loop)
            for p in self.params:
                p.grad = None
            with nullcontext() if self.stream is None else self.stream.step(state.steps, *s.share(share, total)):
                loss, terms = s.forward_backward(batch, total, amp)
            norm = strategies.gradient_check(self.params, self.guards.grad_clip)
            progress.step += 1
            result = s.reduce(loss, terms, x, norm, Flags(stop.signum or 0, self._time_due(), False, loop.seconds))
            done += result.examples
            progress.clamped += result.clamped
            if result.finite:
                self.optimizer.step()
                progress.totals += result.sums
                progress.examples += result.examples
                progress.bad_in_a_row = 0
            else:
                progress.skipped += 1
                progress.bad_in_a_row += 1
                if progress.bad_in_a_row >= self.guards.max_bad_steps:
                    message = strategies.bad_steps_message(progress.bad_in_a_row, model, self.optimizer)
                    raise self._everywhere(VaekitError(f"{message} {self._kept()}".strip()))
            if self._after_step(progress, result):
                break
        used = progress.examples if progress.examples else float("nan")  # all skipped: NaN, not a flattering 0
        means = (progress.totals / used).tolist()
        stats = dict(zip(TERMS, means, strict=True))
        if stats["objective"] != stats["objective"] and progress.examples:
            del stats["objective"]  # an objective that does not say what it maximises
        return {**stats, "skipped_steps": progress.skipped,
                "logvar_clamped": progress.clamped}

    def _after_step(self, progress: EpochProgress, result) -> bool:
        """Count the step, tell the callbacks, then the writers (a checkpoint on a signal or
        by the clock); stop on a signal. Whether the budget is spent."""
        loop, state, flags = self.loop, self.state, result.flags
        loop.step, loop.flags = progress.step, flags
        loop.steps_done = state.steps = state.steps + 1
        if self.budget is not None:
            self.budget.update(loop.steps_done, flags.seconds)
            loop.total_steps = self.budget.total_steps
        loop.spent = self._spent(flags.seconds)
        for callback in self.hooks:
            callback.on_step_end(loop, result.loss)
        if not loop.spent:
            saved = self.source.kind != "loader"  # a DataLoader's position cannot be saved
            StopOnSignal.check(flags.signum, self.where,
                               state.where() if saved else f"epoch {state.epoch} (a DataLoader's epoch restarts)")
        return loop.spent

    def _end_epoch(self, epoch: int, stats: dict, current: EpochProgress) -> dict:
        """The epoch's record (validation included) and the run's state moved past it."""
        record = {"epoch": epoch, **{f"train_{k}": v for k, v in stats.items()}}
        if self.val_source is not None:
            seed = self.settings["seed"] if self.settings["dynamic_binarization"] else None
            val = validation_terms(self.model, self.val_source, self.device, binarize_seed=seed,
                                   group=self.strategy.group, stream=self.stream)
            record.update({f"validation_{k}": v for k, v in val.items()})
            self.loop.last_validation = val["elbo"]
        sigma = getattr(getattr(self.model, "likelihood", None), "sigma", None)
        if callable(sigma) and getattr(self.model.likelihood, "mode", "fixed") != "fixed":
            record["sigma_g_min"] = float(sigma().detach().min())  # how close σ_G came to its floor
        record["seconds"] = self.loop.epoch_seconds
        record["steps"] = self.state.steps  # in the whole run: the last epoch of a steps or time budget is partial
        if self.optimizer.param_groups:
            record["lr"] = float(self.optimizer.param_groups[0]["lr"])
        state = self.state
        state.epoch, state.in_epoch, state.bad_in_a_row = epoch, None, current.bad_in_a_row
        state.metrics.append(record)
        value = record.get("validation_elbo")
        if value is not None and value == value and (state.best is None or value > state.best["value"]):
            state.best = self.history.best = {"metric": "validation_elbo", "value": value, "epoch": epoch}
        return record

    def _total_steps(self) -> int | None:
        if self.budget is not None:
            return self.budget.total_steps
        if self.max_steps is not None:
            return self.max_steps
        return None if self.epochs is None else self.epochs * self.loop.steps_per_epoch

    def _spent(self, seconds: float) -> bool:
        """Whether the steps or the time budget are used up (``seconds``: rank 0's clock)."""
        if self.max_steps is not None and self.loop.steps_done >= self.max_steps:
            return True
        return self.budget is not None and self.budget.done(self.loop.steps_done, seconds)

    def _shared_seconds(self) -> float:
        """Rank 0's training seconds on every rank (where no step carries them)."""
        if self.strategy.world == 1 or self.budget is None:
            return self.loop.seconds
        return self.strategy.agree(Flags(seconds=self.loop.seconds)).seconds

    def _time_due(self) -> bool:
        return self.checkpointer is not None and self.checkpointer.time_due()

    def _kept(self) -> str:
        return "" if self.checkpointer is None else self.checkpointer.kept()

    def _everywhere(self, err: VaekitError) -> VaekitError:
        """Mark an error every rank raises alike (the CLI prints it on rank 0 only)."""
        if self.strategy.world > 1:
            err.shared = True
        return err

    def _check_learned(self) -> None:
        """A run whose every step was skipped (non-finite loss or gradient), but never
        max_bad_steps of them in a row, learned nothing: an error, not an exit 0 with NaNs."""
        records = self.history.epochs
        if records and not any(r.get(k) == r.get(k) is not None for r in records
                               for k in ("train_elbo", "train_objective")):
            steps = sum(r.get("train_skipped_steps", 0) for r in records)
            kept = "" if self.run is None else f" The checkpoint is kept in {self.run.checkpoint_path}."
            raise self._everywhere(VaekitError(
                f"training made no update: all {steps} steps had a non-finite loss or gradient and were "
                f"skipped. {strategies.bad_steps_message(steps, self.model, self.optimizer).split('. ', 1)[1]}{kept}"))

    def _lost(self, err: BaseException) -> VaekitError:
        """What a surviving rank says when a collective fails because a rank is gone."""
        holds = None if self.checkpointer is None else self.checkpointer.holds
        lost = VaekitError(
            f"training stopped: another of the {self.strategy.world} processes of this job is gone "
            f"({distributed.reason(err)}); this one had reached {self.state.where()}. {self._kept()}"
            f"{'' if holds is None else f' It holds {holds}.'} Any number of processes can continue the run "
            "(under torchrun, or one process)".replace("  ", " "))
        lost.resumable = self.where
        return lost


def _step_of(objective: Callable) -> Callable:
    """The step's objective as ``(model, batch) -> (loss, terms)``."""
    def step(model, batch: Batch):
        return _call_objective(objective, model, batch)  # looked up per call: tests replace it

    return step


def _call_objective(objective, model, batch: Batch):
    out = objective(model, batch)
    if torch.is_tensor(out):  # per-example values to maximise: the ELBO only if it is objectives.elbo
        return -out.mean(), {"elbo": out, "objective": out} if uncompiled(objective) is elbo else {"objective": out}
    return out

