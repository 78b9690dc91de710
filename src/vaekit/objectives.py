"""Objectives and estimators: plain functions of a model and a batch.

Conventions (the ones every number vaekit prints follows): log-likelihoods are summed over
data dimensions, KL over latent dimensions, and each function returns one value per
example, in nats. Averaging over examples is the caller's job. No term carries a hidden
weight: β is explicit and defaults to 1.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Distribution
from torch.distributions import kl_divergence as _analytic_kl

from vaekit.model import AE


def kl_divergence(
    q: Distribution, p: Distribution, estimator: str = "analytic", z: torch.Tensor | None = None
) -> torch.Tensor:
    """KL(q ‖ p) per example: closed form, or the Monte-Carlo mean of log q(z) − log p(z)
    over the samples ``z`` ([M, B, L], drawn from q; one fresh draw if omitted)."""
    if estimator == "analytic":
        return _analytic_kl(q, p)
    if estimator == "mc":
        if z is None:
            z = q.rsample((1,))
        return (q.log_prob(z) - p.log_prob(z)).mean(0)
    raise ValueError(f"unknown KL estimator {estimator!r}")


def elbo_terms(
    model, x: torch.Tensor, samples: int = 1, kl: str = "analytic"
) -> dict[str, torch.Tensor]:
    """ELBO(x) = E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)), with M = ``samples`` reparameterised
    draws z = μ + σ ⊙ ε per example. Returns per-example ``elbo``, ``reconstruction``, ``kl``.

    For the autoencoder the 'reconstruction' is log p(x | z = f(x)) and there is no KL.
    """
    q = model.encode(x)
    if isinstance(model, AE):
        rec = model.decode(q.mean).log_prob(x)
        return {"elbo": rec, "reconstruction": rec, "kl": torch.zeros_like(rec)}
    z = q.rsample((samples,))  # [M, B, L]
    rec = model.decode(z).log_prob(x).mean(0)
    kl_term = kl_divergence(q, model.prior, kl, z)
    return {"elbo": rec - kl_term, "reconstruction": rec, "kl": kl_term}


def elbo(model, x: torch.Tensor, samples: int = 1, kl: str = "analytic") -> torch.Tensor:
    """Per-example ELBO estimate, shape [B], in nats (unbiased for any M ≥ 1)."""
    return elbo_terms(model, x, samples, kl)["elbo"]


def training_loss(
    model, x: torch.Tensor, config
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The scalar to minimise for one minibatch, and the per-example terms it came from.

    Loss = −mean_x [reconstruction − β·KL]; with β = 1 this is exactly −ELBO.
    """
    terms = elbo_terms(model, x, config.samples, config.kl)
    objective = terms["reconstruction"] - config.beta * terms["kl"]
    return -objective.mean(), terms


def log_importance_weights(model, x: torch.Tensor, k: int) -> torch.Tensor:
    """log w_k = log p(x, z_k) − log q(z_k|x) for k draws z_k ~ q(z|x); shape [k, B].

    Generic over models: it needs only ``encode``, ``decode`` and ``prior`` whose
    ``log_prob`` gives one value per example, so hierarchical models plug in by returning
    joint distributions over their stacked latents.
    """
    q = model.encode(x)
    z = q.rsample((k,))
    return model.decode(z).log_prob(x) + model.prior.log_prob(z) - q.log_prob(z)


def iwae_bound(model, x: torch.Tensor, k: int) -> torch.Tensor:
    """The importance-weighted bound L_k = E[log (1/k) Σ_k w_k] (Burda et al. 2016), one
    sample of it per example, shape [B]. L_1 is the ELBO; L_k rises towards log p(x)."""
    log_w = log_importance_weights(model, x, k)
    return torch.logsumexp(log_w, dim=0) - math.log(k)
