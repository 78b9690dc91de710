"""The models: ``VAE`` (the lecture's) and ``AE`` (its deterministic baseline).

``encode(x)`` returns q(z|x) and ``decode(z)`` returns p(x|z), both as
``torch.distributions`` objects whose ``log_prob`` gives one value per example.
No loss lives here: objectives are functions in :mod:`vaekit.objectives`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal

from vaekit import nets
from vaekit.likelihoods import make_likelihood

# exp(0.5 * logvar) stays within [4.5e-5, 2.2e4]: far beyond any useful posterior scale,
# but it keeps exp() from overflowing or underflowing to an exact zero scale. Hitting the
# bounds is not hidden: ``encode`` counts the clamped entries (``clamped``) and training
# reports them per epoch (``train_logvar_clamped`` in metrics.jsonl).
LOGVAR_MIN, LOGVAR_MAX = -20.0, 20.0


class VAE(nn.Module):
    """q(z|x) = N(μ_I, diag σ_I²) with [μ_I, log σ_I²] = f_I(x); p(z) = N(0, I); p(x|z) from
    the decoder network and a likelihood family."""

    def __init__(
        self,
        event_shape: tuple[int, ...],
        latent_dim: int,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood: nn.Module,
    ):
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.latent_dim = latent_dim
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.register_buffer("_zero", torch.zeros(latent_dim), persistent=False)
        self.clamped = torch.zeros((), dtype=torch.long)  # entries clamped by the last encode

    @property
    def data_dim(self) -> int:
        return math.prod(self.event_shape)

    def encode(self, x: torch.Tensor) -> Distribution:
        """q(z|x, φ) with batch shape [B] and event shape [latent_dim]."""
        h = self.encoder(x.reshape(x.shape[0], -1))
        mu, logvar = h.chunk(2, dim=-1)
        self.clamped = ((logvar < LOGVAR_MIN) | (logvar > LOGVAR_MAX)).sum()
        logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        return Independent(Normal(mu, torch.exp(0.5 * logvar), validate_args=False), 1)

    def decode(self, z: torch.Tensor) -> Distribution:
        """p(x|z, θ) for z of shape [..., latent_dim]; batch shape [...]."""
        lead = z.shape[:-1]
        out = self.decoder(z.reshape(-1, self.latent_dim))
        return self.likelihood(out.reshape(*lead, *self.event_shape))

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z]: the image a latent point stands for (probabilities for Bernoulli)."""
        lead = z.shape[:-1]
        out = self.decoder(z.reshape(-1, self.latent_dim))
        return self.likelihood.mean(out.reshape(*lead, *self.event_shape))

    @property
    def prior(self) -> Distribution:
        """p(z) = N(0, I)."""
        return Independent(Normal(self._zero, torch.ones_like(self._zero)), 1)

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True) -> torch.Tensor:
        """``n`` draws x ~ p(x|z), z ~ p(z); with ``mean=True`` E[x|z] instead of a draw."""
        z = self.prior.sample((n,))
        return self.decode_mean(z) if mean else self.decode(z).sample()


class AE(VAE):
    """The deterministic autoencoder: z = f(x), trained on reconstruction log p(x|f(x)) only.

    ``encode`` returns a point mass at f(x), so code written for the VAE (latent plots,
    ``encode`` to file) works unchanged; it has no prior to sample from in principle, but
    ``sample`` decodes N(0, I) draws so the two can be compared side by side.
    """

    def encode(self, x: torch.Tensor) -> Distribution:
        return PointMass(self.encoder(x.reshape(x.shape[0], -1)))


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


def build_model(config, event_shape: tuple[int, ...]) -> VAE:
    """The model a :class:`~vaekit.config.Config` describes, for data of ``event_shape``."""
    d = math.prod(event_shape)
    latent = config.latent_dim
    enc_out = latent if config.model == "ae" else 2 * latent
    encoder = nets.body(config.architecture, d, enc_out, config.hidden, config.activation)
    decoder = nets.body(config.architecture, latent, d, config.hidden[::-1], config.activation)
    likelihood = make_likelihood(config.likelihood, event_shape, config.sigma, config.sigma_min)
    cls = AE if config.model == "ae" else VAE
    return cls(event_shape, latent, encoder, decoder, likelihood)
