"""Observation models p(x|z) as ``torch.distributions`` objects.

A likelihood is a small ``nn.Module`` that turns the decoder's output (one value per data
dimension, shaped like the data) into a distribution whose ``log_prob`` sums over the data
dimensions (``Independent``), so ``log_prob(x)`` is one number per example, in nats.
It owns any learned parameters of the family (the Gaussian's σ_G). How many trailing
dimensions are the data's (``event_dims``) is given per call by the model, which knows the
decoder's output shape; a likelihood built with an ``event_shape`` uses its length.

``params_per_dim`` says how many decoder outputs each data dimension takes: 1 for most
families (the input is shaped like the data), 2 for the discretised logistic (mean and
log-scale; the input is shaped [..., 2, *event_shape]).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import (
    Bernoulli,
    ContinuousBernoulli,
    Distribution,
    Independent,
    Laplace,
    Normal,
)

from vaekit.errors import VaekitError
from vaekit.registry import LIKELIHOODS


class BernoulliLikelihood(nn.Module):
    """p(x|z) = Π_d Bernoulli(x_d | sigmoid(logit_d)); parameterised by logits for stability.

    On grey levels in [0, 1] the same formula is the binary cross-entropy, which is not a
    normalised likelihood; ``train`` warns about that.
    """

    params_per_dim = 1

    def __init__(self, event_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.event_dims = None if event_shape is None else len(event_shape)

    def forward(self, logits: torch.Tensor, event_dims: int | None = None) -> Distribution:
        dims = _event_dims(self, logits, event_dims)
        return SummedBernoulli(LogitBernoulli(logits=logits, validate_args=False), dims)

    def mean(self, logits: torch.Tensor, event_dims: int | None = None) -> torch.Tensor:
        return torch.sigmoid(logits)


class SummedBernoulli(Independent):
    """``Independent(LogitBernoulli)`` whose ``log_prob`` forms Σ_d x_d l_d and Σ_d softplus(l_d)
    as two reductions instead of summing the elementwise x·l − softplus(l): one image-sized
    temporary fewer, in what is most of importance-sampled evaluation's time outside the
    decoder (timings: docs/performance.md)."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        logits = self.base_dist.logits
        n = self.reinterpreted_batch_ndims
        if value.dtype != logits.dtype:
            return super().log_prob(value)
        flat = logits.flatten(-n)
        return torch.linalg.vecdot(flat, value.flatten(-n)) - nn.functional.softplus(flat).sum(-1)


class LogitBernoulli(Bernoulli):
    """``torch.distributions.Bernoulli`` with log p(x) = x·l − softplus(l), the same formula
    as its binary_cross_entropy_with_logits path, written out because torch's path measured
    slower on CPU (docs/performance.md) and the likelihood is the hot spot of
    importance-sampled evaluation (K × pixels per example)."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return value * self.logits - nn.functional.softplus(self.logits)


class GaussianLikelihood(nn.Module):
    """p(x|z) = N(x | μ_G(z), σ_G² I) with σ_G fixed, learned and shared, or per dimension.

    Learned σ_G = sigma_min + softplus(raw): the floor holds by construction, so maximum
    likelihood cannot collapse σ_G to zero on (nearly) repeated data values.
    """

    params_per_dim = 1
    family = Normal

    def __init__(self, event_shape: tuple[int, ...] | None = None, sigma: float | str = "shared",
                 sigma_min: float = 1e-3):
        super().__init__()
        self.event_dims = None if event_shape is None else len(event_shape)
        if isinstance(sigma, str) and sigma not in ("shared", "per-dim"):
            raise VaekitError(f"sigma must be a positive number (fixed), 'shared' or 'per-dim'; got {sigma!r}")
        if not isinstance(sigma, str) and not 0 < float(sigma) < math.inf:
            raise VaekitError(f"a fixed sigma must be a positive number, got {sigma}")
        self.mode = sigma if isinstance(sigma, str) else "fixed"
        self.sigma_min = sigma_min
        start = _softplus_inverse(max(1.0 - sigma_min, 1e-6))  # σ_G starts at 1
        if self.mode == "fixed":
            self.register_buffer("fixed_sigma", torch.tensor(float(sigma)))
        elif self.mode == "shared":
            self.raw_sigma = nn.Parameter(torch.tensor(start))
        elif event_shape is not None:
            self.raw_sigma = nn.Parameter(torch.full(tuple(event_shape), start))
        else:  # per dimension of data not seen yet: sized by the first decoder output
            self.raw_sigma = nn.UninitializedParameter()
            self._start = start

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        stored = state_dict.get(prefix + "raw_sigma")
        if stored is not None and isinstance(self.raw_sigma, nn.UninitializedParameter):
            self.raw_sigma.materialize(stored.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def sigma(self) -> torch.Tensor:
        if self.mode == "fixed":
            return self.fixed_sigma
        return self.sigma_min + nn.functional.softplus(self.raw_sigma)

    def forward(self, mean: torch.Tensor, event_dims: int | None = None) -> Distribution:
        dims = _event_dims(self, mean, event_dims)
        if isinstance(getattr(self, "raw_sigma", None), nn.UninitializedParameter):
            with torch.no_grad():
                self.raw_sigma.materialize(mean.shape[mean.dim() - dims:], device=mean.device)
                self.raw_sigma.fill_(self._start)
        scale = self.sigma().expand_as(mean)
        return Independent(self.family(mean, scale, validate_args=False), dims)

    def mean(self, mean: torch.Tensor, event_dims: int | None = None) -> torch.Tensor:
        return mean


class LaplaceLikelihood(GaussianLikelihood):
    """p(x|z) = Π_d Laplace(x_d | μ_d(z), b): the Gaussian's machinery with a heavier tail
    (an L1 reconstruction error); the scale b is fixed, shared or per dimension like σ_G,
    with the same floor."""

    family = Laplace


# ---------------------------------------------------------------------- continuous Bernoulli
# For p(x|η) ∝ λ^x (1−λ)^(1−x) on [0, 1] with λ = sigmoid(η), the normaliser is
# C(η) = η / tanh(η/2) (2 at η = 0). Written in the logit it has no 0/0 at λ = 0.5 (where
# the textbook form 2·atanh(1−2λ)/(1−2λ) cancels catastrophically) and no rounding of λ to
# 1 for large |η|. Below |η| = 1e-2 the series log 2 + η²/12 − 7η⁴/1440 is exact to float64.
_CB_SERIES = 1e-2


def continuous_bernoulli_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """log C(η) of the continuous Bernoulli, elementwise and stable for every logit η."""
    a = logits.abs()
    safe = torch.where(a < _CB_SERIES, torch.ones_like(a), a)
    # log(a / tanh(a/2)) with tanh(a/2) = (1 − e^−a) / (1 + e^−a)
    exact = torch.log(safe) - torch.log(-torch.expm1(-safe)) + torch.log1p(torch.exp(-safe))
    a2 = a * a
    series = math.log(2.0) + a2 / 12 - 7 * a2 * a2 / 1440
    return torch.where(a < _CB_SERIES, series, exact)


# E[x] = 1/(1 − e^(−η)) − 1/η loses digits to cancellation near η = 0, where its series
# 1/2 + η/12 − η³/720 + η⁵/30240 − η⁷/1209600 takes over: below |η| = 1 in float32 (both
# within 2 ulps there), 0.1 in float64 (the next term, 2.1e-8·η⁹, is then below 3e-17).
_CB_MEAN_SERIES = {torch.float64: 0.1}


def continuous_bernoulli_mean(logits: torch.Tensor) -> torch.Tensor:
    """E[x] of the continuous Bernoulli with logit η, 1/(1 − e^(−η)) − 1/η, for every η
    (torch's clamps λ and so caps |η| near 15.9 in float32)."""
    window = _CB_MEAN_SERIES.get(logits.dtype, 1.0)
    small = logits.abs() < window
    safe = torch.where(small, torch.full_like(logits, window), logits)
    exact = -1.0 / torch.expm1(-safe) - 1.0 / safe
    e2 = logits * logits
    series = 0.5 + logits * (1 / 12 + e2 * (-1 / 720 + e2 * (1 / 30240 - e2 / 1209600)))
    return torch.where(small, series, exact)


def _bernoulli_over_factorial(count: int) -> list[float]:
    """B_2n / (2n)! for n = 1..count: the Taylor coefficients of t/(e^t − 1), from
    c_0 = 1, Σ_{k=0..m} c_k / (m + 1 − k)! = 0 (exact fractions, then rounded once)."""
    from fractions import Fraction

    c = [Fraction(1)]
    for m in range(1, 2 * count + 1):
        c.append(-sum(c[k] / math.factorial(m + 1 - k) for k in range(m)))
    return [float(c[2 * n]) for n in range(1, count + 1)]


# The log-normaliser's derivatives in η, as power series about 0 (radius 2π), with B_2n the
# Bernoulli numbers: Var[x] = Σ B_2n (2n−1) η^(2n−2) / (2n)!, and the entropy
# H = Σ B_2n (1/(2n) − 1) η^(2n) / (2n)!. Below |η| = 2 the closed forms cancel (the values
# go to 1/12 and 0 from terms near 1); 20 terms leave (2/2π)^40 ≈ 1e-20 there.
_CB_SERIES_WINDOW = 2.0
_CB_TERMS = _bernoulli_over_factorial(20)
_CB_VARIANCE_SERIES = [b * (2 * n - 1) for n, b in enumerate(_CB_TERMS, start=1)]
_CB_ENTROPY_SERIES = [b * (1 / (2 * n) - 1) for n, b in enumerate(_CB_TERMS, start=1)]


def _even_series(coefficients: list[float], eta: torch.Tensor) -> torch.Tensor:
    """Σ_i coefficients[i] · (η²)^i, by Horner's rule."""
    e2 = eta * eta
    total = torch.full_like(eta, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        total = total * e2 + c
    return total


def continuous_bernoulli_variance(logits: torch.Tensor) -> torch.Tensor:
    """Var[x] of the continuous Bernoulli with logit η, 1/η² − 1/(4 sinh²(η/2)) (1/12 at
    η = 0), for every η (torch's clamps λ, as its mean does)."""
    small = logits.abs() < _CB_SERIES_WINDOW
    safe = torch.where(small, torch.full_like(logits, _CB_SERIES_WINDOW), logits)
    exact = 1.0 / (safe * safe) - 0.25 / torch.sinh(safe / 2) ** 2  # 1/sinh² → 0 where sinh overflows
    return torch.where(small, _even_series(_CB_VARIANCE_SERIES, logits), exact)


def continuous_bernoulli_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The differential entropy −E[log p(x)] of the continuous Bernoulli with logit η, for
    every η: with a = |η|, H = 1 − a/(e^a − 1) + log((1 − e^(−a))/a) (0 at η = 0, the
    uniform; about 1 − log a for large a, with no large terms to cancel)."""
    small = logits.abs() < _CB_SERIES_WINDOW
    a = torch.where(small, torch.full_like(logits, _CB_SERIES_WINDOW), logits.abs())
    exact = 1.0 - a / torch.expm1(a) + torch.log(-torch.expm1(-a)) - torch.log(a)
    return torch.where(small, logits * logits * _even_series(_CB_ENTROPY_SERIES, logits), exact)


def continuous_bernoulli_icdf(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The quantile function F⁻¹(u) = log(1 + u·(e^η − 1)) / η, for every η and u in [0, 1].

    Written for η ≤ 0 (where e^η − 1 cannot overflow) and mirrored for η > 0, since
    CB(−η) is CB(η) reflected: x(η, u) = 1 − x(−η, 1 − u). For |η| ≥ 1 the logarithm is
    taken as logaddexp(log(1 − v), log v + η), which stays finite when v·(e^η − 1) rounds to −1."""
    positive = logits > 0
    a = -logits.abs()  # ≤ 0
    v = torch.where(positive, 1.0 - u, u)
    near = a.clamp(min=-1.0)  # each branch gets arguments at which it is finite (also its gradient)
    far = a.clamp(max=-1.0)
    near = torch.where(near == 0, -torch.ones_like(near), near)
    small = torch.log1p(v * torch.expm1(near)) / near
    large = torch.logaddexp(torch.log1p(-v), torch.log(v) + far) / far
    y = torch.where(a > -1.0, small, large)
    y = torch.where(a == 0, v, y).clamp(0.0, 1.0)  # η = 0: the uniform distribution
    return torch.where(positive, 1.0 - y, y)


def continuous_bernoulli_cdf(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """F(x) = (e^(ηx) − 1) / (e^η − 1) on [0, 1] (x for η = 0), without overflow: for η > 0
    it is e^(η(x−1))·(1 − e^(−ηx)) / (1 − e^(−η))."""
    x = x.clamp(0.0, 1.0)
    safe = torch.where(logits == 0, torch.ones_like(logits), logits)
    negative = torch.expm1(safe * x) / torch.expm1(safe)
    pos = torch.exp(safe * (x - 1)) * torch.expm1(-safe * x) / torch.expm1(-safe)
    cdf = torch.where(safe > 0, pos, negative)
    return torch.where(logits == 0, x, cdf)


class StableContinuousBernoulli(ContinuousBernoulli):
    """``torch.distributions.ContinuousBernoulli`` computed from the logit: ``log_prob``
    (torch's float32 normaliser is off by up to 1e-5 nats at the edge of its Taylor window
    around λ = 0.5 and by 1e-3 for λ within 1e-6 of 1), ``mean``, ``cdf`` and ``icdf``, and so
    ``sample``/``rsample`` (torch's clamp λ, which caps |η| near 15.9 in float32: for η = 72
    its mean is 0.9373 instead of 0.9861 and its draws come from another distribution than
    the one ``log_prob`` scores), ``variance`` and ``entropy``."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        eta = self.logits
        return value * eta - nn.functional.softplus(eta) + continuous_bernoulli_log_norm(eta)

    @property
    def mean(self) -> torch.Tensor:
        return continuous_bernoulli_mean(self.logits)

    @property
    def variance(self) -> torch.Tensor:
        return continuous_bernoulli_variance(self.logits)

    def entropy(self) -> torch.Tensor:
        return continuous_bernoulli_entropy(self.logits)

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        return continuous_bernoulli_cdf(self.logits, value)

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        return continuous_bernoulli_icdf(self.logits, value)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device)
        return self.icdf(u)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)


class ContinuousBernoulliLikelihood(nn.Module):
    """p(x|z) = Π_d CB(x_d | sigmoid(logit_d)): a normalised density for grey levels in
    [0, 1] (Loaiza-Ganem & Cunningham 2019), where the Bernoulli's cross-entropy is not."""

    params_per_dim = 1

    def __init__(self, event_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.event_dims = None if event_shape is None else len(event_shape)

    def forward(self, logits: torch.Tensor, event_dims: int | None = None) -> Distribution:
        return Independent(StableContinuousBernoulli(logits=logits, validate_args=False),
                           _event_dims(self, logits, event_dims))

    def mean(self, logits: torch.Tensor, event_dims: int | None = None) -> torch.Tensor:
        return continuous_bernoulli_mean(logits)


# ---------------------------------------------------------------------- discretised logistic
class GreyLevels(torch.distributions.constraints.Constraint):
    """The grid k/(levels−1), k = 0…levels−1: a discrete support, so bits/dim of a model on
    it are bits of a probability."""

    is_discrete = True
    event_dim = 0

    def __init__(self, levels: int):
        super().__init__()
        self.levels = levels

    def check(self, value: torch.Tensor) -> torch.Tensor:
        k = value * (self.levels - 1)
        return (value >= 0) & (value <= 1) & ((k - k.round()).abs() < 1e-3)


class DiscretizedLogistic(Distribution):
    """Logistic(μ, s) integrated over the bins of ``levels`` grey levels k/(levels−1) in
    [0, 1]; the end bins take the tails (Salimans et al. 2017), so the probabilities of
    all levels sum to one. ``log_prob`` is per element; the likelihood sums it."""

    arg_constraints: dict = {}

    def __init__(self, loc: torch.Tensor, log_scale: torch.Tensor, levels: int = 256):
        self.loc, self.log_scale, self.levels = loc, log_scale, levels
        super().__init__(loc.shape, validate_args=False)

    @property
    def support(self):
        return GreyLevels(self.levels)

    @property
    def mean(self) -> torch.Tensor:
        """The location clipped to [0, 1] (the exact mean of the discretised law differs
        only where a tail bin holds noticeable mass)."""
        return self.loc.clamp(0.0, 1.0)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        half = 0.5 / (self.levels - 1)
        inv_s = torch.exp(-self.log_scale)
        upper = (value - self.loc + half) * inv_s
        lower = (value - self.loc - half) * inv_s
        bottom = value < half  # the level 0 takes (-inf, half]
        top = value > 1 - half  # the level 1 takes [1 - half, inf)
        # σ(u) − σ(l) = σ(u)·σ(−l)·(1 − e^(l−u)): every factor in log space, no cancellation
        log_upper = torch.where(top, 0.0, nn.functional.logsigmoid(upper))
        log_lower = torch.where(bottom, 0.0, nn.functional.logsigmoid(-lower))
        width = torch.where(bottom | top, 0.0, torch.log(-torch.expm1(-2 * half * inv_s)))
        return log_upper + log_lower + width

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device).clamp(1e-6, 1 - 1e-6)
            x = self.loc + torch.exp(self.log_scale) * (torch.log(u) - torch.log1p(-u))
            k = self.levels - 1
            return (x.clamp(0.0, 1.0) * k).round() / k


class DiscretizedLogisticLikelihood(nn.Module):
    """p(x|z) = Π_d DiscretizedLogistic(x_d | μ_d(z), s_d(z)) for data on the grid
    k/(levels−1) (8-bit images scaled to [0, 1]: levels = 256). The decoder gives two
    numbers per dimension: μ and log s (log s ≥ −7 as in PixelCNN++, so a bin's density
    stays finite in float32)."""

    params_per_dim = 2

    def __init__(self, event_shape: tuple[int, ...] | None = None, levels: int = 256):
        super().__init__()
        self.event_dims = None if event_shape is None else len(event_shape)
        self.levels = levels

    def forward(self, params: torch.Tensor, event_dims: int | None = None) -> Distribution:
        dims = _event_dims(self, params, event_dims, parameter_axis=True)
        loc, log_scale = params.unbind(-dims - 1)
        base = DiscretizedLogistic(loc, log_scale.clamp(min=-7.0), self.levels)
        return Independent(base, dims)

    def mean(self, params: torch.Tensor, event_dims: int | None = None) -> torch.Tensor:
        dims = _event_dims(self, params, event_dims, parameter_axis=True)
        return params.select(-dims - 1, 0).clamp(0.0, 1.0)


NAMES = LIKELIHOODS.names  # the families, as :data:`vaekit.registry.LIKELIHOODS` lists them


def make_likelihood(
    name: str,
    event_shape: tuple[int, ...] | None = None,
    sigma: float | str = "shared",
    sigma_min: float = 1e-3,
    levels: int = 256,
) -> nn.Module:
    """The likelihood family ``name`` (one of :data:`NAMES`); ``sigma`` (Gaussian and Laplace)
    is a positive number for a fixed σ_G, or ``"shared"`` / ``"per-dim"`` to learn it;
    ``levels`` the grey levels of the discretised logistic."""
    entry = LIKELIHOODS[name]
    options: dict = {}
    if entry.trait("sigma"):
        options.update(sigma=sigma, sigma_min=sigma_min)
    if entry.trait("levels"):
        options.update(levels=levels)
    return entry(event_shape, **options)


def _event_dims(likelihood, params: torch.Tensor, given: int | None, parameter_axis: bool = False) -> int:
    """The number of trailing data dimensions: as the caller says, else as the likelihood was
    built, else every dimension after the batch's first (and the parameter axis)."""
    if given is not None:
        return given
    if likelihood.event_dims is not None:
        return likelihood.event_dims
    return params.dim() - 1 - int(parameter_axis)


def _softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))
