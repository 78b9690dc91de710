"""Keyed noise: a training step's random draws as a function of (seed, step, example),
whatever the number of processes.

Inside :meth:`Stream.step` (the training loop enters it for every step), the standard-normal
noise of vaekit's reparameterised posteriors (:func:`vaekit.model.diagonal_normal`: a VAE's
draws, an IWAE's k samples, both stages of the two-layer model) comes from a generator seeded
by (seed, step). It is drawn for the whole *global* minibatch and each process keeps its own
examples' rows, as dynamic binarisation does, so an example's noise is the same whichever rank
holds it: a stochastic VAE trained on 2 ranks takes the steps one process takes.

What this does not cover draws from torch's global generator as before, each rank its own
stream (seeded from the run's seed and the rank, checkpointed): a user's objective or
distribution that draws on its own, any draw not shaped ``[..., examples, L]``, and every draw
of an objective run through ``torch.compile`` (``compile = "on"``; a generator's draw cannot be
traced, and splitting the graph there cost the whole of compile's gain).

Runs started before keyed noise existed (their checkpoints record no ``noise`` setting) keep
drawing from torch's global generator, so they resume bit for bit.
"""

from __future__ import annotations

import threading

import torch

from vaekit.devices import mixed_seed

KEYED, GLOBAL = "keyed", "global"  # the two kinds a checkpoint records (absent: GLOBAL)
_TRAINING, _VALIDATION = 0x6E6F697365, 0x76616C6964  # stream names mixed into the seed
_MASK = (1 << 64) - 1
_ALL = slice(None)
_active = threading.local()


class Stream:
    """The keyed noise of one run: :meth:`step` for a training step, :meth:`batch` for a
    validation minibatch (the same draws every epoch)."""

    def __init__(self, seed: int, device: torch.device):
        self.training, self.validation = mixed_seed(seed, _TRAINING), mixed_seed(seed, _VALIDATION)
        self.generator = torch.Generator(device=device)

    def step(self, step: int, size: int, rows: slice):
        """Draws of training step ``step`` (counted over the run) for a global minibatch of
        ``size`` examples of which this process holds ``rows``."""
        return self._keyed(_mix(self.training, step), size, rows)

    def batch(self, index: int, size: int):
        """Draws of validation minibatch ``index`` (all its ``size`` rows held here)."""
        return self._keyed(_mix(self.validation, index), size, slice(None))

    def _keyed(self, seed: int, size: int, rows: slice) -> Stream:
        self.generator.manual_seed(seed)
        self._draw = (self.generator, size, rows, size if rows == _ALL else len(range(size)[rows]))
        return self

    # a plain context manager, not @contextmanager: this runs at every step (docs/performance.md)
    def __enter__(self) -> None:
        _active.draw = self._draw

    def __exit__(self, *exc) -> None:
        _active.draw = None


def standard_normal(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """N(0, 1) noise of ``shape`` ``[..., examples, L]`` from the active keyed stream (drawn
    for the global minibatch, this process's rows kept); None outside one, or for a draw of
    another shape (the caller then draws from torch's generator)."""
    if torch.compiler.is_compiling():  # torch's generator, which the compiled graph draws from itself
        return None
    draw = getattr(_active, "draw", None)
    if draw is None or len(shape) < 2:
        return None
    generator, size, rows, local = draw
    if shape[-2] != local:
        return None
    full = torch.randn((*shape[:-2], size, shape[-1]), generator=generator, dtype=dtype, device=generator.device)
    return (full if rows == _ALL else full[..., rows, :]).to(device)


def _mix(base: int, counter: int) -> int:
    """SplitMix64 of ``base`` and ``counter``: well separated seeds for consecutive counters,
    in a microsecond (a SeedSequence per step would cost more than a small step's maths)."""
    z = (base + (counter + 1) * 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return (z ^ (z >> 31)) & ((1 << 63) - 1)
