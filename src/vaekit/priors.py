"""Priors p(z) as parts: ``nn.Module``s whose call ``P()`` returns a ``torch.distributions``
object over z with event shape [latent_dim] (batch shape []).

A prior's parameters are the module's, so they are trained with the model, saved in its
state dict and restored with it; calling ``P()`` builds the distribution from their current
values (inside the autograd graph, so the ELBO's gradient reaches them).

- :class:`StandardNormal`: N(0, I), no parameters (what :class:`vaekit.VAE` has always used).
- :class:`MixtureOfGaussians`: a learned mixture Σ_k π_k N(μ_k, diag σ_k²).
- :class:`VampPrior`: the variational mixture of posteriors (Tomczak & Welling 2018),
  p(z) = 1/K Σ_k q(z|u_k) with K learned pseudo-inputs u_k pushed through the model's own
  encoder; it needs that encoder, handed over with :meth:`VampPrior.bind`.

None of them has a closed-form KL against a Gaussian posterior except the standard normal;
:func:`vaekit.estimators.kl_or_mc` falls back to Monte Carlo at q's own draws.

``draws(n, generator)`` gives n prior draws [n, latent_dim] from a ``torch.Generator`` (for
figures that must not touch the global random state).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from vaekit.errors import VaekitError

# the same bound as vaekit.model.LOGVAR_MAX: exp(±10) scales, never 0 or inf
_LOGVAR_LIMIT = 20.0

Encode = Callable[[torch.Tensor], Distribution]


class Prior(nn.Module):
    """The protocol: ``latent_dim``, ``forward() -> Distribution`` (event shape
    [latent_dim]) and ``draws(n, generator=None) -> Tensor [n, latent_dim]``."""

    latent_dim: int

    def forward(self) -> Distribution:  # pragma: no cover - every prior overrides it
        raise NotImplementedError

    def draws(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws z ~ p(z), [n, latent_dim]; from ``generator`` when given (the global
        random state is then left as it was)."""
        dist = self()
        if generator is None:
            return dist.sample((n,))
        return _seeded_sample(dist, n, generator)


class StandardNormal(Prior):
    """p(z) = N(0, I): no parameters (nothing added to the state dict)."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = _positive("latent_dim", latent_dim)
        self.register_buffer("_zero", torch.zeros(self.latent_dim), persistent=False)

    def forward(self) -> Distribution:
        # vaekit.model's class carries the registered 7-op KL(N(μ, σ²) ‖ N(0, 1)): the same
        # numbers, bit for bit, as models built before priors were parts. Imported here, not
        # at the top, so that vaekit.model may import this module.
        from vaekit.model import StandardNormal as UnitNormal

        return Independent(UnitNormal(self._zero), 1)

    def draws(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        # both paths draw the numbers VAE.prior_draws has always drawn
        if generator is None:
            return self().sample((n,))
        return _randn(generator, (n, self.latent_dim), self._zero.device)


class MixtureOfGaussians(Prior):
    """p(z) = Σ_k π_k N(μ_k, diag σ_k²), all learned: means ``loc`` [K, L] (drawn from
    N(0, ``init_scale``²) at construction, so the components start apart), log-variances
    ``logvar`` [K, L] (start 0) and mixture logits ``logits`` [K] (start equal)."""

    def __init__(self, latent_dim: int, components: int = 10, init_scale: float = 1.0):
        super().__init__()
        self.latent_dim = _positive("latent_dim", latent_dim)
        self.components = _positive("components", components)
        self.loc = nn.Parameter(init_scale * torch.randn(self.components, self.latent_dim))
        self.logvar = nn.Parameter(torch.zeros(self.components, self.latent_dim))
        self.logits = nn.Parameter(torch.zeros(self.components))

    def _scale(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar.clamp(-_LOGVAR_LIMIT, _LOGVAR_LIMIT))

    def forward(self) -> Distribution:
        parts = Independent(Normal(self.loc, self._scale(), validate_args=False), 1)
        return DiagonalMixture(Categorical(logits=self.logits, validate_args=False), parts, validate_args=False)

    def draws(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            probs = torch.softmax(self.logits, 0)
            if generator is None:
                k = torch.multinomial(probs, n, replacement=True)
                eps = torch.randn(n, self.latent_dim, device=self.loc.device)
            else:
                k = torch.multinomial(probs.to(generator.device), n, replacement=True,
                                      generator=generator).to(self.loc.device)
                eps = _randn(generator, (n, self.latent_dim), self.loc.device)
            return self.loc[k] + self._scale()[k] * eps


class VampPrior(Prior):
    """The VampPrior (Tomczak & Welling 2018): p(z) = 1/K Σ_k q(z | u_k), a uniform mixture
    of the model's own posteriors at K learned pseudo-inputs u_k shaped like the data.

    The pseudo-inputs follow the paper's recipe (§3.2; reference code
    jmtomczak/vae_vampprior): u_k = hardtanh(w_k) clipped to ``bounds`` (the data's range,
    [0, 1] for binary or grey-level images; ``None`` for unbounded data), with the free
    parameters w_k drawn from N(``init_mean``, ``init_std``²) (0.05 and 0.01 for MNIST in
    the reference code), or ``init`` = K training examples plus N(0, ``init_std``²) noise
    (the paper's alternative).

    ``encode`` maps pseudo-inputs [K, *input_shape] to a distribution with batch shape [K]
    and event shape [latent_dim] whose ``log_prob`` is valid at any z (a Gaussian: a flow
    without an inverse cannot be a mixture component). Give it here or with :meth:`bind`:
    ``VampPrior(...).bind(model.encode)``; for a two-layer model, the encoder of its top
    latent (:func:`top_latent_encoder`). The encoder is not a submodule of the prior, so its
    weights are saved once, with the model.
    """

    def __init__(self, input_shape: tuple[int, ...] | torch.Size, latent_dim: int,
                 components: int = 500, *, encode: Encode | None = None,
                 init: torch.Tensor | None = None, init_mean: float = 0.05,
                 init_std: float = 0.01, bounds: tuple[float, float] | None = (0.0, 1.0)):
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.latent_dim = _positive("latent_dim", latent_dim)
        self.components = _positive("components", components)
        self.bounds = None if bounds is None else (float(bounds[0]), float(bounds[1]))
        shape = (self.components, *self.input_shape)
        if init is not None:
            init = torch.as_tensor(init, dtype=torch.float32)
            if tuple(init.shape) != shape:
                raise VaekitError(
                    f"the VampPrior's init must hold {self.components} examples shaped "
                    f"{self.input_shape}, i.e. {list(shape)}; got {list(init.shape)}")
            start = init + init_std * torch.randn(shape)
        else:
            start = init_mean + init_std * torch.randn(shape)
        self.pseudo_weights = nn.Parameter(start)
        self._encode = encode

    def bind(self, encode: Encode) -> VampPrior:
        """Hand the prior the encoder it mixes over (``model.encode``); returns the prior."""
        self._encode = encode
        return self

    @property
    def pseudo_inputs(self) -> torch.Tensor:
        """u_k [K, *input_shape]: the free parameters clipped to ``bounds`` (Tomczak's
        hardtanh: inside the bounds the gradient passes unchanged)."""
        if self.bounds is None:
            return self.pseudo_weights
        return torch.nn.functional.hardtanh(self.pseudo_weights, *self.bounds)

    def components_distribution(self) -> Distribution:
        """q(z | u_k) for the K pseudo-inputs: batch shape [K], event shape [latent_dim]."""
        if self._encode is None:
            raise VaekitError("this VampPrior has no encoder to mix over yet: call "
                              "prior.bind(model.encode) (the model does it when given the prior)")
        q = self._encode(self.pseudo_inputs)
        if not getattr(q, "invertible", True):
            raise VaekitError(
                "the VampPrior needs its components' density q(z|u_k) at any z, and this "
                "posterior is a flow without an inverse (planar, Sylvester): use a diagonal, "
                "full, IAF or Householder posterior with the VampPrior")
        if tuple(q.batch_shape) != (self.components,) or tuple(q.event_shape) != (self.latent_dim,):
            raise VaekitError(
                f"the VampPrior's encoder must return one distribution over {self.latent_dim} "
                f"latent coordinates per pseudo-input (batch {self.components}, event "
                f"{self.latent_dim}); got batch {list(q.batch_shape)}, event {list(q.event_shape)}")
        return q

    def forward(self) -> Distribution:
        q = self.components_distribution()
        uniform = torch.zeros(self.components, device=self.pseudo_weights.device)
        return DiagonalMixture(Categorical(logits=uniform, validate_args=False), q, validate_args=False)

    def draws(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            q = self.components_distribution()
            device = self.pseudo_weights.device
            if generator is None:
                k = torch.randint(self.components, (n,), device=device)
            else:
                k = torch.randint(self.components, (n,), generator=generator,
                                  device=generator.device).to(device)
            gaussian = _diagonal_normal_parts(q)
            if gaussian is None:  # some other component family: draw all, keep the chosen
                every = q.sample((n,)) if generator is None else _seeded_sample(q, n, generator)
                return every[torch.arange(n, device=device), k]
            loc, scale = gaussian
            eps = (torch.randn(n, self.latent_dim, device=device) if generator is None
                   else _randn(generator, (n, self.latent_dim), device))
            return loc[k] + scale[k] * eps


class DiagonalMixture(MixtureSameFamily):
    """A mixture whose log-density, where its components are diagonal Gaussians, is computed as
    two matrix products over the expanded square Σ_d (z_d − μ_kd)²/σ_kd², in float64 (the
    expansion cancels; float64 keeps it exact to ~1e-12 relative). Why: torch's broadcast form
    builds [points, K, D] temporaries, which for a VampPrior's 500 components at batch 250 and 50
    dimensions took about 85 % of a training step, forward and backward (docs/performance.md).
    Other component families, and mixtures with batch dimensions, use torch's own form."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        parts = _diagonal_normal_parts(self.component_distribution)
        if parts is None or parts[0].dim() != 2 or self.mixture_distribution.logits.dim() != 1:
            return super().log_prob(value)
        loc, scale = (t.double() for t in parts)
        v = value.reshape(-1, value.shape[-1]).double()
        precision = scale.pow(-2)
        square = (v * v) @ precision.T - 2 * (v @ (loc * precision).T) + (loc * loc * precision).sum(-1)
        log_norm = 2 * scale.log().sum(-1) + loc.shape[-1] * math.log(2 * math.pi)
        log_weights = torch.log_softmax(self.mixture_distribution.logits.double(), -1)
        out = torch.logsumexp(log_weights - 0.5 * (square + log_norm), dim=-1)
        return out.reshape(value.shape[:-1]).to(value.dtype)


def top_latent_encoder(model: nn.Module) -> Encode:
    """For :class:`vaekit.TwoLayerVAE` (q(z1|x) q(z2|z1)): the encoder of the top latent z2
    that a VampPrior on p(z2) mixes over, u ↦ q(z2 | z1 = E_q[z1|u]).

    Burda's inference network reaches z2 only through z1, so q(z2|u) = ∫ q(z2|z1) q(z1|u) dz1
    has no closed form; the path of means (the rule ``TwoStage.mean`` states) gives a
    Gaussian per pseudo-input. (Tomczak & Welling's HVAE has q(z2|x) directly.)"""

    def encode(u: torch.Tensor) -> Distribution:
        q = model.encode(u)
        return q.then(q.first.mean)

    return encode


def _diagonal_normal_parts(q: Distribution) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(loc, scale) when ``q`` is a diagonal Normal (Independent over one axis), else None."""
    if isinstance(q, Independent) and isinstance(q.base_dist, Normal) and q.reinterpreted_batch_ndims == 1:
        return q.base_dist.loc, q.base_dist.scale
    return None


def _randn(generator: torch.Generator, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, device=generator.device).to(device)


def _seeded_sample(dist: Distribution, n: int, generator: torch.Generator) -> torch.Tensor:
    """``dist.sample((n,))`` driven by ``generator`` (torch's distributions take none): one
    seed drawn from it, used inside a forked random state, so the global one is untouched."""
    seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
    probe = dist.sample((0,))
    devices = [probe.device.index or 0] if probe.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return dist.sample((n,))


def _positive(name: str, value: int) -> int:
    if int(value) < 1:
        raise VaekitError(f"{name} must be a positive integer, got {value}")
    return int(value)
