"""Model shapes and the distribution contract of encode/decode/prior/sample."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Distribution

from conftest import make_vae
from vaekit.model import AE, VAE


@pytest.mark.parametrize(
    ("shape", "architecture"),
    [((1, 8, 8), "mlp"), ((3, 4, 5), "mlp"), ((10,), "mlp"), ((10,), "linear"), ((1, 8, 8), "linear")],
)
def test_encode_decode_shapes_for_images_and_tabular(shape, architecture):
    torch.manual_seed(0)
    model = make_vae(shape, [16, 8], 3, architecture=architecture)
    x = torch.rand(5, *shape).round()
    q = model.encode(x)
    assert isinstance(q, Distribution)
    assert q.batch_shape == (5,) and q.event_shape == (3,)
    assert q.log_prob(q.sample()).shape == (5,)
    p = model.decode(q.rsample())
    assert p.batch_shape == (5,) and p.event_shape == shape
    assert p.log_prob(x).shape == (5,)
    # several samples per example decode in one call: batch shape [M, B]
    assert model.decode(q.rsample((4,))).log_prob(x).shape == (4, 5)
    assert model.sample(6).shape == (6, *shape)
    assert model.prior.sample((2,)).shape == (2, 3)


def test_mlp_config_builds_the_requested_layers():
    model = make_vae((784,), [400, 200], 20, activation="tanh")
    linears = [m for m in model.encoder if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 400), (400, 200), (200, 40)]
    linears = [m for m in model.decoder if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(20, 200), (200, 400), (400, 784)]
    assert any(isinstance(m, torch.nn.Tanh) for m in model.encoder)


def test_linear_architecture_is_affine():
    model = make_vae((6,), latent_dim=2, architecture="linear")
    assert len(model.encoder) == 1 and len(model.decoder) == 1


def test_prior_is_standard_normal():
    model = make_vae((3,), latent_dim=4)
    assert torch.equal(model.prior.mean, torch.zeros(4))
    assert torch.equal(model.prior.variance, torch.ones(4))


def test_autoencoder_is_deterministic_and_shares_the_interface():
    torch.manual_seed(0)
    model = make_vae((1, 4, 4), [8], 2, model="ae")
    assert isinstance(model, AE) and isinstance(model, VAE)
    x = torch.rand(3, 1, 4, 4)
    q = model.encode(x)
    assert torch.equal(q.rsample(), q.rsample())
    assert torch.equal(q.mean, q.sample())
    assert torch.all(q.variance == 0)
    assert torch.all(q.log_prob(q.mean) == 0)


def test_encoder_log_variance_is_clamped_to_a_safe_range():
    model = make_vae((2,), latent_dim=1, architecture="linear")
    with torch.no_grad():
        model.encoder[0].bias[1] = -1e6
    std = model.encode(torch.zeros(1, 2)).stddev
    assert torch.all(std > 0) and torch.isfinite(std).all()


def test_the_prior_kl_rule_is_the_general_normal_rule():
    from torch.distributions import Independent, Normal, kl_divergence

    from vaekit.model import StandardNormal

    g = torch.Generator().manual_seed(0)
    loc = torch.randn(6, 4, generator=g, dtype=torch.float64) * 3
    scale = torch.rand(6, 4, generator=g, dtype=torch.float64) * 5 + 1e-3
    q = Independent(Normal(loc, scale), 1)
    zero = torch.zeros(4, dtype=torch.float64)
    ours = kl_divergence(q, Independent(StandardNormal(zero), 1))
    general = kl_divergence(q, Independent(Normal(zero, torch.ones_like(zero)), 1))
    assert ours.shape == (6,)
    assert torch.allclose(ours, general, rtol=1e-12, atol=1e-12)
