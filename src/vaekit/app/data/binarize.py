"""Binarisation protocols behind published MNIST numbers.

``dynamic``: a fresh Bernoulli draw of every pixel at every training minibatch
(:func:`vaekit.sources.binarize`); evaluation sets are drawn once with a fixed seed.
``static``: one fixed draw for every split. ``threshold:L``: x > L. ``none``: as given.

Fixed draws are a pure function of (seed, split, example position, pixel): a uniform
number from the SplitMix64 hash of a counter, compared with the grey level. The draw is
therefore "stored with the run" by its seed and protocol (in ``config.json``), identical on
any platform and torch/numpy version, identical whether the data sit in memory or are read
in batches from disk, and cheap to recompute; ``data.json`` also keeps a fingerprint of
each fixed draw so that evaluation can prove it scores the very same binary images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
import torch

from vaekit.app.config import Binarization

ALGORITHM = "splitmix64-v1"
_KIND = {"static": 0, "dynamic": 1}
_SPLIT = {"train": 0, "validation": 1, "test": 2, "all": 3}
_BLOCK = 4096  # rows per block when drawing a whole tensor (bounds the uint64 temporaries)


def binarize_once(data, mode: Binarization, seed: int, split: str, positions: np.ndarray | None = None):
    """``data`` with the protocol's fixed draw for ``split`` applied (input untouched).

    Static and threshold binarisation are applied to the loaded train/test sets *before*
    the validation split (``split`` is then ``"train"`` or ``"test"``), so an example keeps
    one binary image whichever split it lands in. Dynamic binarisation leaves the training
    set alone and draws the evaluation sets once. ``positions``: the rows' positions in the
    loaded set (default 0..N-1); data read lazily know their own.
    """
    from vaekit.app.data.lazy import is_lazy

    kind, level = mode
    if kind == "none" or (kind == "dynamic" and split == "train"):
        return data
    if kind == "threshold":
        if is_lazy(data.x):
            x = data.x.map(lambda positions, rows: (rows > level).astype(np.float32))
        else:
            x = (data.x > level).to(data.x.dtype)
        return dataclasses.replace(data, x=x)
    _check_probabilities(data.x, data.name)
    stream = 4 * _KIND[kind] + _SPLIT[split]
    if is_lazy(data.x):
        x = data.x.map(lambda positions, rows: bernoulli_draw(rows, positions, seed, stream))
    else:
        array = data.x.numpy()
        where = np.arange(len(array)) if positions is None else np.asarray(positions)
        out = np.empty(array.shape, np.float32)
        for start in range(0, len(array), _BLOCK):
            rows = np.arange(start, min(start + _BLOCK, len(array)))
            out[rows] = bernoulli_draw(array[rows], where[rows], seed, stream)
        x = torch.from_numpy(out)
    return dataclasses.replace(data, x=x)


def bernoulli_draw(p: np.ndarray, positions: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """Binary float32 rows with P(1) = ``p`` (to 2⁻²⁴), a pure function of each value's
    (seed, stream, row position, index within the row)."""
    d = math.prod(p.shape[1:])
    salt = _splitmix64(np.array([(seed * 8 + stream) % 2**64], np.uint64))[0]
    with np.errstate(over="ignore"):
        counter = positions.astype(np.uint64)[:, None] * np.uint64(d) + np.arange(d, dtype=np.uint64)
        uniform = (_splitmix64(counter + salt) >> np.uint64(40)).astype(np.float32) * np.float32(2**-24)
    return (uniform < p.reshape(len(p), d)).astype(np.float32).reshape(p.shape)


def fingerprint(x) -> str | None:
    """sha256 of the packed bits of a binary tensor (``None`` for data read lazily)."""
    from vaekit.app.data.lazy import is_lazy

    if is_lazy(x):
        return None
    bits = np.packbits(x.numpy().reshape(len(x), -1) != 0, axis=1)
    return hashlib.sha256(np.ascontiguousarray(bits).tobytes()).hexdigest()


def _splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _check_probabilities(x, name: str) -> None:
    from vaekit.app.data.lazy import value_range
    from vaekit.errors import VaekitError

    lo, hi, _ = value_range(x)
    if lo < 0 or hi > 1:
        raise VaekitError(
            f"{name}: Bernoulli binarisation needs values in [0, 1], found [{lo:g}, {hi:g}]"
        )
