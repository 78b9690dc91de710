"""Priors as parts (vaekit.priors): densities against hand-written formulas, gradients,
draws from a generator, the VampPrior's binding to an encoder."""

import math

import pytest
import torch
from torch import nn

from vaekit import nets
from vaekit.errors import VaekitError
from vaekit.model import VAE, TwoLayerVAE, diagonal_normal
from vaekit.objectives import kl_divergence
from vaekit.priors import MixtureOfGaussians, StandardNormal, VampPrior, top_latent_encoder


def test_standard_normal_is_the_models_prior_bit_for_bit():
    prior = StandardNormal(3)
    assert dict(prior.state_dict()) == {}  # nothing new in model.safetensors
    model = VAE(nn.Linear(4, 6), nn.Linear(3, 4), latent_dim=3)
    q = diagonal_normal(torch.randn(5, 3), torch.randn(5, 3))
    assert torch.equal(kl_divergence(q, prior()), kl_divergence(q, model.prior))
    z = torch.randn(2, 5, 3)
    expected = -0.5 * (z**2).sum(-1) - 1.5 * math.log(2 * math.pi)
    torch.testing.assert_close(prior().log_prob(z), expected)


def test_standard_normal_draws_come_from_the_generator_only():
    prior = StandardNormal(4)
    state = torch.random.get_rng_state()
    a = prior.draws(6, torch.Generator().manual_seed(1))
    b = prior.draws(6, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (6, 4)
    assert torch.equal(state, torch.random.get_rng_state())


def test_mixture_of_gaussians_log_density_is_the_formula():
    torch.manual_seed(0)
    prior = MixtureOfGaussians(2, components=3).double()
    with torch.no_grad():
        prior.logvar.normal_()
        prior.logits.normal_()
    z = torch.randn(4, 5, 2, dtype=torch.float64)
    prior.requires_grad_(False)
    weights = torch.softmax(prior.logits, 0).tolist()
    expected = torch.empty(4, 5, dtype=torch.float64)
    for s in range(4):
        for b in range(5):
            total = 0.0
            for k in range(3):
                density = weights[k]
                for j in range(2):
                    var = math.exp(float(prior.logvar[k, j]))
                    diff = float(z[s, b, j] - prior.loc[k, j])
                    density *= math.exp(-diff * diff / (2 * var)) / math.sqrt(2 * math.pi * var)
                total += density
            expected[s, b] = math.log(total)
    torch.testing.assert_close(prior().log_prob(z), expected, rtol=1e-10, atol=1e-10)
    assert prior().log_prob(z[0, 0]).shape == ()


def test_mixture_of_gaussians_learns_every_parameter_and_draws_its_law():
    torch.manual_seed(0)
    prior = MixtureOfGaussians(2, components=3)
    (-prior().log_prob(torch.randn(7, 2)).sum()).backward()
    for name, p in prior.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.0, 1.0, -1.0]))
    z = prior.draws(200_000, torch.Generator().manual_seed(0))
    weights = torch.softmax(prior.logits.detach(), 0)
    mean = (weights[:, None] * prior.loc.detach()).sum(0)
    torch.testing.assert_close(z.mean(0), mean, atol=0.02, rtol=0)
    again = prior.draws(200_000, torch.Generator().manual_seed(0))
    assert torch.equal(z, again)


def _encoder(d_in=6, latent=3):
    net = nn.Sequential(nn.Linear(d_in, 8), nn.Tanh(), nn.Linear(8, 2 * latent))
    return net, (lambda u: diagonal_normal(*net(u.flatten(1)).chunk(2, -1)))


def test_vampprior_is_the_mean_of_the_pseudo_inputs_posteriors():
    torch.manual_seed(0)
    net, encode = _encoder()
    prior = VampPrior((2, 3), latent_dim=3, components=5, init_std=0.3).bind(encode)
    u = prior.pseudo_inputs
    assert u.shape == (5, 2, 3) and float(u.detach().min()) >= 0 and float(u.detach().max()) <= 1
    z = torch.randn(4, 7, 3)
    mu, logvar = net(u.flatten(1)).chunk(2, -1)
    per_k = torch.stack([
        torch.distributions.Normal(mu[k], torch.exp(0.5 * logvar[k])).log_prob(z).sum(-1)
        for k in range(5)
    ], dim=-1)
    expected = torch.logsumexp(per_k, -1) - math.log(5)
    torch.testing.assert_close(prior().log_prob(z), expected)


def test_vampprior_gradients_reach_the_pseudo_inputs_and_the_encoder():
    torch.manual_seed(0)
    net, encode = _encoder()
    prior = VampPrior((6,), latent_dim=3, components=4, encode=encode)
    (-prior().log_prob(torch.randn(5, 3)).sum()).backward()
    assert prior.pseudo_weights.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    # the encoder is the model's: not saved a second time with the prior
    assert list(prior.state_dict()) == ["pseudo_weights"]


def test_vampprior_initialised_from_data_and_refusals():
    data = torch.rand(4, 6)
    prior = VampPrior((6,), latent_dim=3, components=4, init=data, init_std=0.0)
    torch.testing.assert_close(prior.pseudo_inputs, data)
    with pytest.raises(VaekitError, match=r"bind\(model.encode\)"):
        prior()
    with pytest.raises(VaekitError, match=r"\[4, 6\]"):
        VampPrior((6,), latent_dim=3, components=4, init=torch.rand(3, 6))
    prior.bind(lambda u: diagonal_normal(torch.zeros(4, 2), torch.zeros(4, 2)))
    with pytest.raises(VaekitError, match=r"event \[2\]"):
        prior()


def test_vampprior_draws_follow_the_mixture_from_a_generator():
    torch.manual_seed(0)
    net, encode = _encoder()
    prior = VampPrior((6,), latent_dim=3, components=4, encode=encode, init_std=0.3)
    state = torch.random.get_rng_state()
    a = prior.draws(100_000, torch.Generator().manual_seed(3))
    assert torch.equal(state, torch.random.get_rng_state())
    assert torch.equal(a, prior.draws(100_000, torch.Generator().manual_seed(3)))
    with torch.no_grad():
        mu = net(prior.pseudo_inputs).chunk(2, -1)[0]
    torch.testing.assert_close(a.mean(0), mu.mean(0), atol=0.03, rtol=0)


def test_vampprior_on_the_top_latent_of_the_two_layer_model():
    torch.manual_seed(0)
    model = TwoLayerVAE(nets.MLP(6, [8], 2 * 4), nets.MLP(4, [8], 6), "bernoulli", 4, 2,
                        up=nets.MLP(4, [5], 2 * 2), down=nets.MLP(2, [5], 2 * 4))
    prior = VampPrior((6,), latent_dim=2, components=3).bind(top_latent_encoder(model))
    p2 = prior()
    assert p2.event_shape == (2,) and p2.log_prob(torch.randn(5, 2)).shape == (5,)
    q = model.encode(prior.pseudo_inputs)
    expected = q.then(q.first.mean).log_prob(torch.zeros(1, 1, 2)).logsumexp(-1) - math.log(3)
    torch.testing.assert_close(p2.log_prob(torch.zeros(1, 2)), expected)


def test_standard_normal_draws_are_the_models_prior_draws():
    model = VAE(nn.Linear(4, 6), nn.Linear(3, 4), latent_dim=3)
    torch.manual_seed(5)
    before = model.prior_draws(4)
    torch.manual_seed(5)
    assert torch.equal(StandardNormal(3).draws(4), before)
    assert torch.equal(StandardNormal(3).draws(4, torch.Generator().manual_seed(2)),
                       model.prior_draws(4, torch.Generator().manual_seed(2)))


def test_vampprior_refuses_components_without_a_density_everywhere():
    from vaekit.posteriors import IAF, Planar

    torch.manual_seed(0)
    planar = Planar(2, steps=2, features=6)
    prior = VampPrior((6,), latent_dim=2, components=3, encode=planar)
    with pytest.raises(VaekitError, match="flow without an inverse"):
        prior()
    iaf = IAF(2, steps=2, features=6, hidden=8)
    prior = VampPrior((6,), latent_dim=2, components=3, encode=iaf, init_std=0.3)
    z = torch.randn(5, 2)
    expected = iaf(prior.pseudo_inputs).log_prob(z.unsqueeze(-2)).logsumexp(-1) - math.log(3)
    torch.testing.assert_close(prior().log_prob(z), expected)  # IAF inverts: any z


@pytest.mark.parametrize("shape", [(7, 5), (3, 7, 5)])
def test_the_diagonal_mixtures_matrix_form_equals_torchs_broadcast_form(shape):
    """DiagonalMixture.log_prob (two matrix products in float64) against torch's own
    MixtureSameFamily at points near and far from the components, and their gradients."""
    from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

    from vaekit.priors import DiagonalMixture

    g = torch.Generator().manual_seed(0)
    loc = torch.randn(11, 5, generator=g, dtype=torch.float64).requires_grad_()
    log_scale = (0.5 * torch.randn(11, 5, generator=g, dtype=torch.float64) - 1).requires_grad_()
    logits = torch.randn(11, generator=g, dtype=torch.float64).requires_grad_()
    z = (3 * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()

    def density(cls):
        parts = Independent(Normal(loc, log_scale.exp()), 1)
        return cls(Categorical(logits=logits), parts).log_prob(z)

    fast, slow = density(DiagonalMixture), density(MixtureSameFamily)
    assert fast.shape == slow.shape == shape[:-1]
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-9)
    for a, b in zip(torch.autograd.grad(fast.sum(), (z, loc, log_scale, logits)),
                    torch.autograd.grad(slow.sum(), (z, loc, log_scale, logits)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)
