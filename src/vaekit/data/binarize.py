"""Binarisation protocols behind published MNIST numbers.

``dynamic``: a fresh Bernoulli draw of every pixel at every training minibatch
(:func:`binarize_batch`); evaluation sets are drawn once with a fixed seed.
``static``: one fixed draw for every split. ``threshold:L``: x > L. ``none``: as given.
"""

from __future__ import annotations

import torch

from vaekit.config import parse_binarize

# Offsets keep the fixed evaluation draws of different splits independent of each other
# and of the training-order generator, while staying reproducible from the run's seed.
_SPLIT_OFFSET = {"train": 0, "validation": 1, "test": 2, "all": 3}


def binarize_once(data, mode: str, seed: int, split: str):
    """``data`` with the protocol's fixed draw for ``split`` applied (input untouched).

    Static and threshold binarisation are applied to the loaded train/test sets *before*
    the validation split (``split`` is then ``"train"`` or ``"test"``), so an example keeps
    one binary image whichever split it lands in. Dynamic binarisation leaves the training
    set alone and draws the evaluation sets once.
    """
    from vaekit.data import Dataset

    kind, level = parse_binarize(mode)
    if kind == "none":
        return data
    if kind == "threshold":
        return Dataset((data.x > level).to(data.x.dtype), data.labels, data.name)
    if kind == "dynamic" and split == "train":
        return data
    _check_probabilities(data.x, data.name)
    offset = (0 if kind == "static" else 1000) + _SPLIT_OFFSET[split]
    generator = torch.Generator().manual_seed(seed * 7919 + offset)
    return Dataset(torch.bernoulli(data.x, generator=generator), data.labels, data.name)


def binarize_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Dynamic binarisation of one training minibatch."""
    return torch.bernoulli(x, generator=generator)


def _check_probabilities(x: torch.Tensor, name: str) -> None:
    from vaekit.errors import VaekitError

    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise VaekitError(
            f"{name}: Bernoulli binarisation needs values in [0, 1], found [{lo:g}, {hi:g}]"
        )
