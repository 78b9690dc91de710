"""Choices made from the data when the user made none: the likelihood, and a hint to
standardise a table whose columns' scales differ by orders of magnitude."""

from __future__ import annotations

import dataclasses

import torch

from vaekit.app.data.lazy import is_lazy, value_range

AUTO = "auto"  # a config's likelihood before the data decide it
SCALE_RATIO = 100.0  # columns' standard deviations this far apart: suggest --standardize


def choose_likelihood(x) -> tuple[str, str]:
    """(likelihood, why) for data ``x`` as the model will see them: Bernoulli for binary data
    and for values in [0, 1] (grey levels, probabilities), Gaussian for anything else."""
    lo, hi, binary = value_range(x)
    if binary:
        return "bernoulli", "the values are all 0 or 1"
    if lo >= 0 and hi <= 1:
        return "bernoulli", f"the values lie in [0, 1], from {lo:g} to {hi:g}"
    return "gaussian", f"the values span [{lo:.4g}, {hi:.4g}], beyond a Bernoulli's [0, 1]"


def decide_likelihood(config, data) -> tuple:
    """``(config, notes)``: ``config`` with likelihood ``auto`` decided from the training set
    ``data`` (a :class:`~vaekit.app.data.Dataset`), and the lines to tell the user (the
    choice, and :func:`scale_hint`)."""
    notes = []
    if config.likelihood == AUTO:
        name, why = choose_likelihood(data.x)
        config = dataclasses.replace(config, likelihood=name)
        notes.append(f"likelihood: {name}, chosen from the data: {why} (--likelihood NAME to choose another)")
    hint = None if getattr(config, "standardize", False) else scale_hint(data)
    if hint:
        notes.append(hint)
    return config, notes


def scale_hint(data) -> str | None:
    """For a table ([N, D], in memory) whose columns' standard deviations differ by
    :data:`SCALE_RATIO` or more, a line suggesting ``--standardize``: one likelihood scale
    (or a shared σ) then serves columns in very different units, and the widest columns
    dominate the ELBO."""
    x = data.x
    if is_lazy(x) or x.dim() != 2 or x.shape[1] < 2 or x.shape[0] < 2:
        return None
    std = x.double().std(0)
    varying = torch.nonzero(std > 0).flatten()
    if len(varying) < 2:
        return None
    wide, narrow = varying[std[varying].argmax()], varying[std[varying].argmin()]
    ratio = float(std[wide] / std[narrow])
    if ratio < SCALE_RATIO:
        return None
    names = data.features or [f"column {i + 1}" for i in range(x.shape[1])]
    return (f"hint: the columns' scales differ {ratio:,.0f}× (sd {float(std[wide]):.4g} of '{names[wide]}', "
            f"{float(std[narrow]):.4g} of '{names[narrow]}'); --standardize gives every column mean 0 and sd 1 "
            "(evaluate still reports log p(x) in the data's own units)")
