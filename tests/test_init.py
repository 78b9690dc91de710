"""Initialisation recipes: Glorot-uniform bounds, the output bias at the likelihood's
natural parameter of the data mean (checked through the model's own decode_mean)."""

from __future__ import annotations

import math

import pytest
import torch

import vaekit
from vaekit import init
from vaekit.errors import VaekitError
from vaekit.likelihoods import continuous_bernoulli_mean
from vaekit.nets import MLP, ConvDecoder, ConvEncoder


def test_glorot_uniform_bounds_and_zero_biases():
    net = MLP(784, [200, 200], 100, "tanh")
    generator = torch.Generator().manual_seed(0)
    init.glorot_(net, generator=generator)
    for layer in (m for m in net if isinstance(m, torch.nn.Linear)):
        fan_out, fan_in = layer.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        w = layer.weight.detach()
        assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.98 * bound
        assert float(w.var()) == pytest.approx(bound**2 / 3, rel=0.05)  # U(-b, b) has variance b²/3
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    again = init.glorot_(MLP(784, [200, 200], 100, "tanh"), generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0].weight, net[0].weight)  # the generator decides


def test_normal_init_draws_every_parameter_with_the_given_sd():
    net = init.normal_(MLP(500, [500], 500), 0.01, generator=torch.Generator().manual_seed(0))
    every = torch.cat([p.flatten() for p in net.parameters()])
    every = every.detach()
    assert float(every.std()) == pytest.approx(0.01, rel=0.02) and abs(float(every.mean())) < 1e-4


def _model(likelihood: str, params: int = 1) -> vaekit.VAE:
    decoder = MLP(3, [5], (params, 6) if params > 1 else (6,))
    return vaekit.VAE(MLP(6, [5], 6), decoder, likelihood, latent_dim=3)


def _with_zero_last_weights(model):
    """The decoder's output then is its bias alone, whatever z is."""
    with torch.no_grad():
        model.decoder[-1].weight.zero_()
    return model


def test_output_bias_bernoulli_is_the_clipped_logit_of_the_mean_and_decodes_to_it():
    x = torch.tensor([[0.0, 1.0, 0.5, 0.2, 0.9, 0.0005]] * 2 + [[0.0, 1.0, 0.5, 0.4, 0.7, 0.0005]])
    mean = x.mean(0)
    model = _with_zero_last_weights(_model("bernoulli"))
    bias = init.output_bias_(model, mean)
    clipped = mean.double().clamp(1e-3, 1 - 1e-3)
    torch.testing.assert_close(bias.double(), torch.log(clipped / (1 - clipped)), atol=1e-6, rtol=0)
    got = model.decode_mean(torch.randn(4, 3)).detach()
    torch.testing.assert_close(got, clipped.float().expand(4, 6), atol=1e-6, rtol=0)


def test_output_bias_continuous_bernoulli_decodes_to_the_data_mean():
    mean = torch.tensor([0.01, 0.2, 0.5, 0.73, 0.98, 0.9995])
    model = _with_zero_last_weights(_model("continuous-bernoulli"))
    init.output_bias_(model, mean)
    want = mean.clamp(1e-3, 1 - 1e-3)
    eta = init.natural_parameter(model.likelihood, mean)  # float64; the bias is its float32 rounding
    torch.testing.assert_close(continuous_bernoulli_mean(eta), mean.double().clamp(1e-3, 1 - 1e-3), atol=1e-12, rtol=0)
    torch.testing.assert_close(model.decode_mean(torch.randn(2, 3)).detach(), want.expand(2, 6), atol=1e-6, rtol=0)


@pytest.mark.parametrize("likelihood", ["gaussian", "laplace"])
def test_output_bias_gaussian_and_laplace_is_the_mean(likelihood):
    mean = torch.tensor([-3.0, 0.0, 2.5, 10.0, -0.1, 4.0])
    model = _with_zero_last_weights(_model(likelihood))
    init.output_bias_(model, mean)
    torch.testing.assert_close(model.decode_mean(torch.randn(2, 3)).detach(), mean.expand(2, 6))


def test_output_bias_logistic_sets_the_location_half_only():
    mean = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    model = _with_zero_last_weights(_model("logistic", params=2))
    before = model.decoder[-1].bias[6:].clone()
    init.output_bias_(model, mean)
    torch.testing.assert_close(model.decode_mean(torch.randn(2, 3)).detach(), mean.expand(2, 6))
    assert torch.equal(model.decoder[-1].bias[6:], before)


def test_output_bias_of_a_conv_decoder_is_per_channel():
    x = torch.rand(50, 3, 8, 8) * torch.tensor([0.1, 0.5, 0.9])[:, None, None]
    model = vaekit.VAE(ConvEncoder((3, 8, 8), 8, [8]), ConvDecoder(4, (3, 8, 8), [8]), "bernoulli", latent_dim=4)
    bias = init.output_bias_(model, x.mean(0))
    per_channel = x.mean((0, 2, 3)).double()
    torch.testing.assert_close(bias.double(), torch.log(per_channel / (1 - per_channel)), atol=1e-5, rtol=0)


def test_output_bias_refuses_what_it_cannot_set():
    with pytest.raises(VaekitError, match="outside"):
        init.output_bias_(_model("bernoulli"), torch.full((6,), 1.5))
    with pytest.raises(VaekitError, match="has 6 biases"):
        init.output_bias_(_model("bernoulli"), torch.full((7,), 0.5))
    with pytest.raises(VaekitError, match="decoder"):
        init.output_bias_(torch.nn.Linear(2, 2), torch.zeros(2))
