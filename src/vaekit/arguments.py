"""The groups of :func:`vaekit.fit`'s arguments that travel together: how long to train
(:class:`Budget`), when to checkpoint (:class:`Checkpointing`), what guards a step
(:class:`Guards`) and what labels the figures (:class:`FigureLabels`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vaekit.errors import VaekitError


@dataclass(frozen=True)
class Budget:
    """How long to train: ``epochs`` passes, ``steps`` optimisation steps (the last epoch cut
    short) or ``time`` seconds of training (steps, validation and checkpoints; the steps are
    planned from the measured time per step and re-planned if the pace changes, see
    :class:`vaekit.schedules.TimeBudget`). ``epochs`` with ``steps`` or ``time`` is a further
    limit. Nothing given: 10 epochs."""

    epochs: int | None = None
    steps: int | None = None
    time: float | None = None

    @classmethod
    def of(cls, epochs: int | None, budget: Budget | None) -> Budget:
        """fit's budget from its ``epochs`` (a convenience) or ``budget``, checked."""
        if budget is not None and epochs is not None and epochs != budget.epochs:
            raise VaekitError("give epochs or budget=Budget(epochs=...), not both")
        budget = cls(epochs=epochs) if budget is None else budget
        if budget.epochs is None and budget.steps is None and budget.time is None:
            budget = cls(epochs=10)
        if budget.steps is not None and budget.time is not None:
            raise VaekitError("give steps or time, not both: each is a budget for the whole run")
        for name, value in (("epochs", budget.epochs), ("steps", budget.steps)):
            if value is not None and value < 0:
                raise VaekitError(f"{name} must be 0 or more, got {value}")
        return budget


@dataclass(frozen=True)
class Checkpointing:
    """When a run directory's checkpoint is written: every ``every`` epochs (0: only on a
    signal) and every ``minutes`` between steps (0: never by the clock); ``save_best`` keeps
    the best validation epoch's weights; ``metadata`` is stored with every checkpoint (the
    app's config, to compare on resume)."""

    every: int = 1
    minutes: float = 10.0
    save_best: bool = True
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class Guards:
    """Against a step going wrong: ``grad_clip`` (> 0) clips the gradient's norm; a step
    whose loss or gradient is not finite makes no update and is counted, and after
    ``max_bad_steps`` in a row training stops with a clear error."""

    grad_clip: float = 0.0
    max_bad_steps: int = 20


@dataclass(frozen=True)
class FigureLabels:
    """What labels a run's figures: ``class_names`` (label i is ``class_names[i]``),
    ``feature_names`` (the columns of [N, D] data) and ``data_units`` (maps [N, D] values back
    to the data's units, e.g. undoing a standardisation)."""

    class_names: list[str] | None = None
    feature_names: list[str] | None = None
    data_units: Callable[[torch.Tensor], torch.Tensor] | None = None
