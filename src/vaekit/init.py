"""Initialisation recipes: Glorot-uniform weights, small Gaussian weights, and the decoder's
output bias set from the training data.

Why the output bias matters: with it at 0 the decoder starts predicting grey (logit 0)
everywhere, and a tanh network can only reach MNIST's background logit (about −7) by
saturating its last hidden layer, after which almost no gradient reaches the latent
variables. Burda et al.'s code (IWAE, 2016) starts the bias at the logit of the mean training
pixel, clipped to [0.001, 0.999], with Glorot-uniform weights and zero biases elsewhere.

Every function draws from ``generator`` (torch's global generator when None) and changes
only the module it is given.
"""

from __future__ import annotations

import torch
from torch import nn

from vaekit.errors import VaekitError

# Layers the recipes initialise: those with a weight matrix (or kernel) and a bias.
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
MEAN_CLIP = 1e-3  # Burda et al.: logit(clip(mean, 0.001, 0.999)); pixels that are always 0 get a finite logit


@torch.no_grad()
def glorot_(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Glorot-uniform weights, U(±√(6 / (fan_in + fan_out))) (Glorot & Bengio 2010, the
    choice for tanh units), and zero biases, for every linear and convolutional layer of
    ``module``. Returns ``module``."""
    for layer in _layers(module):
        nn.init.xavier_uniform_(layer.weight, generator=generator)
        if layer.bias is not None:
            layer.bias.zero_()
    return module


@torch.no_grad()
def normal_(module: nn.Module, std: float, generator: torch.Generator | None = None) -> nn.Module:
    """Every weight and bias of the linear and convolutional layers drawn from N(0, std²)
    (Kingma & Welling 2013 draw all parameters from N(0, 0.01)). Returns ``module``."""
    if not std > 0:
        raise VaekitError(f"std must be positive, got {std}")
    for layer in _layers(module):
        nn.init.normal_(layer.weight, 0.0, std, generator=generator)
        if layer.bias is not None:
            nn.init.normal_(layer.bias, 0.0, std, generator=generator)
    return module


def natural_parameter(likelihood: nn.Module, mean: torch.Tensor) -> torch.Tensor:
    """The decoder output at which ``likelihood``'s distribution has mean ``mean``
    (elementwise): the logit for the Bernoulli, the mean itself for the Gaussian, Laplace
    and the discretised logistic's location, the η with E[x] = mean for the continuous
    Bernoulli. Means of [0, 1] data are clipped to [0.001, 0.999] first."""
    from vaekit import likelihoods as lk

    mean = torch.as_tensor(mean, dtype=torch.float64)
    if isinstance(likelihood, (lk.BernoulliLikelihood, lk.ContinuousBernoulliLikelihood)):
        if bool(((mean < 0) | (mean > 1)).any()):
            raise VaekitError("the data mean lies outside [0, 1]: the Bernoulli likelihoods model data in [0, 1]")
        m = mean.clamp(MEAN_CLIP, 1 - MEAN_CLIP)
        if isinstance(likelihood, lk.BernoulliLikelihood):
            return torch.logit(m)
        return _continuous_bernoulli_logit(m)
    if isinstance(likelihood, (lk.GaussianLikelihood, lk.DiscretizedLogisticLikelihood)):
        return mean.clone()  # the Laplace likelihood subclasses the Gaussian one
    raise VaekitError(
        f"no natural parameter is known for the likelihood {type(likelihood).__name__}: set the decoder's "
        "output bias yourself"
    )


@torch.no_grad()
def output_bias_(model: nn.Module, data_mean: torch.Tensor, layer: nn.Module | None = None) -> torch.Tensor:
    """Set the bias of the decoder's output ``layer`` (default: the last layer of
    ``model.decoder`` that has a bias) to the likelihood's natural parameter at
    ``data_mean``, the training data's mean shaped like one example. A layer with one bias
    per output value takes it per dimension; a convolutional output layer (one bias per
    channel) takes it at each channel's mean. For the discretised logistic only the location
    half of the outputs is set. Returns the bias."""
    likelihood = getattr(model, "likelihood", None)
    decoder = getattr(model, "decoder", None)
    if likelihood is None or decoder is None:
        raise VaekitError("output_bias_ needs a model with a decoder and a likelihood (a vaekit.VAE)")
    if layer is None:
        layer = next((m for m in reversed(list(decoder.modules())) if getattr(m, "bias", None) is not None), None)
        if layer is None:
            raise VaekitError("the decoder has no layer with a bias to set")
    bias = layer.bias
    data_mean = torch.as_tensor(data_mean).detach().double().cpu()
    params = getattr(likelihood, "params_per_dim", 1)
    d = data_mean.numel()
    if bias.numel() == params * d:
        natural = natural_parameter(likelihood, data_mean.reshape(-1))
    elif data_mean.dim() >= 2 and bias.numel() == params * data_mean.shape[0]:
        per_channel = data_mean.reshape(data_mean.shape[0], -1).mean(1)
        natural, d = natural_parameter(likelihood, per_channel), data_mean.shape[0]
    else:
        raise VaekitError(
            f"the decoder's output layer has {bias.numel()} biases, but data shaped {list(data_mean.shape)} "
            f"with {params} output(s) per value need {params * d} (or one per channel): pass the output layer"
        )
    bias[:d] = natural.to(bias.dtype)  # the parameter-major layout puts the mean (location) first
    return bias


def _continuous_bernoulli_logit(mean: torch.Tensor) -> torch.Tensor:
    """η with E[x | η] = mean, by bisection (the mean increases with η; float64, 80 halvings
    of [−1/m_min, 1/(1 − m_max)] reach float64 resolution)."""
    from vaekit.likelihoods import continuous_bernoulli_mean

    lo = torch.full_like(mean, -1.0 / MEAN_CLIP - 1)
    hi = torch.full_like(mean, 1.0 / MEAN_CLIP + 1)
    for _ in range(80):
        mid = (lo + hi) / 2
        below = continuous_bernoulli_mean(mid) < mean
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


def _layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, LAYERS)]
