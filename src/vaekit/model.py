"""The models: ``VAE`` (the lecture's), ``AE`` (its deterministic baseline) and
``TwoLayerVAE`` (two stochastic layers, Burda et al. 2016).

``encode(x)`` returns q(z|x) and ``decode(z)`` returns p(x|z), both as
``torch.distributions`` objects whose ``log_prob`` gives one value per example.
No loss lives here: objectives are functions in :mod:`vaekit.objectives`.

Conditioning is done one way: a model with ``num_classes > 0`` is conditional, its
``encode(x, y)`` and ``decode(z, y)`` take the class labels y ([B] indices), and it hands
them to its networks as their second argument, ``encoder(x, y)`` and ``decoder(z, y)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal, register_kl

from vaekit import noise
from vaekit.errors import VaekitError
from vaekit.likelihoods import make_likelihood
from vaekit.posteriors import representative

# exp(0.5 * logvar) stays within [4.5e-5, 2.2e4]: far beyond any useful posterior scale,
# but it keeps exp() from overflowing or underflowing to an exact zero scale. Hitting the
# bounds is not hidden: ``encode`` counts the clamped entries (``clamped``) and training
# reports them per epoch (``train_logvar_clamped`` in metrics.jsonl).
LOGVAR_MAX = 20.0
LOGVAR_MIN = -LOGVAR_MAX
_LOW_PRECISION = (torch.bfloat16, torch.float16)


def labelled(y: torch.Tensor | None) -> tuple:
    """The label argument for ``encode``/``decode``: ``(y,)``, or nothing for an
    unconditional call, so a user's model whose ``encode(x)`` takes one argument works."""
    return () if y is None else (y,)


def num_classes(model: nn.Module) -> int:
    """The number of classes ``model`` is conditioned on; 0 for an unconditional one,
    including a user's module that has no ``num_classes`` attribute."""
    return int(getattr(model, "num_classes", 0) or 0)


class VAE(nn.Module):
    """q(z|x) from the ``encoder`` (N(μ_I, diag σ_I²) by default, or a ``posterior`` head);
    p(z) from a ``prior`` module (N(0, I) by default); p(x|z) from the ``decoder`` and a
    ``likelihood`` family.

    Networks see data in its natural shape. ``encoder(x)`` returns the posterior's
    parameters: a tensor [B, 2L] holding [μ, log σ²], a pair (μ, log σ²), or a
    ``torch.distributions`` object (used as it is). ``decoder(z)`` takes z [N, L] and returns
    the likelihood's parameters shaped like the data ([N, *event_shape]; [N, 2, *event_shape]
    for the discretised logistic's mean and log-scale). ``likelihood``: a name
    (``bernoulli``, ``gaussian``, ``laplace``, ``continuous-bernoulli``, ``logistic``) or a
    module from :mod:`vaekit.likelihoods`. ``latent_dim`` L is found from the encoder's
    first output when not given; the data's shape from the decoder's.

    With ``num_classes = K > 0`` it is the conditional VAE: ``encode(x, y)`` and
    ``decode(z, y)`` take class labels y in 0..K−1 and pass them to the networks as
    ``encoder(x, y)`` / ``decoder(z, y)``; the prior p(z) does not see the label.

    ``prior``: an ``nn.Module`` whose call returns p(z) with event shape [latent_dim]
    (:mod:`vaekit.priors`: ``StandardNormal``, ``MixtureOfGaussians``, ``VampPrior``); its
    parameters are the model's (trained, saved, loaded under ``prior_module.*``). A prior
    with ``bind`` (the VampPrior) is bound to the model's encoder, called without side
    effects (``clamped`` and the data shape are left alone). ``model.prior`` is the
    distribution, built from the module's current parameters.

    ``posterior``: a head from :mod:`vaekit.posteriors` that turns the encoder's output
    (its width checked against the head's ``in_features``) into q(z|x); without one the
    encoder's output is [μ, log σ²], exactly 2 · latent_dim wide.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood: str | nn.Module = "bernoulli",
        latent_dim: int | None = None,
        num_classes: int = 0,
        event_shape: tuple[int, ...] | None = None,
        *,
        prior: nn.Module | None = None,
        posterior: nn.Module | None = None,
    ):
        super().__init__()
        if isinstance(likelihood, str):
            likelihood = make_likelihood(likelihood, event_shape)
        if num_classes < 0:
            raise VaekitError(f"num_classes must be 0 (unconditional) or more, got {num_classes}")
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.num_classes = num_classes
        self.event_shape = None if event_shape is None else tuple(event_shape)
        self.latent_dim = None
        self.prior_module: nn.Module | None = None
        self.posterior: nn.Module | None = None
        self.clamped = torch.zeros((), dtype=torch.long)  # entries clamped by the last encode
        if latent_dim is None:  # the parts may know it
            latent_dim = _part_dim(posterior) or _part_dim(prior)
        if latent_dim is not None:
            self._set_latent_dim(latent_dim)
        self._attach(prior, posterior, self.latent_dim, self.latent_dim)

    def _set_latent_dim(self, latent_dim: int) -> None:
        if latent_dim < 1:
            raise VaekitError(f"latent_dim must be positive, got {latent_dim}")
        self.latent_dim = int(latent_dim)
        if self.prior_module is None:
            self.prior_module = _default_prior(self.latent_dim, self)

    def _attach(self, prior: nn.Module | None, posterior: nn.Module | None,
                prior_dim: int | None, posterior_dim: int | None) -> None:
        """Checks and installs the prior and posterior parts (over ``prior_dim`` and
        ``posterior_dim`` coordinates: the whole latent here, z2 and z1 in TwoLayerVAE)."""
        if posterior is not None:
            _check_part("posterior", posterior, posterior_dim)
            self.posterior = posterior
        if prior is not None:
            _check_part("prior", prior, prior_dim)
            self.prior_module = prior
            if hasattr(prior, "bind"):
                if self.conditional:
                    raise VaekitError(
                        "a VampPrior mixes the encoder's posteriors at pseudo-inputs, which carry no "
                        "class label: a conditional model (num_classes > 0) needs a prior without "
                        "an encoder (standard or mog)")
                if not getattr(self.posterior, "invertible", True):
                    raise VaekitError(
                        f"the VampPrior needs its components' density q(z|u_k) at any z, and the "
                        f"{self.posterior.name} posterior is a flow without an inverse: use a "
                        "diagonal, full, IAF or Householder posterior with the VampPrior")
                prior.bind(self._prior_encode)

    def _prior_encode(self, u: torch.Tensor) -> Distribution:
        """q(z|u) for a prior that mixes posteriors (the VampPrior's pseudo-inputs): the
        encoder without ``encode``'s side effects (no ``clamped`` count, no data shape)."""
        return self._posterior(self.encoder(u))[0]

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def data_dim(self) -> int:
        return math.prod(self.event_shape)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Distribution:
        """q(z|x, φ) with batch shape [B] and event shape [latent_dim]."""
        if self.event_shape is None:
            self.event_shape = tuple(x.shape[1:])
        q, self.clamped = self._posterior(self.encoder(*self._inputs(x, y)))
        return q

    def _posterior(self, out, width: int | None = None) -> tuple[Distribution, torch.Tensor]:
        """(q from the encoder's output, how many log-variances it clamped); ``width``: the
        latent coordinates q is over (default ``latent_dim``)."""
        width = self.latent_dim if width is None else width
        none = torch.zeros((), dtype=torch.long)
        if isinstance(out, Distribution):
            if self.posterior is not None:
                raise VaekitError("the encoder returns a distribution itself, so the posterior head "
                                  "has nothing to read: give the head the encoder's features instead")
            if width is not None and tuple(out.event_shape) != (width,):
                raise VaekitError(f"the encoder's distribution has event shape {list(out.event_shape)}, "
                                  f"but latent_dim is {width}")
            return out, none
        if self.posterior is not None:
            if isinstance(out, (tuple, list)):
                out = torch.cat(list(out), dim=-1)
            q = self.posterior(out)
            return q, getattr(self.posterior, "clamped", none)
        if isinstance(out, (tuple, list)):
            mu, logvar = out
        else:
            if width is not None and out.shape[-1] != 2 * width:
                raise VaekitError(
                    f"the encoder gives {out.shape[-1]} features per example but latent_dim {width} "
                    f"needs {2 * width} ([μ, log σ²]); give latent_dim = half the encoder's width, "
                    "or a posterior head")
            if out.shape[-1] % 2:
                raise VaekitError(f"the encoder gives {out.shape[-1]} features per example: an odd "
                                  "width cannot hold [μ, log σ²]")
            mu, logvar = out.chunk(2, dim=-1)
        mu, logvar = _full_precision(mu), _full_precision(logvar)
        if width is None:
            self._set_latent_dim(mu.shape[-1])
        elif mu.shape[-1] != width or logvar.shape[-1] != width:
            raise VaekitError(f"the encoder gives μ and log σ² {mu.shape[-1]} and {logvar.shape[-1]} "
                              f"wide, but latent_dim is {width}")
        clamped = (logvar.detach().abs() > LOGVAR_MAX).sum()  # the clamp is symmetric
        return diagonal_normal(mu, logvar), clamped

    def posterior_parameters(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor | None:
        """The posterior head's parameter vector [B, P] for x (``posterior.from_parameters``
        turns it into q(z|x)); None without a head. What the gap decomposition refits."""
        if self.posterior is None:
            return None
        out = self.encoder(*self._inputs(x, y))
        if isinstance(out, (tuple, list)):
            out = torch.cat(list(out), dim=-1)
        return self.posterior.parameters_of(out)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> Distribution:
        """p(x|z, θ) for z of shape [..., latent_dim]; batch shape [...]."""
        params, dims = self._decoder_output(z, y)
        return self.likelihood(params, dims)

    def decode_mean(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x|z]: the image a latent point stands for (probabilities for Bernoulli)."""
        params, dims = self._decoder_output(z, y)
        if hasattr(self.likelihood, "mean"):
            return self.likelihood.mean(params, dims)
        return self.likelihood(params, dims).mean

    @property
    def prior(self) -> Distribution:
        """p(z): the prior module's distribution (N(0, I) by default)."""
        if self.prior_module is None:
            raise VaekitError("the latent dimension is not known yet: give latent_dim, or encode data first")
        return self.prior_module()

    @torch.no_grad()
    def sample(self, n: int, *, mean: bool = True, y: torch.Tensor | int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws x ~ p(x|z), z ~ p(z); with ``mean=True`` E[x|z] instead of a draw.

        Everything after ``n`` is keyword-only (``sample(4, y=labels)``): a positional label
        tensor would otherwise bind to ``mean``.

        A conditional model draws class ``y`` (an int, or one label per draw); without
        ``y`` it cycles through the classes 0, 1, …, K−1, 0, …. ``generator``: the source of
        the prior draws (default: torch's global one).
        """
        z = self.prior_draws(n, generator)
        if self.conditional:
            if y is None:
                y = torch.arange(n) % self.num_classes
            y = torch.as_tensor(y, dtype=torch.long, device=z.device).expand(n)
        elif y is not None:
            raise VaekitError("this model is not conditional: it takes no class label")
        return self.decode_mean(z, y) if mean else self.decode(z, y).sample()

    def prior_draws(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws z ~ p(z), [n, latent_dim] (from ``generator`` when given)."""
        return _prior_draws(self.prior_module, n, generator)

    def _decoder_output(self, z: torch.Tensor, y: torch.Tensor | None):
        """(the decoder's output for z [..., L] as [..., *params_shape], the number of data
        dimensions in it): leading sample dimensions are flattened for the decoder."""
        z = self._decoder_latents(z)
        lead = z.shape[:-1]
        flat = z.reshape(-1, z.shape[-1])
        if self.conditional:
            y = self._check_labels(y).expand(lead).reshape(-1)
        out = _full_precision(self.decoder(*self._inputs(flat, y)))
        parameter_axis = getattr(self.likelihood, "params_per_dim", 1) > 1
        dims = out.dim() - 1 - int(parameter_axis)
        if self.event_shape is None:
            self.event_shape = tuple(out.shape[out.dim() - dims:])
        return out.reshape(*lead, *out.shape[1:]), dims

    @property
    def decoder_latent_dim(self) -> int:
        """How many leading latent coordinates the decoder reads (all of them here)."""
        return self.latent_dim

    def _decoder_latents(self, z: torch.Tensor) -> torch.Tensor:
        """What the decoder reads of z [..., L]: all of it, which must be latent_dim wide."""
        if self.latent_dim is not None and z.shape[-1] != self.latent_dim:
            raise VaekitError(f"decode takes latent points with {self.latent_dim} coordinates "
                              f"(latent_dim), got {z.shape[-1]}")
        return z

    def _inputs(self, data: torch.Tensor, y: torch.Tensor | None) -> tuple:
        """The networks' arguments: (data,) or, for a conditional model, (data, labels)."""
        if not self.conditional:
            if y is not None:
                raise VaekitError("this model is not conditional: it takes no class label")
            return (data,)
        return data, self._check_labels(y).to(data.device)

    def _check_labels(self, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise VaekitError(
                f"this conditional model needs class labels (0..{self.num_classes - 1}) "
                "with its data"
            )
        y = torch.as_tensor(y, dtype=torch.long)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise VaekitError(
                f"class labels must lie in 0..{self.num_classes - 1} for this model; "
                f"got {int(y.min())}..{int(y.max())}"
            )
        return y


class AE(VAE):
    """The deterministic autoencoder: z = f(x), trained on reconstruction log p(x|f(x)) only.

    ``encode`` returns a point mass at f(x), so code written for the VAE (latent plots,
    ``encode`` to file) works unchanged; it has no prior to sample from in principle, but
    ``sample`` decodes N(0, I) draws so the two can be compared side by side.
    """

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Distribution:
        if self.event_shape is None:
            self.event_shape = tuple(x.shape[1:])
        out = self.encoder(*self._inputs(x, y))
        if isinstance(out, Distribution):
            return out
        loc = _full_precision(out)
        if self.latent_dim is None:
            self._set_latent_dim(loc.shape[-1])
        return PointMass(loc)


class PointMass(Distribution):
    """δ(z − loc): the AE's 'posterior'. ``rsample`` returns ``loc`` (gradients flow)."""

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, loc: torch.Tensor):
        self.loc = loc
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def variance(self) -> torch.Tensor:
        return torch.zeros_like(self.loc)

    @property
    def stddev(self) -> torch.Tensor:
        return torch.zeros_like(self.loc)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self.loc.expand(*sample_shape, *self.loc.shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        hit = (value == self.loc).all(-1)
        return torch.where(hit, 0.0, -math.inf)


class TwoLayerVAE(VAE):
    """Two stochastic layers (Burda et al. 2016): x → h → z1 → h' → z2 in the encoder,
    z2 → h' → z1 → h → x in the generative model, with the hierarchical prior
    p(z1, z2) = p(z1|z2) p(z2), p(z2) = N(0, I) or a ``prior`` module over z2 (a VampPrior
    there makes Tomczak & Welling's HVAE), and q(z1, z2|x) = q(z1|x) q(z2|z1), q(z1|x)
    Gaussian from [μ, log σ²] or a ``posterior`` head over z1.

    The latent vector is the stack z = [z1, z2] (``latent_dim`` = L1 + L2): ``encode`` and
    ``prior`` return joint distributions over it (:class:`TwoStage`), and ``decode`` reads
    z1. So every generic estimator (Monte-Carlo ELBO, importance weights, the IWAE bound)
    works on it unchanged. The KL has no closed form here: use the ``mc`` estimator.

    A VampPrior on z2 mixes q(z2 | z1 = r(u_k)) over its pseudo-inputs u_k, r(u) the
    representative point of q(z1|u) (the mean for a Gaussian): Burda's inference network
    reaches z2 only through z1, so q(z2|u) itself has no closed form.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, likelihood: str | nn.Module,
                 z1_dim: int, z2_dim: int, up: nn.Module, down: nn.Module,
                 event_shape: tuple[int, ...] | None = None, *, prior: nn.Module | None = None,
                 posterior: nn.Module | None = None):
        super().__init__(encoder, decoder, likelihood, z1_dim + z2_dim, event_shape=event_shape)
        self.z1_dim, self.z2_dim = z1_dim, z2_dim
        self.up = up  # z1 -> [μ, log σ²] of q(z2|z1)
        self.down = down  # z2 -> [μ, log σ²] of p(z1|z2)
        self.prior_module = _default_prior(z2_dim, self)  # p(z2)
        self._attach(prior, posterior, z2_dim, z1_dim)

    @property
    def decoder_latent_dim(self) -> int:
        return self.z1_dim

    def _decoder_latents(self, z: torch.Tensor) -> torch.Tensor:
        """z1: the first z1_dim coordinates of the stack [z1, z2] (or z1 alone)."""
        if z.shape[-1] not in (self.latent_dim, self.z1_dim):
            raise VaekitError(f"decode takes [z1, z2] ({self.latent_dim} coordinates) or z1 "
                              f"({self.z1_dim}), got {z.shape[-1]}")
        return z[..., : self.z1_dim]

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Distribution:
        if self.event_shape is None:
            self.event_shape = tuple(x.shape[1:])
        q, self.clamped = self._joint_posterior(self.encoder(*self._inputs(x, y)))
        return q

    def _joint_posterior(self, h) -> tuple[Distribution, torch.Tensor]:
        # counts q(z1|x)'s clamped entries; q(z2|z1) is evaluated per draw
        q1, clamped = self._posterior(h if isinstance(h, Distribution) else _full_precision(h), self.z1_dim)
        return TwoStage(q1, self._q2, self.z2_dim), clamped

    def _q2(self, z1: torch.Tensor) -> Distribution:
        return diagonal_normal(*_per_point(self.up, z1).chunk(2, -1))

    def _prior_encode(self, u: torch.Tensor) -> Distribution:
        """q(z2 | z1 = r(u)) for the VampPrior's pseudo-inputs u (r: the representative point)."""
        q1, _ = self._posterior(_full_precision(self.encoder(u)), self.z1_dim)
        return self._q2(representative(q1))

    @property
    def prior(self) -> Distribution:
        return TwoStage(self.prior_module(), lambda z2: diagonal_normal(*_per_point(self.down, z2).chunk(2, -1)),
                        self.z1_dim, first_goes_last=True)

    def prior_draws(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if generator is None:
            return self.prior.sample((n,))
        z2 = _prior_draws(self.prior_module, n, generator)
        p1 = diagonal_normal(*self.down(z2).chunk(2, -1))
        eps = torch.randn(n, self.z1_dim, generator=generator, device=generator.device).to(z2.device)
        return torch.cat([p1.mean + p1.stddev * eps, z2], dim=-1)


class TwoStage(Distribution):
    """The joint law of a ~ ``first`` and b ~ ``then(a)`` (``b_dim`` coordinates), as the
    stacked vector [a, b] (or [b, a] with ``first_goes_last``):
    log_prob = log first(a) + log then(a)(b).

    ``first`` is any distribution over the last axis (a diagonal Gaussian, a mixture prior,
    a flow posterior); ``then(a)`` a diagonal Normal (``Independent``). A flow's density is
    defined at its own draws only, so estimators draw and score together with
    :meth:`rsample_and_log_prob`. ``mean`` and ``variance`` follow the path of means (b's
    moments at a = E[a]); :attr:`representative` the path of representative points (the
    same for Gaussians).
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, first: Distribution, then, b_dim: int, first_goes_last: bool = False):
        self.first, self.then, self.first_goes_last = first, then, first_goes_last
        a_dim = first.event_shape[-1]
        self.sizes = (b_dim, a_dim) if first_goes_last else (a_dim, b_dim)
        super().__init__(first.batch_shape, torch.Size([a_dim + b_dim]), validate_args=False)

    def _stack(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([b, a] if self.first_goes_last else [a, b], dim=-1)

    def _split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        left, right = z.split(self.sizes, dim=-1)
        return (right, left) if self.first_goes_last else (left, right)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        a = self.first.rsample(sample_shape)
        return self._stack(a, self.then(a).rsample())

    def rsample_and_log_prob(self, sample_shape: torch.Size | tuple = torch.Size()
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, log q(z)) for reparameterised draws: each stage scored at its own draws."""
        from vaekit.estimators import log_prob_at_own_sample

        a, log_a = log_prob_at_own_sample(self.first, sample_shape)
        then = self.then(a)
        b = then.rsample()
        return self._stack(a, b), log_a + then.log_prob(b)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            if self.first.has_rsample:  # the draws vaekit has always made for Gaussians
                return self.rsample(sample_shape)
            a = self.first.sample(sample_shape)  # a mixture prior: no reparameterisation
            return self._stack(a, self.then(a).sample())

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        a, b = self._split(z)
        return self.first.log_prob(a) + self.then(a).log_prob(b)

    def log_prob_dims(self, z: torch.Tensor) -> torch.Tensor:
        """Per-coordinate log densities [..., L] (conditionals given the sample's a) whose
        sum is ``log_prob``: what free bits floors per dimension. Defined when ``first``
        factorises over coordinates (a diagonal Gaussian)."""
        if not _factorises(self.first):
            raise VaekitError(f"per-coordinate densities are undefined for a two-layer model whose "
                              f"first stage is a {type(self.first).__name__}")
        a, b = self._split(z)
        return self._stack(self.first.base_dist.log_prob(a), self.then(a).base_dist.log_prob(b))

    @property
    def invertible(self) -> bool:
        """Whether ``log_prob`` is defined at any point (``first`` is no flow without an inverse)."""
        return bool(getattr(self.first, "invertible", True))

    @property
    def representative(self) -> torch.Tensor:
        a = representative(self.first)
        return self._stack(a, representative(self.then(a)))

    @property
    def mean(self) -> torch.Tensor:
        a = self.first.mean
        return self._stack(a, self.then(a).mean)

    @property
    def variance(self) -> torch.Tensor:
        return self._stack(self.first.variance, self.then(self.first.mean).variance)


class StandardNormal(Normal):
    """N(0, 1) in every coordinate, shaped like ``zero``: the prior's base distribution."""

    def __init__(self, zero: torch.Tensor):
        super().__init__(zero, torch.ones_like(zero), validate_args=False)


@register_kl(Normal, StandardNormal)
def _kl_normal_standard_normal(q: Normal, p: StandardNormal) -> torch.Tensor:
    # KL(N(μ, σ²) ‖ N(0, 1)) = ½(μ² + σ² − 1) − log σ: the textbook form, in 7 tensor ops
    # where torch's general Normal–Normal rule takes 10 (each op also costs a backward node).
    return 0.5 * (q.loc.pow(2) + q.scale.pow(2) - 1) - q.scale.log()


def _factorises(dist: Distribution) -> bool:
    """Whether ``dist`` is a product over the last axis of per-coordinate laws whose
    ``base_dist.log_prob`` gives each coordinate's log density."""
    return isinstance(dist, Independent) and dist.reinterpreted_batch_ndims == 1


def _default_prior(latent_dim: int, model: nn.Module) -> nn.Module:
    """N(0, I) over ``latent_dim`` coordinates, on the model's device (no state-dict entry)."""
    from vaekit.priors import StandardNormal as StandardNormalPrior

    device = next((p.device for p in model.parameters()), None)
    prior = StandardNormalPrior(latent_dim)
    return prior if device is None else prior.to(device)


def _part_dim(part) -> int | None:
    dim = getattr(part, "latent_dim", None)
    return None if dim is None else int(dim)


def _check_part(kind: str, part, dim: int | None) -> None:
    if not isinstance(part, nn.Module):
        raise VaekitError(f"the {kind} must be an nn.Module (its parameters are the model's); "
                          f"got {type(part).__name__}")
    own = _part_dim(part)
    if own is not None and dim is not None and own != dim:
        raise VaekitError(f"the {kind} is over {own} latent coordinates but the model's "
                          f"{'latent_dim' if kind == 'prior' else 'posterior'} has {dim}")


def _prior_draws(prior: nn.Module, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` draws from a prior module: its own ``draws`` where it has one (vaekit's priors),
    else its distribution's ``sample`` (driven by ``generator`` in a forked state)."""
    if hasattr(prior, "draws"):
        return prior.draws(n, generator)
    dist = prior()
    if generator is None:
        return dist.sample((n,))
    from vaekit.priors import _seeded_sample

    return _seeded_sample(dist, n, generator)


def diagonal_normal(mu: torch.Tensor, logvar: torch.Tensor) -> Distribution:
    """N(μ, diag σ²) with event shape [L], from μ and log σ² (clamped to ±LOGVAR_MAX); its
    ``rsample`` draws from the training step's keyed noise (:mod:`vaekit.noise`) when active."""
    logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
    return Independent(KeyedNormal(mu, torch.exp(0.5 * logvar), validate_args=False), 1)


class KeyedNormal(Normal):
    """A Normal whose reparameterised draws μ + σ ε take ε from :mod:`vaekit.noise` inside a
    training step (torch's generator otherwise: the same arithmetic as ``Normal.rsample``)."""

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        eps = noise.standard_normal(self._extended_shape(sample_shape), self.loc.dtype, self.loc.device)
        if eps is None:
            return super().rsample(sample_shape)
        return self.loc + eps * self.scale


def _per_point(net: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """``net`` on latent points z [..., L], fed as networks take them ([N, L]): leading
    sample dimensions flattened for the call and restored after, in float32."""
    out = _full_precision(net(z.reshape(-1, z.shape[-1])))
    return out.reshape(*z.shape[:-1], out.shape[-1])


def _full_precision(t: torch.Tensor) -> torch.Tensor:
    """Network outputs under bf16/fp16 autocast, back in float32: the log-densities summed
    over hundreds of pixels, and the KL, are computed at full precision."""
    return t.float() if t.dtype in _LOW_PRECISION else t
