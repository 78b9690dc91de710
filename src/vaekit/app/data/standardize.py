"""Per-feature standardisation, fitted on the training split and recorded in the run.

The model sees z = (x - mean) / std. The run's ``data.json`` stores ``mean`` and ``std`` so
that evaluate, encode and reconstruct apply the very same map to any data, and sample and
reconstruct map their outputs back to the data's own units. The model's log-likelihoods
and ELBOs are of the standardised data; adding :attr:`Standardization.log_jacobian`
(= -Σ log std) converts one to the original units (change of variables for continuous
data), which :func:`in_data_units` does for an evaluation's results.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

import numpy as np
import torch

from vaekit.errors import VaekitError

# An evaluation's log densities of x (per example, in nats): the change of variables shifts
# each by the log-Jacobian. The KL, the gaps and every standard error are differences or
# spreads, and do not change.
DENSITY_KEYS = ("elbo", "reconstruction", "log_likelihood", "iwae_bound", "elbo_local")
STANDARDIZED = "_standardized"  # the suffix of the figures of the standardised data


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


def in_data_units(result: dict, st: Standardization) -> dict:
    """An evaluation summary (:func:`vaekit.evaluation.summarise`) of standardised data with
    its log densities in the data's own units: ``elbo``, ``reconstruction``,
    ``log_likelihood``, ``iwae_bound``, ``elbo_local``, ``nll``, ``bits_per_dim`` and the
    curve's estimates are shifted by the log-Jacobian (``nll`` and bits the other way); the
    figures of the standardised data stay as ``KEY_standardized``, and ``log_jacobian`` and
    ``units`` say what was done."""
    out = dict(result)
    jacobian = st.log_jacobian
    for key in (*DENSITY_KEYS, "nll", "bits_per_dim"):
        if out.get(key) is not None:
            out[key + STANDARDIZED] = out[key]
    for key in DENSITY_KEYS:
        if out.get(key) is not None:
            out[key] = out[key] + jacobian
    if out.get("log_likelihood") is not None:
        out["nll"] = -out["log_likelihood"]
        if out.get("bits_per_dim") is not None:
            d = st.mean.size
            out["bits_per_dim"] = out["nll"] / (d * np.log(2))
            out["bits_per_dim_note"] = (
                f"{out.get('bits_per_dim_note') or ''}; in the data's own units (the standardisation's "
                "log-Jacobian applied)").lstrip("; ")
    if out.get("curve"):
        out["curve"] = [{**point, "estimate": point["estimate"] + jacobian,
                         "estimate" + STANDARDIZED: point["estimate"]} for point in out["curve"]]
    out["log_jacobian"] = jacobian
    out["units"] = "data"
    return out


def scores_in_data_units(scores: dict, st: Standardization) -> dict:
    """Per-example scores (:func:`vaekit.evaluation.per_example`) with the same shift as
    :func:`in_data_units`: every log density of x (the ELBO and its reconstruction term, the
    log-likelihood, the IWAE bounds), and the ELBO and log-likelihood of the standardised data
    kept as ``elbo_standardized`` and ``log_likelihood_standardized``."""
    jacobian = st.log_jacobian
    out = dict(scores)
    for key, value in scores.items():
        if key in DENSITY_KEYS or (key.startswith("iwae_k") and key[6:].isdigit()):
            out[key] = value + jacobian
    for key in ("elbo", "log_likelihood"):
        if key in scores:
            out[key + STANDARDIZED] = scores[key]
    return out


def units_note(st: Standardization) -> str:
    """The line an evaluation of standardised data prints."""
    return (f"log-likelihood, ELBO and bits/dim are of the data in their own units: the standardisation's "
            f"log-Jacobian (-Σ log sd = {st.log_jacobian:.6g} nats) is added to the model's figures for the "
            "standardised data, which --json also gives as *_standardized")


def to_data_units(result: dict, scores: dict, dataset) -> tuple[dict, dict, str | None]:
    """``vaekit evaluate``'s (summary, per-example scores, note to print) for ``dataset``: in
    the data's own units where the run standardised them (:func:`in_data_units`), as they are
    (and no note) otherwise."""
    st = getattr(dataset, "standardization", None)
    if st is None:
        return result, scores, None
    return in_data_units(result, st), scores_in_data_units(scores, st), units_note(st)


def data_units_callback(train_set, quiet: bool = False) -> list:
    """For a standardised run, a training callback that puts the quick evaluation
    (``evaluation.json``, and what later callbacks log and print) in the data's own units;
    ``[]`` otherwise. It must come before the callbacks that read the evaluation."""
    st = getattr(train_set, "standardization", None)
    if st is None:
        return []
    from vaekit.training import Callback  # the training loop only when training

    class DataUnits(Callback):
        def on_results(self, loop, evaluation: dict | None) -> None:
            if not evaluation or evaluation.get("units") == "data":
                return
            evaluation.update(in_data_units(evaluation, st))  # in place: later callbacks see it
            if loop.out is not None:
                loop.out.write_evaluation(evaluation)
                if not quiet:
                    print(f"{loop.out.evaluation_path().name}: {units_note(st)} (the per-epoch ELBOs in "
                          "metrics.jsonl are of the standardised data)", file=sys.stderr)

    return [DataUnits()]
