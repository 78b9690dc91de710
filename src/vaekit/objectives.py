"""Objectives and estimators: plain functions of a model and a batch.

Conventions (the ones every number vaekit prints follows): log-likelihoods are summed over
data dimensions, KL over latent dimensions, and each function returns one value per
example, in nats. Averaging over examples is the caller's job. No term carries a hidden
weight: β is explicit and defaults to 1.

Every estimator holds for any prior p(z) and posterior q(z|x) given as ``torch.distributions``
(mixtures, flows, the two-layer model's joint laws): the posterior is scored only at the draws
it just made (:func:`vaekit.estimators.log_prob_at_own_sample`), so a flow without an inverse
(planar, Sylvester) works, and the KL is in closed form exactly where torch registers one
(``kl="auto"``, the default; ``"analytic"`` insists on it, ``"mc"`` never uses it).

Every estimator takes an optional ``labels`` ([B] class indices) that a conditional model
(the CVAE) needs; unconditional models are called without it.

Training objectives are functions ``(model, batch) -> (loss, terms)``: ``loss`` the scalar
to minimise, ``terms`` per-example tensors to report (``elbo``, ``reconstruction``, ``kl``, and
``objective``: what the loss averages, e.g. the IWAE bound L_k; logged as ``train_objective``).
``batch`` is a :class:`Batch`. :func:`elbo_objective` (β, KL warm-up, free bits) and
:func:`iwae_objective` are the built-in ones; bind their options with ``functools.partial``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.distributions import Distribution, Independent
from torch.distributions import kl_divergence as _analytic_kl

from vaekit.errors import VaekitError
from vaekit.estimators import log_prob_at_own_sample
from vaekit.model import PointMass, _factorises, labelled


@dataclass
class Batch:
    """One minibatch as the training loop hands it to an objective: the data ``x`` (on the
    model's device, natural shape), the class labels ``y`` ([B] indices, or None) and how
    far training has got, ``epochs_done`` (e.g. 2.5 in the middle of the third epoch; what
    KL warm-up follows)."""

    x: torch.Tensor
    y: torch.Tensor | None = None
    epochs_done: float = 0.0


def kl_divergence(
    q: Distribution, p: Distribution, estimator: str = "analytic", z: torch.Tensor | None = None,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(q ‖ p) per example: closed form (``analytic``), or the Monte-Carlo mean of
    log q(z) − log p(z) over the samples ``z`` (``mc``; [M, B, L] drawn from q, one fresh draw
    if omitted); ``auto``: closed form where torch has one, else Monte Carlo. ``log_q``: the
    draws' log q(z) when known (:func:`vaekit.estimators.log_prob_at_own_sample`), else
    ``q.log_prob(z)`` (valid for a flow only at its own last draw)."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}")
    if estimator != "mc":
        try:
            return _analytic_kl(q, p)
        except NotImplementedError:
            if estimator == "analytic":
                raise VaekitError(
                    f"no closed-form KL between {type(q).__name__} and {type(p).__name__} "
                    "(e.g. the two-layer model's hierarchical prior, a mixture prior or a flow "
                    "posterior); use the 'mc' or 'auto' estimator"
                ) from None
    if z is None:
        z, log_q = log_prob_at_own_sample(q, (1,))
    elif log_q is None:
        log_q = q.log_prob(z)
    return (log_q - p.log_prob(z)).mean(0)


KL_ESTIMATORS = ("auto", "analytic", "mc")


def kl_per_dimension(
    q: Distribution, p: Distribution, estimator: str = "analytic", z: torch.Tensor | None = None
) -> torch.Tensor:
    """KL(q ‖ p) split over latent coordinates, [B, L], summing to :func:`kl_divergence`.

    Closed form for diagonal Normals; otherwise the Monte-Carlo mean over ``z`` of the
    per-coordinate log q − log p (for the two-layer model each coordinate's conditional
    density given the sample, as Kingma et al. 2016 do per group). Defined only where q and
    p factorise over coordinates (diagonal laws, the two-layer model with Gaussian stages):
    a mixture prior, a full covariance or a flow has no per-coordinate KL, and this refuses."""
    for dist in (q, p):
        if not (hasattr(dist, "log_prob_dims") or _factorises(dist)):
            raise VaekitError(
                f"the KL per latent coordinate is undefined for a {type(dist).__name__} (it does "
                "not factorise over coordinates): free bits needs a diagonal posterior and a "
                "standard (or two-layer Gaussian) prior")
    if estimator in ("analytic", "auto") and isinstance(q, Independent) and isinstance(p, Independent):
        try:
            return _analytic_kl(q.base_dist, p.base_dist)
        except NotImplementedError:
            if estimator == "analytic":
                raise
    elif estimator == "analytic":
        raise VaekitError(
            f"no closed-form per-coordinate KL between {type(q).__name__} and "
            f"{type(p).__name__}; use the 'mc' estimator"
        )
    if z is None:
        z = q.rsample((1,))
    return (_log_prob_dims(q, z) - _log_prob_dims(p, z)).mean(0)


def _log_prob_dims(dist: Distribution, z: torch.Tensor) -> torch.Tensor:
    if hasattr(dist, "log_prob_dims"):
        return dist.log_prob_dims(z)
    return dist.base_dist.log_prob(z)


def _elbo_parts(model, x, samples, kl, labels):
    """(per-example terms, q, z): what :func:`elbo_terms` returns, plus the posterior and
    its draws for objectives that need more than the totals (free bits)."""
    q = model.encode(x, *labelled(labels))
    if isinstance(q, PointMass):  # the autoencoder: no posterior to sample, no KL
        rec = model.decode(q.mean, *labelled(labels)).log_prob(x)
        return {"elbo": rec, "reconstruction": rec, "kl": torch.zeros_like(rec)}, q, None
    prior = model.prior
    closed = None
    if kl != "mc":
        try:
            closed = _analytic_kl(q, prior)
        except NotImplementedError:
            if kl == "analytic":
                kl_divergence(q, prior, kl)  # raises the one-line error
    if closed is None or hasattr(q, "rsample_and_log_prob"):
        z, log_q = log_prob_at_own_sample(q, (samples,))  # [M, B, L], [M, B]
    else:
        z, log_q = q.rsample((samples,)), None  # the closed-form path: no density needed
    rec = model.decode(z, *labelled(labels)).log_prob(x).mean(0)
    kl_term = closed if closed is not None else (log_q - prior.log_prob(z)).mean(0)
    return {"elbo": rec - kl_term, "reconstruction": rec, "kl": kl_term}, q, z


def elbo_terms(
    model, x: torch.Tensor, samples: int = 1, kl: str = "auto",
    labels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """ELBO(x) = E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)), with M = ``samples`` reparameterised
    draws z ~ q(z|x) per example. Returns per-example ``elbo``, ``reconstruction``, ``kl``.
    ``kl``: ``auto`` (closed form where torch registers one, else the Monte-Carlo mean of
    log q − log p at the same draws), ``analytic`` (closed form or a one-line error), ``mc``.

    For the autoencoder the 'reconstruction' is log p(x | z = f(x)) and there is no KL.
    ``x`` may be a :class:`Batch` (its labels are then used), so ``elbo`` and ``elbo_terms``
    also serve as training objectives: ``fit(..., objective=vaekit.objectives.elbo)``.
    """
    if isinstance(x, Batch):
        x, labels = x.x, x.y if labels is None else labels
    return _elbo_parts(model, x, samples, kl, labels)[0]


def elbo(
    model, x: torch.Tensor, samples: int = 1, kl: str = "auto",
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-example ELBO estimate, shape [B], in nats (unbiased for any M ≥ 1)."""
    return elbo_terms(model, x, samples, kl, labels)["elbo"]


def kl_weight(beta: float = 1.0, warmup: float = 0.0,
              epochs_done: float | torch.Tensor | None = None) -> float | torch.Tensor:
    """The weight on the KL term while training: β times the linear warm-up factor
    min(1, t / warmup) after t = ``epochs_done`` epochs. Without warm-up (or without a
    training position: evaluation) it is β. A 0-d tensor ``epochs_done`` (as a compiled
    objective gets it, :class:`vaekit.devices.CompiledObjective`) gives a 0-d tensor."""
    if epochs_done is None or not warmup:
        return beta
    if torch.is_tensor(epochs_done):
        return beta * (epochs_done / warmup).clamp(max=1.0)
    return beta * min(1.0, epochs_done / warmup)


def free_bits_kl(kl_dims: torch.Tensor, floor: float) -> torch.Tensor:
    """Σ_j max(λ, mean_batch KL_j) (Kingma et al. 2016): a latent coordinate whose KL,
    averaged over the minibatch, is under λ nats costs λ and gets no gradient pushing its
    KL lower. ``kl_dims`` is [B, L]; the result is one number for the minibatch."""
    return kl_dims.mean(0).clamp(min=floor).sum()


def elbo_objective(
    model, batch: Batch, *, samples: int = 1, kl: str = "auto", beta: float = 1.0,
    warmup: float = 0.0, free_bits: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The ELBO as a training objective: loss = −mean_x [reconstruction − w·KL], with
    w = :func:`kl_weight` (β, linear warm-up over ``warmup`` epochs); with ``free_bits`` λ
    the KL part is :func:`free_bits_kl`. The reported terms are those of the true ELBO
    (β = 1, no floor)."""
    weight = kl_weight(beta, warmup, batch.epochs_done)
    terms, q, z = _elbo_parts(model, batch.x, samples, kl, batch.y)
    if free_bits and z is not None:
        kl_part = free_bits_kl(kl_per_dimension(q, model.prior, kl, z), free_bits)
        return -(terms["reconstruction"].mean() - weight * kl_part), terms
    objective = terms["reconstruction"] - weight * terms["kl"]
    return -objective.mean(), {**terms, "objective": objective}


def iwae_objective(
    model, batch: Batch, *, k: int = 50, beta: float = 1.0, warmup: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The importance-weighted bound L_k as a training objective: loss = −mean_x L_k with
    log w_k = log p(x|z_k) − w·(log q(z_k|x) − log p(z_k)) (w = 1: Burda's bound). The
    reported terms are the Monte-Carlo ELBO of the same k draws (``train_elbo`` stays the
    ELBO) and the bound itself, ``objective`` (``train_objective``)."""
    weight = kl_weight(beta, warmup, batch.epochs_done)
    rec, log_p_over_q = _drawn_weight_terms(model, batch.x, k, batch.y)
    log_ratio = -log_p_over_q  # log q − log p: negating is exact, so the numbers are as before
    log_w = rec - weight * log_ratio
    bound = torch.logsumexp(log_w, dim=0) - math.log(k)
    terms = {"elbo": (rec - log_ratio).mean(0), "reconstruction": rec.mean(0), "kl": log_ratio.mean(0),
             "objective": bound}
    return -bound.mean(), terms


def weight_terms(model, q: Distribution, x: torch.Tensor, z: torch.Tensor, y: torch.Tensor | None = None,
                 *, log_q: torch.Tensor | None = None, prior: Distribution | None = None):
    """(log p(x|z), log p(z) − log q(z|x)) for draws ``z`` [k, B, ...]: each [k, B]; their
    sum is the log importance weight. Only ``decode``, ``prior`` and ``q.log_prob`` are used,
    so models with stacked latents plug in unchanged. ``log_q``: the draws' log q(z) when
    known (a flow's density is defined at its own draws only); ``prior``: p(z) when already
    built (a VampPrior costs an encoder pass per call)."""
    if log_q is None:
        log_q = q.log_prob(z)
    if prior is None:
        prior = model.prior
    return model.decode(z, *labelled(y)).log_prob(x), prior.log_prob(z) - log_q


def _drawn_weight_terms(model, x, k, labels):
    """:func:`weight_terms` at k draws z_k ~ q(z|x), scored at q's own draws."""
    q = model.encode(x, *labelled(labels))
    z, log_q = log_prob_at_own_sample(q, (k,))
    return weight_terms(model, q, x, z, labels, log_q=log_q)


def log_importance_weights(
    model, x: torch.Tensor, k: int, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """log w_k = log p(x, z_k) − log q(z_k|x) for k draws z_k ~ q(z|x); shape [k, B].

    Generic over models: it needs only ``encode``, ``decode`` and ``prior`` whose
    ``log_prob`` gives one value per example, so hierarchical models plug in by returning
    joint distributions over their stacked latents. For a conditional model (given
    ``labels``) it is log p(x, z_k | y) − log q(z_k | x, y): the weights of log p(x|y).
    """
    rec, log_p_over_q = _drawn_weight_terms(model, x, k, labels)
    return rec + log_p_over_q


def iwae_bound(
    model, x: torch.Tensor, k: int, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """The importance-weighted bound L_k = E[log (1/k) Σ_k w_k] (Burda et al. 2016), one
    sample of it per example, shape [B]. L_1 is the ELBO; L_k rises towards log p(x)."""
    log_w = log_importance_weights(model, x, k, labels)
    return torch.logsumexp(log_w, dim=0) - math.log(k)
