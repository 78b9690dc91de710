"""Learning-rate schedules for :func:`vaekit.fit`, and the time-budget plan.

A vaekit schedule gives, before every optimisation step, a multiplier of each parameter
group's initial learning rate, as a function of how far training has got: the epochs done
(``loop.epochs_done``, fractional inside an epoch) or the fraction of the planned steps done
(``loop.progress``, 0 → 1; the plan is ``steps``, ``epochs`` × steps per epoch, or what a
time budget planned). So the learning rate of every step is a function of counters the
checkpoint holds, and a resumed run takes the same steps as an uninterrupted one. The one
schedule with state of its own (:class:`Plateau`) keeps it in the checkpoint too.

``fit(schedule=...)`` also takes a ``torch.optim.lr_scheduler`` scheduler, or a function
``optimizer -> scheduler``: it is stepped once per epoch (``ReduceLROnPlateau`` with the
validation ELBO), and its ``state_dict()`` goes into the checkpoint.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from vaekit.errors import VaekitError


class Schedule:
    """The learning-rate multiplier for the next step: override :meth:`factor` (and
    :meth:`on_epoch_end`, :meth:`state_dict`, :meth:`load_state_dict` for schedules with
    state). ``describe()`` is what a resume compares."""

    needs_total = False  # True when the factor depends on loop.progress (the planned length)

    def factor(self, loop) -> float:
        return 1.0

    def start(self, optimizer: torch.optim.Optimizer) -> None:
        """Once, when fit has its optimiser (before a checkpoint's state is restored)."""

    def before_step(self, loop) -> None:
        factor = self.factor(loop)
        for group in loop.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    def on_epoch_end(self, loop, record: dict[str, Any]) -> None:
        """After every epoch (after its validation), with its metrics record."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class StepDecay(Schedule):
    """× ``gamma`` every ``every`` epochs (torch's StepLR, counted in epochs done)."""

    def __init__(self, every: float, gamma: float):
        _positive("every", every)
        _fraction("gamma", gamma)
        self.every, self.gamma = every, gamma

    def factor(self, loop) -> float:
        return self.gamma ** math.floor(loop.epochs_done / self.every + 1e-9)


class Exponential(Schedule):
    """× ``gamma`` after every epoch (torch's ExponentialLR)."""

    def __init__(self, gamma: float):
        _fraction("gamma", gamma)
        self.gamma = gamma

    def factor(self, loop) -> float:
        return self.gamma ** math.floor(loop.epochs_done + 1e-9)


class Cosine(Schedule):
    """Half a cosine from 1 to ``final`` over the planned steps (Loshchilov & Hutter 2017,
    without restarts)."""

    needs_total = True

    def __init__(self, final: float = 0.0):
        _fraction("final", final, allow_zero=True)
        self.final = final

    def factor(self, loop) -> float:
        return self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * loop.progress))


class Geometric(Schedule):
    """The initial rate for the first ``hold`` of the planned steps, then a geometric decay
    to ``final`` × it at the end. With ``hold=0.25, final=0.05`` and lr 2e-3 it is the
    recipe that reached Burda et al.'s VAE number in an hour on two cores (issue 14)."""

    needs_total = True

    def __init__(self, hold: float = 0.25, final: float = 0.05):
        if not 0 <= hold < 1:
            raise VaekitError(f"hold must be in [0, 1), got {hold}")
        _fraction("final", final)
        self.hold, self.final = hold, final

    def factor(self, loop) -> float:
        p = loop.progress
        if p <= self.hold:
            return 1.0
        return self.final ** ((p - self.hold) / (1 - self.hold))


# Burda et al. (2016), as their code (experiments.py) runs it: stage i = 0..7 takes 3^i
# passes at lr 1e-4 · round(10^(1 − i/7), 1), i.e. 1e-3, 7.2e-4, 5.2e-4, 3.7e-4, 2.7e-4,
# 1.9e-4, 1.4e-4 and 1e-4; 3280 passes in all. Adam's state carries over between stages.
BURDA_STAGES = 8
BURDA_PASSES = (3**BURDA_STAGES - 1) // 2


class Burda(Schedule):
    """Burda et al.'s schedule, as multipliers of an initial lr of 1e-3: 3^i passes at
    round(10^(1 − i/7), 1) / 10, i = 0..7 (3280 passes); the last rate after that."""

    def factor(self, loop) -> float:
        return burda_factor(loop.epochs_done)


def burda_factor(epochs_done: float) -> float:
    stage, start = 0, 0
    while stage < BURDA_STAGES - 1 and epochs_done >= start + 3**stage - 1e-9:
        start += 3**stage
        stage += 1
    return round(10 ** (1 - stage / 7), 1) / 10


class Plateau(Schedule):
    """× ``factor`` when the validation ELBO (the training ELBO without validation data) has
    not improved by more than ``threshold`` nats for ``patience`` epochs in a row (torch's
    ReduceLROnPlateau in 'max' mode with an absolute threshold), never below ``min_factor``."""

    def __init__(self, patience: int = 5, factor: float = 0.5, threshold: float = 0.0, min_factor: float = 0.0):
        if patience < 0:
            raise VaekitError(f"patience must be 0 or more, got {patience}")
        _fraction("factor", factor)
        self.patience, self.decay, self.threshold, self.min_factor = patience, factor, threshold, min_factor
        self._state = {"best": None, "bad_epochs": 0, "factor": 1.0}

    def factor(self, loop) -> float:
        return self._state["factor"]

    def on_epoch_end(self, loop, record: dict[str, Any]) -> None:
        value = record.get("validation_elbo", record.get("train_elbo"))
        if value is None or value != value:
            return
        state = self._state
        if state["best"] is None or value > state["best"] + self.threshold:
            state["best"], state["bad_epochs"] = value, 0
            return
        state["bad_epochs"] += 1
        if state["bad_epochs"] > self.patience:
            state["factor"] = max(state["factor"] * self.decay, self.min_factor)
            state["bad_epochs"] = 0

    def state_dict(self) -> dict[str, Any]:
        return dict(self._state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state = {"best": state.get("best"), "bad_epochs": int(state.get("bad_epochs", 0)),
                       "factor": float(state.get("factor", 1.0))}


class TorchScheduler(Schedule):
    """A ``torch.optim.lr_scheduler`` scheduler (or a function ``optimizer -> scheduler``),
    stepped after every epoch; ``ReduceLROnPlateau`` gets the negated validation ELBO (the
    training ELBO without validation data), since it minimises by default."""

    def __init__(self, scheduler):
        self._given, self.scheduler = scheduler, None

    def start(self, optimizer: torch.optim.Optimizer) -> None:
        given = self._given
        is_scheduler = isinstance(given, (torch.optim.lr_scheduler.LRScheduler,
                                          torch.optim.lr_scheduler.ReduceLROnPlateau))
        self.scheduler = given if is_scheduler else given(optimizer)
        if self.scheduler.optimizer is not optimizer:
            raise VaekitError("the learning-rate scheduler was built for another optimiser than fit's")

    def before_step(self, loop) -> None:
        pass  # the scheduler sets the rates itself, once per epoch

    def on_epoch_end(self, loop, record: dict[str, Any]) -> None:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            value = record.get("validation_elbo", record.get("train_elbo"))
            self.scheduler.step(-value)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)

    def describe(self) -> str:
        name = type(self.scheduler).__name__ if self.scheduler is not None else "scheduler"
        return f"torch.optim.lr_scheduler.{name}"


def as_schedule(schedule) -> Schedule | None:
    """fit's ``schedule`` argument as a :class:`Schedule` (None: a constant rate)."""
    if schedule is None or isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)) \
            or callable(schedule):
        return TorchScheduler(schedule)
    raise VaekitError(
        "schedule must be a vaekit.schedules.Schedule, a torch.optim.lr_scheduler scheduler or a function "
        f"optimizer -> scheduler; got {type(schedule).__name__}"
    )


# ---------------------------------------------------------------------- time budget
KEPT_PLANS = 20  # the first plan and the latest re-plans are kept in the checkpoint (``count``: all of them)


class TimeBudget:
    """Plans how many steps fit in ``seconds`` of training (steps, validation and
    checkpoints; not the final evaluation), from the measured time per step, and keeps the
    plan honest while training.

    The first plan is made after ``measure`` steps (or at the first epoch's end, if sooner).
    Then every ``check_every`` steps and at every epoch's end, the pace of the last
    ``window`` seconds projects the end; if that misses the budget by more than ``tolerance``
    of it, the rest is planned again. Schedules follow ``progress``, which a re-plan keeps
    continuous: from the step s it happens at, progress goes linearly from its value there
    to 1 at the new last step. The plan (the state) is stored in the checkpoint, so a resumed
    run continues it. Training also stops once the budget is spent, whatever the plan says."""

    def __init__(self, seconds: float, measure: int = 200, check_every: int = 50, window: float = 60.0,
                 tolerance: float = 0.02):
        _positive("time budget (seconds)", seconds)
        self.seconds, self.measure, self.check_every = float(seconds), measure, check_every
        self.window, self.tolerance = window, tolerance
        self.plan: dict[str, Any] | None = None  # total_steps, anchor_step, anchor_progress, budget, replans
        self._pace: list[tuple[int, float]] = []

    def state_dict(self) -> dict[str, Any] | None:
        return None if self.plan is None else dict(self.plan, replans=list(self.plan["replans"]))

    def load_state_dict(self, plan: dict[str, Any] | None) -> None:
        self.plan = None if plan is None else dict(plan, replans=list(plan.get("replans", [])))

    def progress(self, steps: int) -> float:
        plan = self.plan
        if plan is None:
            return 0.0
        a, p = plan["anchor_step"], plan["anchor_progress"]
        span = max(plan["total_steps"] - a, 1)
        return min(1.0, p + (1 - p) * (steps - a) / span)

    @property
    def total_steps(self) -> int | None:
        return None if self.plan is None else self.plan["total_steps"]

    def update(self, steps: int, seconds: float, epoch_end: bool = False) -> None:
        """Called after a step with the steps done and training seconds so far."""
        self._pace.append((steps, seconds))
        cutoff = seconds - self.window
        while len(self._pace) > 2 and self._pace[1][1] <= cutoff:
            self._pace.pop(0)
        if self.plan is None:
            if steps >= self.measure or epoch_end:
                self._replan(steps, seconds, first=True)
            return
        if self.plan.get("budget") != self.seconds:  # a resume changed the budget
            self._replan(steps, seconds)
        elif epoch_end or steps % self.check_every == 0:
            rate = self._seconds_per_step()
            if rate is not None:
                end = seconds + (self.plan["total_steps"] - steps) * rate
                if abs(end - self.seconds) > self.tolerance * self.seconds:
                    self._replan(steps, seconds)

    def done(self, steps: int, seconds: float) -> bool:
        return seconds >= self.seconds or (self.plan is not None and steps >= self.plan["total_steps"])

    def _seconds_per_step(self) -> float | None:
        (s0, t0), (s1, t1) = self._pace[0], self._pace[-1]
        return (t1 - t0) / (s1 - s0) if s1 > s0 and t1 > t0 else None

    def _replan(self, steps: int, seconds: float, first: bool = False) -> None:
        rate = self._seconds_per_step() if not first else (seconds / steps if steps and seconds > 0 else None)
        if rate is None:
            return
        total = steps + max(0, int((self.seconds - seconds) / rate))
        anchor, progress = (0, 0.0) if first else (steps, self.progress(steps))
        record = {"at_step": steps, "at_seconds": round(seconds, 3), "seconds_per_step": rate, "total_steps": total}
        replans = [] if self.plan is None else self.plan["replans"]
        count = 0 if self.plan is None else self.plan.get("count", len(replans))
        kept = [*replans[:1], *replans[1:][-(KEPT_PLANS - 2):], record] if replans else [record]
        self.plan = {"budget": self.seconds, "total_steps": total, "anchor_step": anchor,
                     "anchor_progress": progress, "count": count + 1, "replans": kept}


def parse_duration(text: str) -> float:
    """``"90s"``, ``"45m"``, ``"1.5h"`` or a number of seconds -> seconds."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    value = text.strip().lower()
    scale = units.get(value[-1:])
    number = value[:-1] if scale is not None else value
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == math.inf:
        raise VaekitError(f"a duration must be a positive number with s, m or h (e.g. 60m, 1.5h), got '{text}'")
    return seconds


def _positive(name: str, value: float) -> None:
    if not value > 0 or value == math.inf:
        raise VaekitError(f"{name} must be positive and finite, got {value}")


def _fraction(name: str, value: float, allow_zero: bool = False) -> None:
    if not ((0 <= value <= 1) if allow_zero else (0 < value <= 1)):
        raise VaekitError(f"{name} must be in {'[0, 1]' if allow_zero else '(0, 1]'}, got {value}")

