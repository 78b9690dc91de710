"""Callbacks: what :func:`vaekit.fit` does around its loop, as objects with the loop's hooks
(and the :class:`Loop` and :class:`History` they see).

Yours (:class:`Callback` subclasses, trackers, :class:`EarlyStopping`, the optional
:class:`ProgressBar`) run first at every hook. Then, with a run directory, the run's own
writers, which ``fit`` wires by default in this order: :class:`EpochFiles` (metrics line,
weights, best weights), :class:`Checkpointer`, :class:`FinalEvaluation` and :class:`Figures`.
They run after what the ranks agree on at that point (signals, stop requests, the time
budget), so a metric a callback adds to an epoch's record reaches ``metrics.jsonl``, and
``on_fit_end`` of yours (e.g. restoring the best weights) comes before the final evaluation.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vaekit import checkpoint, distributed
from vaekit.checkpoint import TrainState
from vaekit.errors import VaekitError
from vaekit.model import num_classes
from vaekit.rundir import RunDirectory
from vaekit.sources import Source, binarize
from vaekit.strategies import Flags

if TYPE_CHECKING:
    from vaekit.arguments import Checkpointing, FigureLabels
    from vaekit.schedules import TimeBudget
    from vaekit.strategies import SingleProcess

FINAL_K = 100  # importance samples of the quick evaluation a run stores in evaluation.json


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
    than 0, which never write the run directory), ``rank`` and ``world_size``, ``flags``
    (what the ranks agreed after the last step or epoch), ``spent`` (the budget is used up),
    ``final_epoch``, ``evaluation`` (the final one, once made) and ``settings`` (fit's
    arguments as the checkpoint records them: batch size, seed, objective, optimiser, ...); ``stop()`` asks it to end
    after the current epoch (with its checkpoint; under torch.distributed every rank stops
    when one asks)."""

    def __init__(self, model, optimizer, epochs: int | None, steps_per_epoch: int, history: History,
                 out: RunDirectory | None, state: TrainState, budget: TimeBudget | None):
        self.model, self.optimizer, self.epochs = model, optimizer, epochs
        self.steps_per_epoch, self.history, self.out, self.budget = steps_per_epoch, history, out, budget
        self.epoch, self.step, self.stop_requested, self.spent, self.final_epoch = 0, 0, False, False, False
        self.steps_done, self.epochs_done, self.total_steps = state.steps, 0.0, None
        self.last_validation: float | None = None
        self.evaluation: dict[str, Any] | None = None
        self.settings: dict[str, Any] = {}
        self.rank, self.world_size, self.flags = 0, 1, Flags()
        self._state, self._started, self._before = state, time.perf_counter(), state.seconds
        self._epoch_started = self._started

    @property
    def progress(self) -> float:
        if self.budget is not None:
            return self.budget.progress(self.steps_done)
        return min(1.0, self.steps_done / self.total_steps) if self.total_steps else 0.0

    @property
    def seconds(self) -> float:
        return self._before + time.perf_counter() - self._started

    @property
    def epoch_seconds(self) -> float:
        """The current epoch's training seconds (before a restart included)."""
        current = self._state.in_epoch
        return (current.seconds if current is not None else 0.0) + time.perf_counter() - self._epoch_started

    def mark_epoch_clock(self) -> float:
        """:attr:`epoch_seconds`, the clock restarting from them (a checkpoint stores them)."""
        seconds, self._epoch_started = self.epoch_seconds, time.perf_counter()
        return seconds

    def stop(self) -> None:
        self.stop_requested = True


class Callback:
    """Hooks into :func:`fit`'s loop (progress bars, early stopping, experiment trackers).
    Override what you need; ``loop`` is the running :class:`vaekit.training.Loop`."""

    def on_fit_start(self, loop: Loop) -> None:
        """Before the first step (after a resume: before the first step left)."""

    def on_step_end(self, loop: Loop, loss: float) -> None:
        """After every optimisation step (``loss``: the minibatch's objective)."""

    def on_epoch_end(self, loop: Loop, record: dict[str, Any]) -> None:
        """After every epoch, with its metrics record (what ``metrics.jsonl`` gets: keys you
        add reach it too)."""

    def on_fit_end(self, loop: Loop) -> None:
        """After the last epoch, before the final evaluation."""

    def on_results(self, loop: Loop, evaluation: dict[str, Any] | None) -> None:
        """At the very end: the final evaluation (None without a run directory) and the
        figures are written (trackers log them here)."""


class ProgressBar(Callback):
    """A rich progress bar on stderr: epoch, steps, the minibatch's loss (the objective's), the last validation
    ELBO, time elapsed and left. Redrawn at most 10 times a second: redrawing on every
    small-batch step cost more than the step's maths."""

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
            self.bar.update(self.task, advance=self.pending,
                            description=f"epoch {_epoch_of(loop)}  loss {loss:.2f}{_validation(loop)}")
            self.pending, self.last = 0, now

    def on_epoch_end(self, loop: Loop, record: dict) -> None:
        self.bar.update(self.task, advance=self.pending, description=f"epoch {_epoch_of(loop)}{_validation(loop)}")
        self.pending = 0

    def on_fit_end(self, loop: Loop) -> None:
        self.bar.stop()


def _epoch_of(loop: Loop) -> str:
    """'3/10', or '3' when another budget than epochs ends the run."""
    return str(loop.epoch) if loop.epochs is None else f"{loop.epoch}/{loop.epochs}"


def _validation(loop: Loop) -> str:
    return "" if loop.last_validation is None else f"  validation ELBO {loop.last_validation:.2f}"


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


# ---------------------------------------------------------------------- the run's writers
class SessionTime(Callback):
    """run.json's ``sessions_seconds``: the real time of each training session, one entry per
    fit call on the run (a resume appends one), from fit's start (data checks, the first
    forward pass and the run's start included) to its end (after the final evaluation and
    figures). The run record is written with the session's time so far when the session
    starts, at every epoch's end and mid-epoch checkpoint (a killed session keeps the time
    it had reached) and at the very end, when ``ended`` becomes true: the session trained
    until its budget was spent or it was asked to stop (:func:`vaekit.start.finished`). Rank 0
    writes (the others hold no run)."""

    def __init__(self, started: float):
        self.started, self.strategy = started, None
        self.run: RunDirectory | None = None
        self.event_shape: tuple[int, ...] = ()
        self.info: dict[str, Any] = {}
        self.before: list[float | None] = []

    def start(self, run: RunDirectory, event_shape, info: dict[str, Any], before: list[float | None]) -> None:
        """run.json for this session (rank 0): ``info`` and the earlier sessions' seconds."""
        self.run, self.event_shape, self.before = run, tuple(event_shape), list(before)
        self.info = {**info, "ended": False}
        self.write()

    def seconds(self) -> list[float | None]:
        return [*self.before, time.perf_counter() - self.started]

    def write(self) -> None:
        if self.run is not None:
            self.run.write_info(self.event_shape, **self.info, sessions_seconds=self.seconds())

    def on_results(self, loop: Loop, evaluation: dict[str, Any] | None) -> None:
        self.info["ended"] = True
        if self.strategy is not None:
            self.strategy.together(self.write, main_only=True)


def earlier_sessions(info: dict[str, Any]) -> list[float | None]:
    """run.json's ``sessions_seconds`` as a list (a number: one session); a run from before
    they were recorded, or a damaged entry, counts as one session of unknown time (None)."""
    value = info.get("sessions_seconds")
    parts = value if isinstance(value, list) else [value]
    return [v if isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 else None for v in parts]


class EpochFiles(Callback):
    """After every epoch: its line in ``metrics.jsonl``, the weights, and the best epoch's
    weights (``save_best``), then run.json with the session's time. The best weights come
    after the epoch's: a kill in between re-does the epoch after resume and writes the same
    file again, whereas the other order could lose them. Rank 0 writes."""

    def __init__(self, run: RunDirectory | None, strategy: SingleProcess, save_best: bool,
                 session: SessionTime | None = None):
        self.run, self.strategy, self.save_best, self.session = run, strategy, save_best, session

    def on_epoch_end(self, loop: Loop, record: dict) -> None:
        best = loop.history.best

        def write() -> None:
            self.run.append_metrics(record)
            self.run.save_weights(loop.model)
            if self.save_best and best is not None and best["epoch"] == record["epoch"]:
                self.run.save_weights(loop.model, "best", epoch=record["epoch"], validation_elbo=best["value"])
            if self.session is not None:
                self.session.write()

        self.strategy.together(write, main_only=True)


class Checkpointer(Callback):
    """Checkpoints: every ``policy.every`` epochs and at the last, every ``policy.minutes``
    between steps (rank 0's clock), and on a signal; inside an epoch only where the data's
    position can be saved (not a DataLoader's). Every rank takes part (each sends its
    generator state) and rank 0 writes. ``metadata``: stored with every checkpoint (the
    app's config)."""

    def __init__(self, policy: Checkpointing, run: RunDirectory | None, where: Path, strategy: SingleProcess,
                 state: TrainState, settings: dict, world: dict, schedule, mid_epoch: bool,
                 session: SessionTime | None = None):
        self.policy, self.run, self.where, self.strategy, self.session = policy, run, where, strategy, session
        self.state, self.settings, self.world, self.schedule = state, settings, world, schedule
        self.mid_epoch = mid_epoch
        self.holds = None if state.epoch == 0 and state.in_epoch is None else state.where()  # the last one's
        self.last = time.monotonic()

    def time_due(self) -> bool:
        """Rank 0's clock (the others learn it from the step's all-reduce)."""
        minutes = self.policy.minutes
        return self.run is not None and minutes > 0 and time.monotonic() - self.last >= 60 * minutes

    def on_step_end(self, loop: Loop, loss: float) -> None:
        if self.mid_epoch and not loop.spent and (loop.flags.signum or loop.flags.due):
            self.checkpoint(loop)

    def on_epoch_end(self, loop: Loop, record: dict) -> None:
        every = self.policy.every
        if (every > 0 and (loop.epoch % every == 0 or loop.final_epoch)) or loop.flags.signum:
            self.checkpoint(loop)

    def checkpoint(self, loop: Loop) -> None:
        state = self.state
        if state.in_epoch is not None:
            state.in_epoch.seconds = loop.mark_epoch_clock()
        state.seconds = loop.seconds
        state.schedule = None if self.schedule is None else self.schedule.state_dict()
        state.plan = None if loop.budget is None else loop.budget.state_dict()
        try:
            json.dumps(state.schedule)
        except (TypeError, ValueError) as err:
            raise VaekitError(f"the learning-rate schedule's state cannot be stored in a checkpoint ({err})") from None
        ranks = self.strategy.rank_states(loop.model)

        def write() -> None:
            checkpoint.save(self.run, loop.model, loop.optimizer, state, self.settings, self.policy.metadata,
                            ranks, None if self.strategy.group is None else self.world)
            if self.session is not None and state.in_epoch is not None:  # at an epoch's end EpochFiles did
                self.session.write()

        self.strategy.together(write, main_only=True)
        self.last, self.holds = time.monotonic(), state.where()

    def kept(self) -> str:
        """Where the last good checkpoint is, in words (rank 0; empty elsewhere)."""
        if self.run is None:
            return ""
        if not self.run.checkpoint_path.is_file():
            return "No checkpoint had been written yet."
        return f"The last good checkpoint is kept in {self.run.checkpoint_path}."


class FinalEvaluation(Callback):
    """After training, the quick evaluation (``FINAL_K`` importance samples, the seed's
    draws) of the validation data (else the training data), in ``evaluation.json``: the
    evaluation shared by every rank, the writing rank 0's. ``loop.evaluation`` holds it."""

    def __init__(self, run: RunDirectory | None, strategy: SingleProcess, source: Source, validation: Source | None,
                 seed: int, binarized: bool):
        self.run, self.strategy, self.seed, self.binarized = run, strategy, seed, binarized
        self.source, self.validation = source, validation

    def on_fit_end(self, loop: Loop) -> None:
        from vaekit.evaluation import evaluate, evaluation_mode

        shown = self.validation or self.source
        x, labels = evaluation_data(shown, self.binarized, self.seed, whole=self.strategy.world > 1)
        if not len(x):
            return
        with evaluation_mode(loop.model):
            result = {"split": "validation" if self.validation is not None else "train", **evaluate(
                loop.model, (x, labels if num_classes(loop.model) else None), importance_samples=FINAL_K,
                seed=self.seed)}
        self.strategy.together(lambda: self.run and self.run.write_evaluation(result), main_only=True)
        loop.evaluation = result


class Figures(Callback):
    """After training (and the final evaluation), the run's figures on rank 0
    (:func:`vaekit.plots.draw_all`), labelled by ``labels``."""

    def __init__(self, run: RunDirectory | None, source: Source, validation: Source | None, seed: int,
                 binarized: bool, labels: FigureLabels, whole: bool):
        self.run, self.source, self.validation, self.seed = run, source, validation, seed
        self.binarized, self.labels, self.whole = binarized, labels, whole

    def on_fit_end(self, loop: Loop) -> None:
        if self.run is None:
            return
        from vaekit import plots
        from vaekit.evaluation import evaluation_mode

        x, labels = evaluation_data(self.validation or self.source, self.binarized, self.seed, whole=self.whole)
        train_x, train_labels = evaluation_data(self.source, False, self.seed, limit=20000, whole=self.whole)
        with evaluation_mode(loop.model):
            plots.draw_all(self.run.path, loop.model, train_x, train_labels, x, labels, self.run.read_metrics(),
                           class_names=self.labels.class_names, feature_names=self.labels.feature_names,
                           data_units=self.labels.data_units, train_total=len(self.source))


def run_writers(run: RunDirectory | None, where: Path, strategy: SingleProcess, state: TrainState, settings: dict,
                world: dict, schedule, source: Source, validation: Source | None, checkpointing: Checkpointing,
                figures: bool | FigureLabels, session: SessionTime | None = None) -> list[Callback]:
    """The run directory's writers, in the order fit calls them after your callbacks
    (``session``: the session's clock, which begin/restore started, last)."""
    from vaekit.arguments import FigureLabels

    seed, binarized = settings["seed"], settings["dynamic_binarization"]
    writers = [EpochFiles(run, strategy, checkpointing.save_best, session),
               Checkpointer(checkpointing, run, where, strategy, state, settings, world, schedule,
                            mid_epoch=source.kind != "loader", session=session),
               FinalEvaluation(run, strategy, source, validation, seed, binarized)]
    if figures:
        labels = figures if isinstance(figures, FigureLabels) else FigureLabels()
        writers.append(Figures(run, source, validation, seed, binarized, labels, whole=strategy.world > 1))
    if session is not None:
        session.strategy = strategy
        writers.append(session)
    return writers


def evaluation_data(source: Source, binarized: bool, seed: int, limit: int | None = None, whole: bool = False):
    """Tensors of ``source`` for the final evaluation and figures (a DataLoader or Dataset
    read once; at most ``limit`` examples); binarised once, from ``seed``, when training
    binarised dynamically. ``whole``: a DataLoader's whole dataset, not the rank's shard."""
    from vaekit.sources import as_tensors

    if whole and source.kind == "loader":
        source = Source(source.loader.dataset, what=source.what)
    x, labels = as_tensors(source)
    if limit is not None and len(x) > limit:
        x, labels = x[:limit], None if labels is None else labels[:limit]
    if binarized:
        x = binarize(x[:] if not torch.is_tensor(x) else x, torch.Generator().manual_seed(seed))
    return x, labels
