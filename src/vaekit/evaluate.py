"""Evaluation: per-example scores of a trained model on a dataset, and their summaries.

All values are per-example, in nats; summaries average over examples and carry the
standard error of that average.
"""

from __future__ import annotations

import math

import torch

from vaekit._callable import make_module_callable
from vaekit.model import AE
from vaekit.objectives import elbo_terms


@torch.no_grad()
def per_example(
    model, x: torch.Tensor, samples: int = 1, kl: str = "analytic", batch_size: int = 1000,
    labels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``elbo``, ``reconstruction`` and ``kl`` for every row of ``x``, each shaped [N]
    (``labels``: the class of every row, for a conditional model)."""
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(x), batch_size):
        y = None if labels is None else labels[start : start + batch_size]
        terms = elbo_terms(model, x[start : start + batch_size], samples, kl, y)
        for key, value in terms.items():
            parts.setdefault(key, []).append(value)
    return {key: torch.cat(values) for key, values in parts.items()}


def evaluate(
    model, x: torch.Tensor, samples: int = 1, kl: str = "analytic", batch_size: int = 1000,
    labels: torch.Tensor | None = None,
) -> dict:
    """Summary of :func:`per_example`: ``n`` and the per-example mean of each term; for a
    discrete likelihood over grey levels (the discretised logistic) also ``bits_per_dim``,
    −ELBO / (D ln 2), the unit 8-bit image models are compared in."""
    scores = per_example(model, x, samples, kl, batch_size, labels)
    result: dict = {"n": len(x)}
    for key, value in scores.items():
        result[key] = float(value.double().mean())
    if isinstance(model, AE):
        # An autoencoder has no ELBO: its reconstruction term is all there is.
        result.update({"elbo": None, "kl": None})
    elif getattr(model.likelihood, "params_per_dim", 1) == 2:
        result["bits_per_dim"] = -result["elbo"] / (x[0].numel() * math.log(2))
    return result


make_module_callable(__name__, evaluate)  # vaekit.evaluate(model, x) calls evaluate()
