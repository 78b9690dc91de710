"""The models: ``VAE`` (the lecture's), ``AE`` (its deterministic baseline) and
``TwoLayerVAE`` (two stochastic layers, Burda et al. 2016).

``encode(x)`` returns q(z|x) and ``decode(z)`` returns p(x|z), both as
``torch.distributions`` objects whose ``log_prob`` gives one value per example.
No loss lives here: objectives are functions in :mod:`vaekit.objectives`.

The conditional VAE is the ``VAE`` with ``num_classes > 0``: ``encode(x, y)`` and
``decode(z, y)`` then see the one-hot label appended to their input.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal, register_kl

from vaekit import nets
from vaekit.errors import VaekitError
from vaekit.likelihoods import make_likelihood

# exp(0.5 * logvar) stays within [4.5e-5, 2.2e4]: far beyond any useful posterior scale,
# but it keeps exp() from overflowing or underflowing to an exact zero scale. Hitting the
# bounds is not hidden: ``encode`` counts the clamped entries (``clamped``) and training
# reports them per epoch (``train_logvar_clamped`` in metrics.jsonl).
LOGVAR_MAX = 20.0
LOGVAR_MIN = -LOGVAR_MAX


class VAE(nn.Module):
    """q(z|x) = N(μ_I, diag σ_I²) with [μ_I, log σ_I²] = f_I(x); p(z) = N(0, I); p(x|z) from
    the decoder network and a likelihood family.

    With ``num_classes = K > 0`` it is the conditional VAE: q(z|x, y) and p(x|z, y) take the
    one-hot label y appended to their input (the encoder body then has D + K inputs, the
    decoder body L + K); the prior stays N(0, I).
    """

    def __init__(
        self,
        event_shape: tuple[int, ...],
        latent_dim: int,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood: nn.Module,
        num_classes: int = 0,
    ):
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.latent_dim = latent_dim
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.num_classes = num_classes
        self.register_buffer("_zero", torch.zeros(latent_dim), persistent=False)
        self.clamped = torch.zeros((), dtype=torch.long)  # entries clamped by the last encode

    @property
    def data_dim(self) -> int:
        return math.prod(self.event_shape)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Distribution:
        """q(z|x, φ) with batch shape [B] and event shape [latent_dim]."""
        h = self.encoder(self._with_label(x.reshape(x.shape[0], -1), y))
        self.clamped = _count_clamped(h)
        return _diagonal_normal(h)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> Distribution:
        """p(x|z, θ) for z of shape [..., latent_dim]; batch shape [...]."""
        return self.likelihood(self._decoder_output(z, y))

    def decode_mean(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x|z]: the image a latent point stands for (probabilities for Bernoulli)."""
        return self.likelihood.mean(self._decoder_output(z, y))

    @property
    def prior(self) -> Distribution:
        """p(z) = N(0, I)."""
        return Independent(StandardNormal(self._zero), 1)

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True, y: torch.Tensor | int | None = None) -> torch.Tensor:
        """``n`` draws x ~ p(x|z), z ~ p(z); with ``mean=True`` E[x|z] instead of a draw.

        A conditional model draws class ``y`` (an int, or one label per draw); without
        ``y`` it cycles through the classes 0, 1, …, K−1, 0, ….
        """
        z = self.prior.sample((n,))
        if self.num_classes:
            if y is None:
                y = torch.arange(n) % self.num_classes
            y = torch.as_tensor(y, dtype=torch.long).expand(n)
        elif y is not None:
            raise VaekitError("this model is not conditional: it takes no class label")
        return self.decode_mean(z, y) if mean else self.decode(z, y).sample()

    def _decoder_output(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The decoder body on z of shape [..., L], viewed as the likelihood's input:
        [..., *event_shape], or [..., P, *event_shape] for P parameters per dimension."""
        lead = z.shape[:-1]
        flat = z[..., : self.decoder_latent_dim].reshape(-1, self.decoder_latent_dim)
        if self.num_classes:
            y = self._check_labels(y).expand(lead).reshape(-1)
        out = self.decoder(self._with_label(flat, y))
        per_dim = getattr(self.likelihood, "params_per_dim", 1)
        params = (per_dim,) if per_dim > 1 else ()
        return out.reshape(*lead, *params, *self.event_shape)

    @property
    def decoder_latent_dim(self) -> int:
        """How many leading latent coordinates the decoder reads (all of them here)."""
        return self.latent_dim

    def _with_label(self, flat: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """``flat`` [N, F] with the one-hot label appended: [N, F + K] (unchanged if K = 0)."""
        if not self.num_classes:
            if y is not None:
                raise VaekitError("this model is not conditional: it takes no class label")
            return flat
        y = self._check_labels(y)
        onehot = nn.functional.one_hot(y, self.num_classes).to(flat.dtype)
        return torch.cat([flat, onehot], dim=-1)

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
        return PointMass(self.encoder(self._with_label(x.reshape(x.shape[0], -1), y)))


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
    p(z1, z2) = p(z1|z2) p(z2), p(z2) = N(0, I), and q(z1, z2|x) = q(z1|x) q(z2|z1).

    The latent vector is the stack z = [z1, z2] (``latent_dim`` = L1 + L2): ``encode`` and
    ``prior`` return joint distributions over it (:class:`TwoStage`), and ``decode`` reads
    z1. So every generic estimator (Monte-Carlo ELBO, importance weights, the IWAE bound)
    works on it unchanged. The KL has no closed form here: use the ``mc`` estimator.
    """

    def __init__(self, event_shape, z1_dim: int, z2_dim: int, encoder, decoder, likelihood,
                 up: nn.Module, down: nn.Module):
        super().__init__(event_shape, z1_dim + z2_dim, encoder, decoder, likelihood)
        self.z1_dim, self.z2_dim = z1_dim, z2_dim
        self.up = up  # z1 -> [μ, log σ²] of q(z2|z1)
        self.down = down  # z2 -> [μ, log σ²] of p(z1|z2)
        self.register_buffer("_zero2", torch.zeros(z2_dim), persistent=False)

    @property
    def decoder_latent_dim(self) -> int:
        return self.z1_dim

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Distribution:
        h = self.encoder(self._with_label(x.reshape(x.shape[0], -1), y))
        self.clamped = _count_clamped(h)  # q(z1|x)'s; q(z2|z1) is evaluated per draw
        q1 = _diagonal_normal(h)
        return TwoStage(q1, lambda z1: _diagonal_normal(self.up(z1)), self.z2_dim)

    @property
    def prior(self) -> Distribution:
        p2 = Independent(StandardNormal(self._zero2), 1)
        return TwoStage(p2, lambda z2: _diagonal_normal(self.down(z2)), self.z1_dim,
                        first_goes_last=True)


class TwoStage(Distribution):
    """The joint law of a ~ ``first`` and b ~ ``then(a)`` (``b_dim`` coordinates), as the
    stacked vector [a, b] (or [b, a] with ``first_goes_last``):
    log_prob = log first(a) + log then(a)(b).

    ``first`` and ``then(a)`` are diagonal Normals (``Independent``) over the last axis.
    ``mean`` and ``variance`` follow the path of means (b's moments at a = E[a]): exact for
    a, the usual summary for b (its exact marginal moments have no closed form).
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, first: Independent, then, b_dim: int, first_goes_last: bool = False):
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

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        a, b = self._split(z)
        return self.first.log_prob(a) + self.then(a).log_prob(b)

    def log_prob_dims(self, z: torch.Tensor) -> torch.Tensor:
        """Per-coordinate log densities [..., L] (conditionals given the sample's a) whose
        sum is ``log_prob``: what free bits floors per dimension."""
        a, b = self._split(z)
        return self._stack(self.first.base_dist.log_prob(a), self.then(a).base_dist.log_prob(b))

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


def _count_clamped(h: torch.Tensor) -> torch.Tensor:
    """How many log-variances in the network output [μ, log σ²] fall outside the clamp."""
    logvar = h.chunk(2, dim=-1)[1]
    return (logvar.abs() > LOGVAR_MAX).sum()  # the clamp is symmetric: one comparison


def _diagonal_normal(h: torch.Tensor) -> Distribution:
    """[..., 2L] network output [μ, log σ²] -> N(μ, diag σ²) with event shape [L]."""
    mu, logvar = h.chunk(2, dim=-1)
    logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
    return Independent(Normal(mu, torch.exp(0.5 * logvar), validate_args=False), 1)


def build_model(config, event_shape: tuple[int, ...]) -> VAE:
    """The model a :class:`~vaekit.config.Config` describes, for data of ``event_shape``."""
    event_shape = tuple(event_shape)
    d = math.prod(event_shape)
    likelihood = make_likelihood(config.likelihood, event_shape, config.sigma, config.sigma_min,
                                 config.levels)
    out = d * likelihood.params_per_dim
    classes = config.classes if config.model == "cvae" else 0
    if config.model == "cvae" and classes < 1:
        raise VaekitError("model 'cvae' needs the number of classes (classes > 0, or labelled data)")
    latent = config.latent_dim
    z2 = config.latent_dim2 or max(1, latent // 2)
    enc_out = latent if config.model == "ae" else 2 * latent
    encoder = _body(config, event_shape, d + classes, enc_out, config.hidden, encoder=True)
    decoder = _body(config, event_shape, latent + classes, out, config.hidden[::-1], encoder=False)
    if config.model == "hvae":
        up = nets.mlp(latent, config.hidden2, 2 * z2, config.activation)
        down = nets.mlp(z2, config.hidden2[::-1], 2 * latent, config.activation)
        return TwoLayerVAE(event_shape, latent, z2, encoder, decoder, likelihood, up, down)
    cls = AE if config.model == "ae" else VAE
    return cls(event_shape, latent, encoder, decoder, likelihood, num_classes=classes)


def _body(config, event_shape, in_dim: int, out_dim: int, hidden: list[int], encoder: bool):
    if config.architecture != "conv":
        return nets.body(config.architecture, in_dim, out_dim, hidden, config.activation)
    nets.check_conv_shape(event_shape, config.channels)
    if encoder:
        extra = in_dim - math.prod(event_shape)
        return nets.ConvEncoder(event_shape, out_dim, config.channels, config.activation, extra)
    params = out_dim // math.prod(event_shape)
    return nets.ConvDecoder(in_dim, event_shape, config.channels, config.activation, params)


def with_classes(config, labels: torch.Tensor | None):
    """``config`` with ``classes`` set from the training labels for a conditional model
    (unchanged otherwise); a clear error when a CVAE has no labels to condition on."""
    import dataclasses

    if config.model != "cvae":
        return config
    if labels is None:
        raise VaekitError(
            f"model 'cvae' conditions on class labels, but the data '{config.data}' has none "
            "(give a .npz file with a 'labels' array)"
        )
    if int(labels.min()) < 0:
        raise VaekitError(f"class labels must be non-negative for model 'cvae'; found {int(labels.min())}")
    needed = int(labels.max()) + 1
    if config.classes and config.classes < needed:
        raise VaekitError(f"classes is {config.classes}, but the labels run up to {needed - 1}")
    return dataclasses.replace(config, classes=config.classes or needed)


def labels_for(model, dataset) -> torch.Tensor | None:
    """The labels to pass along with ``dataset`` to ``model``: its labels when the model is
    conditional, ``None`` otherwise (unconditional models ignore labels)."""
    if not getattr(model, "num_classes", 0):
        return None
    if dataset.labels is None:
        raise VaekitError(
            f"this conditional model needs class labels, but {dataset.name} has none"
        )
    return dataset.labels
