"""Posterior heads: modules that turn the encoder's features h [B, F] into q(z|x), a
``torch.distributions`` object with batch shape [B] and event shape [latent_dim].

Every head has ``in_features`` F, the width it needs from the encoder (:meth:`check_features`
refuses another width naming both numbers). Built with ``features=None`` the head has no
weights of its own and the encoder's output *is* its parameter vector (today's diagonal head
reads [μ, log σ²]); built with ``features=H`` it owns one linear map from the encoder's last
hidden layer (width H) to all its parameters: the papers' amortisation, whose separate linear
layers on h (μ, σ, u, w, b, ...) are blocks of that one map.

- :class:`DiagonalGaussian`: N(μ, diag σ²) (Kingma & Welling 2014).
- :class:`FullCovarianceGaussian`: N(μ, LLᵀ), L lower triangular with a positive diagonal.
- :class:`Planar`: K planar flows (Rezende & Mohamed 2015).
- :class:`IAF`: K inverse autoregressive flows with MADE networks and a context (Kingma et al. 2016).
- :class:`Householder`: K Householder reflections (Tomczak & Welling 2016).
- :class:`Sylvester`: K Sylvester flows, orthogonal / Householder / triangular (van den Berg et al. 2018).

Flows are ``torch.distributions.Transform`` subclasses (with ``log_abs_det_jacobian``) on a
diagonal-Gaussian base in a :class:`FlowPosterior` (a ``TransformedDistribution``), so
``q.log_prob(z)`` on the tensor ``q.rsample()`` just returned works through torch's transform
cache. Planar and Sylvester flows have no closed-form inverse: at any other point ``log_prob``
raises :class:`ForeignPoint`; :func:`vaekit.estimators.log_prob_at_own_sample` (or
``q.rsample_and_log_prob``) is the path that never needs one. IAF and Householder flows invert
exactly, so their densities are defined everywhere.

One point per example (for ``encode``, latent plots, traversals, interpolations, the explorer):
:func:`representative`, the mean for the Gaussians and the base mean pushed through the flow
for flows (the two-layer model: the path of representative points). This is the one rule
vaekit's figures and ``sampling`` follow.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import (
    Distribution,
    Independent,
    MultivariateNormal,
    Normal,
    TransformedDistribution,
    constraints,
    register_kl,
)
from torch.distributions.transforms import Transform
from torch.distributions.utils import _standard_normal

from vaekit import registry as _registry
from vaekit.errors import VaekitError

# the same bound as vaekit.model.LOGVAR_MAX: exp(±10) scales, never 0 or inf
_LOGVAR_LIMIT = 20.0
_LOW_PRECISION = (torch.bfloat16, torch.float16)


class ForeignPoint(VaekitError):
    """``log_prob`` of a flow without a closed-form inverse asked at a point that its own
    ``rsample`` did not just return."""


def representative(q: Distribution) -> torch.Tensor:
    """One latent point per example, [B, latent_dim]: ``q.representative`` where the
    distribution states one (a flow: its base mean pushed through the flow), else ``q.mean``."""
    point = getattr(type(q), "representative", None)
    return q.representative if point is not None else q.mean


def spread(q: Distribution, draws: int = 256, seed: int = 0) -> torch.Tensor:
    """Per-coordinate posterior variance [B, latent_dim]: ``q.variance`` where it has a
    closed form, else the variance of ``draws`` draws (from a forked generator seeded with
    ``seed``, so the caller's random state is untouched). What figures use to find the
    coordinates the encoder uses most (the smallest spread)."""
    try:
        return q.variance
    except NotImplementedError:
        from vaekit.devices import forked_rng

        device = representative(q).device
        with forked_rng(device, seed):
            return q.sample((draws,)).var(0)


# ---------------------------------------------------------------------- heads
class PosteriorHead(nn.Module):
    """Features h [..., F] → q(z|x). Subclasses give ``name``, ``num_params`` and
    ``distribution(params)``; the base class checks the width and applies the optional
    amortising linear map."""

    name = "posterior"
    invertible = True  # False for flows scored at their own draws only (planar, Sylvester)

    def __init__(self, latent_dim: int):
        super().__init__()
        if int(latent_dim) < 1:
            raise VaekitError(f"latent_dim must be positive, got {latent_dim}")
        self.latent_dim = int(latent_dim)
        self.amortise: nn.Linear | None = None

    def _finish(self, features: int | None) -> None:
        """Called at the end of a subclass's __init__, once ``num_params`` is known."""
        if features is not None:
            if int(features) < 1:
                raise VaekitError(f"features must be positive, got {features}")
            self.amortise = nn.Linear(int(features), self.num_params)

    @property
    def num_params(self) -> int:  # pragma: no cover - every head overrides it
        raise NotImplementedError

    @property
    def in_features(self) -> int:
        """How many encoder features this head reads."""
        return self.amortise.in_features if self.amortise is not None else self.num_params

    def check_features(self, width: int) -> None:
        if width != self.in_features:
            own = ("its own linear map" if self.amortise is not None
                   else f"[μ, log σ², flow parameters] for latent_dim {self.latent_dim}")
            raise VaekitError(
                f"the encoder gives {width} features per example but the {self.name} posterior "
                f"needs {self.in_features} ({own})")

    def forward(self, h: torch.Tensor) -> Distribution:
        return self.from_parameters(self.parameters_of(h))

    def parameters_of(self, h: torch.Tensor) -> torch.Tensor:
        """The distribution's parameter vector [..., num_params] for features h (after the
        width check and the amortising map), in float32. The first 2L entries are the base
        Gaussian's [μ, log σ²] (for the full covariance: [μ, log diag(L)²]); what the gap
        decomposition refits per example."""
        self.check_features(h.shape[-1])
        params = self.amortise(h) if self.amortise is not None else h
        if params.dtype in _LOW_PRECISION:  # densities are computed at full precision
            params = params.float()
        return params

    def from_parameters(self, params: torch.Tensor) -> Distribution:
        """q for a parameter vector (:meth:`parameters_of`); ``clamped`` counts the
        log-variances outside ±20 (clamped), as vaekit.model counts the diagonal head's."""
        L = self.latent_dim
        self.clamped = (params[..., L:2 * L].detach().abs() > _LOGVAR_LIMIT).sum()
        with _full_precision(params.device):
            return self.distribution(params)

    def distribution(self, params: torch.Tensor) -> Distribution:  # pragma: no cover
        raise NotImplementedError

    def _base(self, params: torch.Tensor) -> tuple[Distribution, torch.Tensor]:
        """(N(μ, diag σ²) from the first 2L parameters, the rest)."""
        L = self.latent_dim
        return _diagonal_normal(params[..., :L], params[..., L:2 * L]), params[..., 2 * L:]


class DiagonalGaussian(PosteriorHead):
    """q(z|x) = N(μ, diag σ²) from [μ, log σ²] (log σ² clamped to ±20, as vaekit.model)."""

    name = "diagonal"

    def __init__(self, latent_dim: int, features: int | None = None):
        super().__init__(latent_dim)
        self._finish(features)

    @property
    def num_params(self) -> int:
        return 2 * self.latent_dim

    def distribution(self, params: torch.Tensor) -> Distribution:
        return self._base(params)[0]


class FullCovarianceNormal(MultivariateNormal):
    """N(μ, LLᵀ): vaekit's own subclass, so that its closed-form KL against a diagonal
    Normal (the standard prior) can be registered without changing torch's rules for
    torch's classes; its draws multiply each example's L once for all of them
    (:func:`per_example_matmul`)."""

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = torch.Size()) -> torch.Tensor:
        eps = _standard_normal(self._extended_shape(sample_shape), dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + per_example_matmul(eps, self._unbroadcasted_scale_tril.transpose(-1, -2))


def per_example_matmul(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x [..., B, L] times each example's own matrix m [B, L, M]: [..., B, M]. One bmm over
    the B examples with every draw as a row: a broadcast ``x.unsqueeze(-2) @ m`` copies m
    once per draw, which made K-draw evaluation of per-example flows (Sylvester's Q and R,
    a full covariance's L) many times slower (docs/performance.md)."""
    if m.dim() != 3 or x.dim() < 2 or x.shape[-2] != m.shape[0]:
        return (x.unsqueeze(-2) @ m).squeeze(-2)
    lead, (b, width) = x.shape[:-2], x.shape[-2:]
    rows = x.reshape(-1, b, width).transpose(0, 1)  # [B, draws, L]
    return torch.bmm(rows, m).transpose(0, 1).reshape(*lead, b, m.shape[-1])


class FullCovarianceGaussian(PosteriorHead):
    """q(z|x) = N(μ, LLᵀ), L lower triangular: parameters [μ (L), log diag(L)² (L), the
    L(L−1)/2 entries below the diagonal, row by row]. The diagonal is exp(½ · clamped)."""

    name = "full"

    def __init__(self, latent_dim: int, features: int | None = None):
        super().__init__(latent_dim)
        rows, cols = torch.tril_indices(latent_dim, latent_dim, -1)
        self.register_buffer("_rows", rows, persistent=False)
        self.register_buffer("_cols", cols, persistent=False)
        self._finish(features)

    @property
    def num_params(self) -> int:
        L = self.latent_dim
        return 2 * L + L * (L - 1) // 2

    def distribution(self, params: torch.Tensor) -> Distribution:
        L = self.latent_dim
        loc, log_d2, below = params[..., :L], params[..., L:2 * L], params[..., 2 * L:]
        diag = torch.exp(0.5 * log_d2.clamp(-_LOGVAR_LIMIT, _LOGVAR_LIMIT))
        tril = torch.diag_embed(diag)
        tril[..., self._rows, self._cols] = below
        return FullCovarianceNormal(loc, scale_tril=tril, validate_args=False)


@register_kl(FullCovarianceNormal, Independent)
def _kl_full_diagonal(q: FullCovarianceNormal, p: Independent) -> torch.Tensor:
    # KL(N(μ, LLᵀ) ‖ N(m, diag s²)) = ½[Σ_ij L_ij²/s_i² + Σ_i (μ_i − m_i)²/s_i² − d
    #                                  + Σ_i log s_i² − 2 Σ_i log L_ii]
    if not (isinstance(p.base_dist, Normal) and p.reinterpreted_batch_ndims == 1):
        raise NotImplementedError
    s2 = p.base_dist.scale.pow(2)
    tril = q.scale_tril
    trace = (tril.pow(2) / s2.unsqueeze(-1)).sum((-2, -1))
    mahalanobis = ((q.loc - p.base_dist.loc).pow(2) / s2).sum(-1)
    log_det_p = s2.log().sum(-1)
    log_det_q = 2 * tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * (trace + mahalanobis - q.loc.shape[-1] + log_det_p - log_det_q)


# ---------------------------------------------------------------------- flows
class FlowPosterior(TransformedDistribution):
    """q(z|x): a diagonal-Gaussian base pushed through flow steps (``Transform``s with
    per-example parameters). ``log_prob`` is valid at the tensor the last ``rsample`` returned
    (torch's transform cache) and, for invertible steps, anywhere; ``rsample_and_log_prob``
    computes both in one pass."""

    has_rsample = True

    def __init__(self, base: Distribution, steps: list[Transform]):
        super().__init__(base, steps, validate_args=False)
        self._device = base.mean.device

    # The steps' matrix products and MADE networks run in float32 even under a bf16/fp16
    # autocast (vaekit's precision="bf16"): log-determinants are summed over the latent
    # dimensions and steps, as the ELBO's KL is, at full precision.
    def rsample(self, sample_shape: torch.Size | tuple = torch.Size()) -> torch.Tensor:
        with _full_precision(self._device):
            return super().rsample(torch.Size(sample_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log q(value): at the last draw from the transforms' caches, elsewhere through each
        step's inverse. A point whose preimage overflows float (far out in another example's
        posterior, as a mixture over examples or the VampPrior asks) has density 0 in any float
        type, so log q = −inf there, not the NaN that inf − inf would give."""
        with _full_precision(self._device):
            y, log_det, far = value, 0.0, torch.zeros(value.shape[:-1], dtype=torch.bool, device=value.device)
            for step in reversed(self.transforms):
                x = step.inv(y)
                log_det = log_det + step.log_abs_det_jacobian(x, y)
                far = far | ~torch.isfinite(x).all(-1)
                y = x
            return (self.base_dist.log_prob(y) - log_det).masked_fill(far, -torch.inf)

    def rsample_and_log_prob(self, sample_shape: torch.Size | tuple = torch.Size()
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, log q(z)) for reparameterised draws z [*sample_shape, B, L]: the base
        density minus each step's log |det J| along the way; no inverse needed."""
        with _full_precision(self._device):
            x = self.base_dist.rsample(torch.Size(sample_shape))
            log_q = self.base_dist.log_prob(x)
            for step in self.transforms:
                y = step(x)
                log_q = log_q - step.log_abs_det_jacobian(x, y)
                x = y
            return x, log_q

    @property
    def invertible(self) -> bool:
        """Whether ``log_prob`` is defined at any point (every step has an inverse), not
        only at this distribution's own last draw."""
        return all(type(step)._inverse is not FlowStep._inverse for step in self.transforms)

    @property
    def representative(self) -> torch.Tensor:
        """The base mean pushed through the flow, [B, L]: the stated one point per example
        (a flow's mean has no closed form). Computed past the transforms' caches, so a
        pending ``rsample``'s ``log_prob`` still works."""
        with _full_precision(self._device):
            x = self.base_dist.mean
            for step in self.transforms:
                x = step._call(x)
            return x

    @property
    def mean(self) -> torch.Tensor:
        raise NotImplementedError(
            "a flow posterior's mean has no closed form: use vaekit.posteriors.representative(q) "
            "(the base mean pushed through the flow) for one point per example")

    @property
    def variance(self) -> torch.Tensor:
        raise NotImplementedError("a flow posterior's variance has no closed form: estimate it "
                                  "from draws (q.rsample((n,)).var(0))")


class FlowStep(Transform):
    """One flow step on vectors (event dimension 1) with per-example parameters [B, ...]
    that broadcast over leading sample dimensions of x [..., B, L].

    ``_call`` may keep what ``log_abs_det_jacobian`` needs (``_keep``), keyed by the identity
    of x, so the Jacobian costs no second pass. Without a closed-form inverse, ``_inverse``
    raises :class:`ForeignPoint`."""

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True
    name = "flow"

    def __init__(self):
        super().__init__(cache_size=1)
        self._kept: tuple[torch.Tensor, object] | None = None

    def _keep(self, x: torch.Tensor, value: object) -> None:
        self._kept = (x, value)

    def _kept_for(self, x: torch.Tensor) -> object | None:
        return self._kept[1] if self._kept is not None and self._kept[0] is x else None

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        raise ForeignPoint(
            f"the {self.name} flow has no closed-form inverse: q.log_prob(z) is defined only for "
            "the tensor that q's last rsample() returned; draw and score together with "
            "vaekit.estimators.log_prob_at_own_sample(q, shape)")


def _full_precision(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, enabled=False)


def _diagonal_normal(mu: torch.Tensor, logvar: torch.Tensor) -> Distribution:
    # vaekit.model's constructor: one definition of the clamp and of the base law. Imported
    # here so that vaekit.model may import this module.
    from vaekit.model import diagonal_normal

    return diagonal_normal(mu, logvar)


def _unstack(flat: torch.Tensor, steps: int, *shape: int) -> list[torch.Tensor]:
    """[B, steps · prod(shape)] → ``steps`` tensors [B, *shape] (step-major order)."""
    per = flat.reshape(*flat.shape[:-1], steps, *shape)
    return list(per.unbind(-1 - len(shape)))


def _check_steps(steps: int) -> int:
    if int(steps) < 1:
        raise VaekitError(f"a flow needs at least 1 step, got {steps}")
    return int(steps)


# ---------------------------------------------------------------------- planar
class PlanarStep(FlowStep):
    """f(z) = z + û tanh(wᵀz + b) (Rezende & Mohamed 2015, eq. 10), with
    log |det ∂f/∂z| = log |1 + tanh'(wᵀz + b) wᵀû| (eq. 12). û = u + (m(wᵀu) − wᵀu) w / ‖w‖²,
    m(a) = −1 + softplus(a), makes wᵀû > −1, the condition for f to be invertible (their
    appendix A.1).

    The log-det uses wᵀû = m(wᵀu) exactly, written as log(tanh² + (1 − tanh²) softplus(wᵀu)):
    a sum of two non-negative terms. Formed as 1 + tanh'·(w·û), the dot product rounds to
    −1 or below once wᵀu < −15 or so in float32, and the log-det became NaN or −inf."""

    name = "planar"

    def __init__(self, u: torch.Tensor, w: torch.Tensor, b: torch.Tensor):
        super().__init__()
        wu = (w * u).sum(-1, keepdim=True)
        norm2 = (w * w).sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
        softplus_wu = F.softplus(wu)
        self.u = u + (softplus_wu - 1 - wu) * w / norm2
        self.w, self.b = w, b
        self.softplus_wu = softplus_wu.squeeze(-1)  # 1 + wᵀû, > 0

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        a = (x * self.w).sum(-1) + self.b
        self._keep(x, a)
        return x + self.u * torch.tanh(a).unsqueeze(-1)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a = self._kept_for(x)
        if a is None:
            a = (x * self.w).sum(-1) + self.b
        t2 = torch.tanh(a).pow(2)
        return torch.log(t2 + (1 - t2) * self.softplus_wu)


class Planar(PosteriorHead):
    """K planar flows on N(μ, diag σ²). Parameters, all amortised from h as in van den Berg
    et al.'s PlanarVAE: [μ, log σ², u (K·L), w (K·L), b (K)]."""

    name = "planar"
    invertible = False

    def __init__(self, latent_dim: int, steps: int = 4, features: int | None = None):
        super().__init__(latent_dim)
        self.steps = _check_steps(steps)
        self._finish(features)

    @property
    def num_params(self) -> int:
        return 2 * self.latent_dim + self.steps * (2 * self.latent_dim + 1)

    def distribution(self, params: torch.Tensor) -> Distribution:
        base, rest = self._base(params)
        K, L = self.steps, self.latent_dim
        u, w, b = rest.split([K * L, K * L, K], dim=-1)
        steps = zip(_unstack(u, K, L), _unstack(w, K, L), b.unbind(-1), strict=True)
        return FlowPosterior(base, [PlanarStep(*p) for p in steps])


# ---------------------------------------------------------------------- Householder
class HouseholderStep(FlowStep):
    """z ↦ (I − 2 v vᵀ / ‖v‖²) z: a reflection (Tomczak & Welling 2016, eq. 5). Orthogonal,
    so log |det| = 0, and its own inverse."""

    name = "Householder"

    def __init__(self, v: torch.Tensor):
        super().__init__()
        self.v = v
        self.scale = 2 / (v * v).sum(-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.scale * (x * self.v).sum(-1, keepdim=True) * self.v

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self._call(y)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[:-1])


class Householder(PosteriorHead):
    """K Householder flows on N(μ, diag σ²) (Tomczak & Welling 2016): the first vector
    v₁ is amortised from h with μ and log σ² (parameters [μ, log σ², v₁]); each next one is a
    learned linear function of the previous, v_{t+1} = W_t v_t + c_t, as in the paper's §3
    (and its reference code, jmtomczak/vae_householder_flow)."""

    name = "householder"

    def __init__(self, latent_dim: int, steps: int = 4, features: int | None = None):
        super().__init__(latent_dim)
        self.steps = _check_steps(steps)
        self.next_vector = nn.ModuleList(nn.Linear(latent_dim, latent_dim) for _ in range(self.steps - 1))
        self._finish(features)

    @property
    def num_params(self) -> int:
        return 3 * self.latent_dim

    def distribution(self, params: torch.Tensor) -> Distribution:
        base, v = self._base(params)
        vectors = [v]
        for layer in self.next_vector:
            vectors.append(layer(vectors[-1]))
        return FlowPosterior(base, [HouseholderStep(v) for v in vectors])


# ---------------------------------------------------------------------- IAF
class _MaskedLinear(nn.Linear):
    def __init__(self, mask: torch.Tensor):
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask, persistent=False)  # rebuilt from the sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """An autoregressive network (Germain et al. 2015) with a context: (m, s) [..., L] where
    output i depends on the inputs before i in the order (natural, or reversed with
    ``reverse``) and on the context, never on input i or later.

    Hidden units get degrees 0..L−1 in turn; a unit of degree d sees the inputs of degree ≤ d
    (degree 0: the context only) and feeds outputs of degree > d, so the first output still
    depends on the context. The context enters the first hidden layer through an unmasked
    linear map, as IAF's h does (Kingma et al. 2016, §4)."""

    def __init__(self, latent_dim: int, context_dim: int, hidden: int, layers: int = 2,
                 reverse: bool = False):
        super().__init__()
        if hidden < 1 or layers < 1:
            raise VaekitError(f"MADE needs hidden ≥ 1 and layers ≥ 1, got {hidden} and {layers}")
        inputs = torch.arange(1, latent_dim + 1)
        if reverse:
            inputs = inputs.flip(0)
        units = torch.arange(hidden) % latent_dim
        self.first = _MaskedLinear((units[:, None] >= inputs[None, :]).float())
        self.context = nn.Linear(context_dim, hidden, bias=False)
        self.hidden = nn.ModuleList(
            _MaskedLinear((units[:, None] >= units[None, :]).float()) for _ in range(layers - 1))
        out_mask = (inputs[:, None] > units[None, :]).float()
        self.m = _MaskedLinear(out_mask)
        self.s = _MaskedLinear(out_mask)

    def forward(self, z: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.elu(self.first(z) + self.context(context))
        for layer in self.hidden:
            h = F.elu(layer(h))
        return self.m(h), self.s(h)


class IAFStep(FlowStep):
    """z ↦ σ ⊙ z + (1 − σ) ⊙ m with [m, s] = MADE(z, h), σ = sigmoid(s + forget_bias)
    (Kingma et al. 2016, Algorithm 1 / eq. 14, the numerically stable gated update).
    Autoregressive, so ∂z'/∂z is triangular with diagonal σ: log |det| = Σ log σ. It inverts
    exactly in L passes (coordinate by coordinate in the network's order)."""

    name = "IAF"

    def __init__(self, made: MADE, context: torch.Tensor, forget_bias: float):
        super().__init__()
        self.made, self.context, self.forget_bias = made, context, forget_bias

    def _net(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x may carry sample dimensions, or a size-1 axis a mixture broadcasts against its components
        lead = torch.broadcast_shapes(x.shape[:-1], self.context.shape[:-1])
        context = self.context.expand(*lead, self.context.shape[-1])
        m, s = self.made(x, context)
        return m, s + self.forget_bias

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        m, s = self._net(x)
        self._keep(x, s)
        return torch.sigmoid(s) * x + torch.sigmoid(-s) * m

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        x = y
        for i in range(y.shape[-1]):  # after pass i the first i coordinates (in order) are exact
            m, s = self._net(x)
            x = (y - torch.sigmoid(-s) * m) / torch.sigmoid(s)
            if i < y.shape[-1] - 1:
                # the coordinates not yet exact may overflow; a masked weight (0) times inf would
                # then turn the next pass's exact ones into NaN: they are recomputed anyway
                x = torch.where(torch.isfinite(x), x, 0.0)
        return x

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = self._kept_for(x)
        if s is None:
            s = self._net(x)[1]
        return F.logsigmoid(s).sum(-1)


class IAF(PosteriorHead):
    """K inverse autoregressive flows on N(μ, diag σ²) (Kingma et al. 2016): the encoder
    gives [μ, log σ², h] with a context h of ``context`` features (default ``hidden``); each
    step has its own MADE (``hidden`` units, ``layers`` masked layers, ELU), the order reversed
    every other step, and the forget-gate bias ``forget_bias`` (1, as in van den Berg et al.'s
    reference IAF) that starts σ near sigmoid(1). The MADEs' weights are shared across
    examples; only h is amortised, as in the paper."""

    name = "iaf"

    def __init__(self, latent_dim: int, steps: int = 2, features: int | None = None,
                 hidden: int = 320, context: int | None = None, layers: int = 2,
                 forget_bias: float = 1.0):
        super().__init__(latent_dim)
        self.steps = _check_steps(steps)
        self.context_dim = int(context or hidden)
        self.forget_bias = float(forget_bias)
        self.made = nn.ModuleList(
            MADE(latent_dim, self.context_dim, hidden, layers, reverse=bool(k % 2))
            for k in range(self.steps))
        self._finish(features)

    @property
    def num_params(self) -> int:
        return 2 * self.latent_dim + self.context_dim

    def distribution(self, params: torch.Tensor) -> Distribution:
        base, context = self._base(params)
        return FlowPosterior(base, [IAFStep(made, context, self.forget_bias) for made in self.made])


# ---------------------------------------------------------------------- Sylvester
class SylvesterStep(FlowStep):
    """z ↦ z + Q R₁ tanh(R₂ Qᵀ z + b) (van den Berg et al. 2018, eq. 13): Q [L, M] with
    orthonormal columns (``q``; or the identity, or the reversal permutation with ``flip``),
    R₁, R₂ [M, M] upper triangular. By Sylvester's determinant identity
    log |det| = Σ_i log |1 + tanh'(·)_i R₁,ii R₂,ii| (their eq. 14), positive when
    R₁,ii R₂,ii > −1, which |tanh| < 1 on both diagonals guarantees. No closed-form inverse."""

    name = "Sylvester"

    def __init__(self, r1: torch.Tensor, r2: torch.Tensor, b: torch.Tensor,
                 q: torch.Tensor | None = None, flip: bool = False):
        super().__init__()
        self.r1, self.r2, self.b, self.q, self.flip = r1, r2, b, q, flip
        self.diagonal = r1.diagonal(dim1=-2, dim2=-1) * r2.diagonal(dim1=-2, dim2=-1)

    def _pre(self, x: torch.Tensor) -> torch.Tensor:
        if self.q is not None:
            x = per_example_matmul(x, self.q)
        elif self.flip:
            x = x.flip(-1)
        return per_example_matmul(x, self.r2.transpose(-1, -2)) + self.b

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        pre = self._pre(x)
        self._keep(x, pre)
        v = per_example_matmul(torch.tanh(pre), self.r1.transpose(-1, -2))
        if self.q is not None:
            v = per_example_matmul(v, self.q.transpose(-1, -2))
        elif self.flip:
            v = v.flip(-1)
        return x + v

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pre = self._kept_for(x)
        if pre is None:
            pre = self._pre(x)
        return torch.log1p((1 - torch.tanh(pre).pow(2)) * self.diagonal).sum(-1)


SYLVESTER_KINDS = ("orthogonal", "householder", "triangular")


class Sylvester(PosteriorHead):
    """K Sylvester flows on N(μ, diag σ²) (van den Berg et al. 2018), with every flow
    parameter amortised from h as in their reference code (riannevdberg/sylvester-flows,
    models/VAE.py):

    - one full [M, M] matrix per step gives R₁'s strict upper triangle and, transposed, R₂'s;
      the diagonals are tanh of their own outputs (so R₁,ii R₂,ii > −1: invertible);
    - ``orthogonal``: Q from an [L, M] output (M = ``vectors`` ≤ L), divided by its Frobenius
      norm and made orthonormal by Björck's iteration Q ← Q(I + ½(I − QᵀQ)) until
      ‖QᵀQ − I‖ ≤ 1e-5 (M = L) or 1e-6 in float32, at most 100 rounds;
    - ``householder``: Q (L × L) is the product of ``reflections`` amortised reflections;
    - ``triangular``: Q is the identity, or the reversal permutation every other step.

    Parameters: [μ, log σ², then per step: the full matrix (M²), diag₁ (M), diag₂ (M), b (M),
    and Q's (L·M for orthogonal, reflections·L for householder)], each block step-major.
    """

    name = "sylvester"
    invertible = False

    def __init__(self, latent_dim: int, steps: int = 4, kind: str = "orthogonal",
                 features: int | None = None, vectors: int | None = None, reflections: int = 8):
        super().__init__(latent_dim)
        if kind not in SYLVESTER_KINDS:
            raise VaekitError(f"the Sylvester flow's kind must be one of {', '.join(SYLVESTER_KINDS)}; got {kind!r}")
        self.steps, self.kind = _check_steps(steps), kind
        self.name = f"sylvester-{kind}"
        L = latent_dim
        if kind == "orthogonal":
            self.vectors = int(vectors) if vectors is not None else min(8, L)
            if not 1 <= self.vectors <= L:
                raise VaekitError(f"an orthogonal Sylvester flow needs 1 to {L} orthogonal vectors "
                                  f"(the latent dimension), got {self.vectors}")
        else:
            self.vectors = L
        self.reflections = int(reflections)
        if kind == "householder" and self.reflections < 1:
            raise VaekitError(f"a Householder Sylvester flow needs at least 1 reflection, got {reflections}")
        self._finish(features)

    @property
    def _q_size(self) -> int:
        L, M = self.latent_dim, self.vectors
        return {"orthogonal": L * M, "householder": self.reflections * L, "triangular": 0}[self.kind]

    @property
    def num_params(self) -> int:
        M = self.vectors
        return 2 * self.latent_dim + self.steps * (M * M + 3 * M + self._q_size)

    def distribution(self, params: torch.Tensor) -> Distribution:
        base, rest = self._base(params)
        K, L, M = self.steps, self.latent_dim, self.vectors
        full, d1, d2, b, q = rest.split([K * M * M, K * M, K * M, K * M, K * self._q_size], dim=-1)
        full = full.reshape(*full.shape[:-1], K, M, M)
        r1 = torch.triu(full, 1) + torch.diag_embed(torch.tanh(d1.reshape(*d1.shape[:-1], K, M)))
        r2 = torch.triu(full.transpose(-1, -2), 1) + torch.diag_embed(torch.tanh(d2.reshape(*d2.shape[:-1], K, M)))
        b = b.reshape(*b.shape[:-1], K, M)
        if self.kind == "orthogonal":
            qs = _orthonormal_columns(q.reshape(*q.shape[:-1], K, L, M))
        elif self.kind == "householder":
            qs = _reflections_product(q.reshape(*q.shape[:-1], K, self.reflections, L))
        steps = []
        for k in range(K):
            if self.kind == "triangular":
                steps.append(SylvesterStep(r1[..., k, :, :], r2[..., k, :, :], b[..., k, :], flip=bool(k % 2)))
            else:
                steps.append(SylvesterStep(r1[..., k, :, :], r2[..., k, :, :], b[..., k, :], q=qs[..., k, :, :]))
        return FlowPosterior(base, steps)


def _orthonormal_columns(a: torch.Tensor, rounds: int = 100) -> torch.Tensor:
    """Björck's iteration on matrices [..., L, M] scaled to Frobenius norm 1 (so their
    spectral norm is ≤ 1 < √3 and it converges): QᵀQ = I to the tolerance van den Berg et al.
    use in float32 (1e-5 if square, else 1e-6), 1e-12 in float64.

    It runs on the transposes [..., M, L], Qᵀ ← (I + ½(I − QᵀQ)) Qᵀ, and tests each round's
    QᵀQ before it is used, instead of forming QᵀQ again after the update: the same iterates,
    with two small per-example products a round instead of three, the larger one in the
    layout torch's batched matmul runs fastest here (docs/performance.md)."""
    L, M = a.shape[-2:]
    tolerance = 1e-12 if a.dtype == torch.float64 else (1e-5 if L == M else 1e-6)
    rows = a.transpose(-1, -2)
    rows = rows / rows.flatten(-2).norm(dim=-1).clamp_min(torch.finfo(a.dtype).tiny)[..., None, None]
    eye = torch.eye(M, dtype=a.dtype, device=a.device)
    for step in range(rounds + 1):
        gram = rows @ rows.transpose(-1, -2)
        with torch.no_grad():
            error = float((gram - eye).flatten(-2).norm(dim=-1).max()) if a.numel() else 0.0
        if error <= tolerance:
            break
        if step == rounds:
            warnings.warn(f"Sylvester flow: the orthogonalisation stopped after {rounds} rounds at "
                          f"‖QᵀQ − I‖ = {error:.2g}", RuntimeWarning, stacklevel=3)
            break
        rows = (1.5 * eye - 0.5 * gram) @ rows
    return rows.transpose(-1, -2)


def _reflections_product(v: torch.Tensor) -> torch.Tensor:
    """Π_h (I − 2 v_h v_hᵀ/‖v_h‖²) for v [..., H, L]: an orthogonal [..., L, L]."""
    L = v.shape[-1]
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
    eye = torch.eye(L, dtype=v.dtype, device=v.device)
    q = eye - 2 * v[..., 0, :, None] * v[..., 0, None, :]
    for h in range(1, v.shape[-2]):
        q = (eye - 2 * v[..., h, :, None] * v[..., h, None, :]) @ q
    return q


# ---------------------------------------------------------------------- by name
# The names and their classes: vaekit.registry.POSTERIORS (one list for the library, the
# config's choices, --help and the docs).
POSTERIORS = _registry.POSTERIORS


def make_posterior(name: str, latent_dim: int, features: int | None = None, **options) -> PosteriorHead:
    """The built-in head called ``name`` (``diagonal``, ``full``, ``planar``, ``iaf``,
    ``householder``, ``sylvester``: :data:`vaekit.registry.POSTERIORS`), with its options
    (``steps``, ``kind``, ``hidden``, ...)."""
    entry = POSTERIORS.get(name)
    if entry is None:
        raise VaekitError(f"unknown posterior {name!r}; choose one of {', '.join(POSTERIORS)}")
    try:
        return entry(latent_dim, features=features, **options)
    except TypeError as error:
        raise VaekitError(f"posterior {name!r}: {error}") from None
