"""Estimator helpers that hold for any posterior q(z|x) and any prior p(z) given as
``torch.distributions``: Gaussians, mixtures (MoG, VampPrior), flows whose density is defined
only at their own draws (planar, Sylvester), the two-layer model's joint laws.

The rule they keep: a posterior is scored only at the draws it just made (never at foreign
points), and a closed-form KL is used exactly where torch has one registered.
"""

from __future__ import annotations

import torch
from torch.distributions import Distribution
from torch.distributions import kl_divergence as _registered_kl


def log_prob_at_own_sample(q: Distribution, sample_shape: torch.Size | tuple = torch.Size()
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, log q(z)) for reparameterised draws z ~ q, z [*sample_shape, *batch, L] and
    log q(z) [*sample_shape, *batch]: in one pass where q offers ``rsample_and_log_prob``
    (vaekit's flows), else ``q.rsample`` then ``q.log_prob`` on that very tensor (what torch's
    transform cache makes valid for a user's ``TransformedDistribution``)."""
    shape = torch.Size(sample_shape)
    both = getattr(q, "rsample_and_log_prob", None)
    if both is not None:
        return both(shape)
    z = q.rsample(shape)
    return z, q.log_prob(z)


def closed_form_kl(q: Distribution, p: Distribution) -> torch.Tensor | None:
    """KL(q ‖ p) per example where torch has a registered closed form, else None."""
    try:
        return _registered_kl(q, p)
    except NotImplementedError:
        return None


def kl_or_mc(q: Distribution, p: Distribution, z: torch.Tensor | None = None,
             log_q: torch.Tensor | None = None, samples: int = 1) -> torch.Tensor:
    """KL(q ‖ p) per example [*batch]: the closed form where torch registers one, else the
    Monte-Carlo mean of log q(z) − log p(z) over draws from q.

    ``z`` [M, *batch, L]: draws already made from q (the ELBO's own, so one set of draws
    serves the reconstruction and the KL); ``log_q``: their log q(z) if known (from
    :func:`log_prob_at_own_sample`); without it ``q.log_prob(z)`` is used, valid for a flow
    only when ``z`` is the tensor its last ``rsample`` returned. Without ``z``, ``samples``
    fresh draws scored at themselves."""
    exact = closed_form_kl(q, p)
    if exact is not None:
        return exact
    if z is None:
        z, log_q = log_prob_at_own_sample(q, (samples,))
    elif log_q is None:
        log_q = q.log_prob(z)
    return (log_q - p.log_prob(z)).mean(0)
