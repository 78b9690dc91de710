"""Per-feature standardisation, fitted on the training split and recorded in the run.

The model sees z = (x - mean) / std. The run's ``data.json`` stores ``mean`` and ``std`` so
that evaluate, encode and reconstruct apply the very same map to any data, and sample and
reconstruct map their outputs back to the data's own units. Log-likelihoods and ELBOs are
of the standardised data; adding :attr:`Standardization.log_jacobian` (= -Σ log std)
converts one to the original units (change of variables for continuous data).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from vaekit.errors import VaekitError


@dataclass
class Standardization:
    mean: np.ndarray  # float64, shaped like one example
    std: np.ndarray  # float64, positive (a constant feature gets 1, so it maps to 0)

    @classmethod
    def fit(cls, x) -> Standardization:
        """Mean and (population) standard deviation of every feature of ``x``."""
        from vaekit.app.data.lazy import is_lazy

        chunks = x.chunks() if is_lazy(x) else (x[i : i + 65536] for i in range(0, len(x), 65536))
        shift = total = squares = None
        for chunk in chunks:
            c = chunk.double().numpy()
            if shift is None:  # shifting by one example keeps the sums well conditioned
                shift, total, squares = c[0].copy(), np.zeros(c.shape[1:]), np.zeros(c.shape[1:])
            c = c - shift
            total += c.sum(0)
            squares += (c * c).sum(0)
        n = len(x)
        mean = total / n
        var = np.maximum(squares / n - mean * mean, 0.0)
        std = np.sqrt(var)
        scale = np.maximum(np.abs(mean + shift), 1.0)
        std = np.where(std > 1e-12 * scale, std, 1.0)
        return cls(mean + shift, std)

    @property
    def log_jacobian(self) -> float:
        return float(-np.log(self.std).sum())

    def apply(self, data):
        """A :class:`~vaekit.app.data.Dataset` (or tensor) with the map applied."""
        from vaekit.app.data.lazy import is_lazy

        if hasattr(data, "x"):
            return dataclasses.replace(data, x=self.apply(data.x))
        self._check_shape(tuple(data.shape[1:]))
        if is_lazy(data):
            mean, std = self.mean.astype(np.float32), self.std.astype(np.float32)
            return data.map(lambda positions, rows: (rows - mean) / std)
        return ((data.double() - torch.from_numpy(self.mean)) / torch.from_numpy(self.std)).float()

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised values back to the data's units."""
        self._check_shape(tuple(x.shape[1:]))
        return (x.double() * torch.from_numpy(self.std) + torch.from_numpy(self.mean)).float()

    def to_dict(self) -> dict:
        return {"shape": list(self.mean.shape), "mean": self.mean.ravel().tolist(),
                "std": self.std.ravel().tolist(), "log_jacobian": self.log_jacobian}

    @classmethod
    def from_dict(cls, values, source: str) -> Standardization:
        try:
            shape = tuple(int(s) for s in values["shape"])
            mean = np.asarray(values["mean"], np.float64).reshape(shape)
            std = np.asarray(values["std"], np.float64).reshape(shape)
        except (KeyError, TypeError, ValueError):
            raise VaekitError(f"{source}: 'standardization' needs shape, mean and std lists") from None
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise VaekitError(f"{source}: standardization mean/std must be finite, std positive")
        return cls(mean, std)

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        if shape != self.mean.shape:
            raise VaekitError(
                f"data shaped {list(shape)} per example, but the run standardised "
                f"{list(self.mean.shape)}"
            )
