"""Model variants: conv bodies, the two-stochastic-layer model and the conditional VAE."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal

from conftest import make_vae
from vaekit.errors import VaekitError
from vaekit.model import TwoLayerVAE, TwoStage
from vaekit.objectives import elbo, elbo_terms, iwae_bound, log_importance_weights


# ------------------------------------------------------------------ conv
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 16, 12), (1, 28, 28)])
def test_conv_model_handles_grey_and_colour_images_of_any_divisible_size(shape):
    model = make_vae(shape, latent_dim=3, architecture="conv", channels=[8, 16])
    x = torch.rand(5, *shape).round()
    q = model.encode(x)
    assert q.batch_shape == (5,) and q.event_shape == (3,)
    z = q.rsample((2,))
    p = model.decode(z)
    assert p.batch_shape == (2, 5) and p.event_shape == shape
    assert elbo(model, x).shape == (5,)
    assert model.sample(4).shape == (4, *shape)


def test_conv_refuses_shapes_the_strides_do_not_divide():
    with pytest.raises(VaekitError, match="divisible by 4"):
        make_vae((1, 10, 8), architecture="conv", channels=[8, 16])
    with pytest.raises(VaekitError, match=r"\[C, H, W\]"):
        make_vae((64,), architecture="conv")


# ------------------------------------------------------------------ two stochastic layers
def test_two_stage_joint_matches_the_closed_form_gaussian():
    """a ~ N(m, s²), b | a ~ N(A a + c, t²) is jointly Gaussian with a known covariance:
    log_prob, the stacking order and sample moments must agree with it."""
    torch.manual_seed(0)
    m, s = torch.tensor([0.5, -1.0]), torch.tensor([0.7, 1.3])
    a_map = nn.Linear(2, 3).double()
    t = torch.tensor([0.4, 0.9, 0.6], dtype=torch.float64)
    first = Independent(Normal(m.double(), s.double()), 1)

    def then(a):
        return Independent(Normal(a_map(a), t.expand(*a.shape[:-1], 3)), 1)

    big_a, c = a_map.weight.detach(), a_map.bias.detach()
    cov_a = torch.diag(s.double() ** 2)
    mean = torch.cat([m.double(), big_a @ m.double() + c])
    cov = torch.zeros(5, 5, dtype=torch.float64)
    cov[:2, :2] = cov_a
    cov[:2, 2:] = cov_a @ big_a.T
    cov[2:, :2] = big_a @ cov_a
    cov[2:, 2:] = big_a @ cov_a @ big_a.T + torch.diag(t**2)
    exact = MultivariateNormal(mean, cov)
    z = exact.sample((50,))
    for first_goes_last in (False, True):
        joint = TwoStage(first, then, 3, first_goes_last)
        # positions of z = [a, b] in the stacked vector, and back
        order = [2, 3, 4, 0, 1] if first_goes_last else [0, 1, 2, 3, 4]
        back = [3, 4, 0, 1, 2] if first_goes_last else [0, 1, 2, 3, 4]
        with torch.no_grad():
            torch.testing.assert_close(joint.log_prob(z[:, order]), exact.log_prob(z))
            torch.testing.assert_close(joint.log_prob_dims(z[:, order]).sum(-1), joint.log_prob(z[:, order]))
            draws = joint.sample((40000,))[:, back]
        assert draws.shape == (40000, 5)
        # moments within ~5 standard errors of the exact ones
        se = cov.diagonal().sqrt() / math.sqrt(40000)
        assert torch.all((draws.mean(0) - mean).abs() < 5 * se)
        assert torch.allclose(torch.cov(draws.T), cov, atol=0.05 * float(cov.abs().max()))


def _hvae(**overrides):
    settings = dict(model="hvae", hidden=[32, 32], latent_dim=6, latent_dim2=3, hidden2=[16, 16],
                    activation="tanh")
    return make_vae((1, 8, 8), **{**settings, **overrides})


def test_two_layer_model_structure():
    model = _hvae()
    assert isinstance(model, TwoLayerVAE)
    assert model.latent_dim == 9 and model.z1_dim == 6 and model.z2_dim == 3
    x = torch.rand(4, 1, 8, 8).round()
    q = model.encode(x)
    z = q.rsample((3,))
    assert z.shape == (3, 4, 9)
    # the prior is p(z1|z2) p(z2), the posterior q(z1|x) q(z2|z1), stacked [z1, z2]
    z1, z2 = z[..., :6], z[..., 6:]
    p2 = Independent(Normal(torch.zeros(3), torch.ones(3)), 1)
    # the networks take one point per row ([N, L]): the model flattens the draws' axes for them
    mu, logvar = model.down(z2.reshape(-1, 3)).reshape(3, 4, 12).chunk(2, -1)
    p1 = Independent(Normal(mu, (0.5 * logvar).exp()), 1)
    torch.testing.assert_close(model.prior.log_prob(z), p1.log_prob(z1) + p2.log_prob(z2))
    qmu, qlogvar = model.encoder(x.reshape(4, -1)).chunk(2, -1)
    q2mu, q2logvar = model.up(z1.reshape(-1, 6)).reshape(3, 4, 6).chunk(2, -1)
    expected_q = (Independent(Normal(qmu, (0.5 * qlogvar).exp()), 1).log_prob(z1)
                  + Independent(Normal(q2mu, (0.5 * q2logvar).exp()), 1).log_prob(z2))
    torch.testing.assert_close(q.log_prob(z), expected_q)
    # the decoder reads z1 only
    changed = torch.cat([z1, z2 + 5.0], -1)
    torch.testing.assert_close(model.decode(changed).log_prob(x), model.decode(z).log_prob(x))
    assert model.sample(5).shape == (5, 1, 8, 8)
    assert log_importance_weights(model, x, 7).shape == (7, 4)


def test_two_layer_model_refuses_the_analytic_kl():
    model = _hvae()
    with pytest.raises(VaekitError, match="mc"):
        elbo_terms(model, torch.zeros(2, 1, 8, 8), kl="analytic")


@pytest.fixture(scope="module")
def trained_hvae(digits):
    from vaekit.objectives import elbo_objective
    from vaekit.training import fit

    torch.manual_seed(0)
    x = digits[0]
    model = make_vae((1, 8, 8), [64, 64], 8, model="hvae", latent_dim2=4, hidden2=[32, 32])
    # KL warm-up gets this small model past the early posterior collapse in few epochs
    objective = functools.partial(elbo_objective, kl="mc", warmup=5.0)
    fit(model, x[:1500], epochs=15, batch_size=64, objective=objective, lr=3e-3, device="cpu", seed=0,
        dynamic_binarization=True)
    test = torch.bernoulli(x[1500:1600], generator=torch.Generator().manual_seed(2))
    return model.eval(), test


@torch.no_grad()
def test_two_layer_importance_sampled_estimate_is_at_least_its_elbo(trained_hvae):
    """log p(x) ≥ L_k ≥ ELBO: the IS estimate (L_500) exceeds the Monte-Carlo ELBO by more
    than 3 standard errors (each averaged over 100 examples, 10 and 30 repetitions)."""
    model, x = trained_hvae
    torch.manual_seed(0)
    elbos = torch.stack([elbo(model, x, kl="mc").mean() for _ in range(30)]).double()
    is_est = torch.stack([iwae_bound(model, x, 500).mean() for _ in range(10)]).double()
    se = math.hypot(float(elbos.std()) / math.sqrt(30), float(is_est.std()) / math.sqrt(10))
    gap = float(is_est.mean() - elbos.mean())
    assert gap > 3 * se, (gap, se)
    # and the model learnt something: better than the independent-pixel baseline
    p = x.mean(0).clamp(0.01, 0.99)
    baseline = float((x * p.log() + (1 - x) * (1 - p).log()).sum((1, 2, 3)).mean())
    assert float(is_est.mean()) > baseline


# ------------------------------------------------------------------ conditional VAE
def test_cvae_needs_and_checks_labels():
    model = make_vae((1, 8, 8), [16], 2, num_classes=3)
    x = torch.rand(4, 1, 8, 8).round()
    y = torch.tensor([0, 1, 2, 1])
    assert elbo(model, x, labels=y).shape == (4,)
    with pytest.raises(VaekitError, match="needs class labels"):
        model.encode(x)
    with pytest.raises(VaekitError, match="0..2"):
        model.encode(x, torch.tensor([0, 1, 3, 1]))
    # decode broadcasts one label per example over the Monte-Carlo axis
    z = model.encode(x, y).rsample((5,))
    assert model.decode(z, y).log_prob(x).shape == (5, 4)
    # the label changes the decoder's output
    z0 = torch.zeros(1, 2)
    assert not torch.allclose(model.decode_mean(z0, torch.tensor([0])),
                              model.decode_mean(z0, torch.tensor([1])))
    assert model.sample(6, y=2).shape == (6, 1, 8, 8)
    # a positional label tensor used to bind to `mean` ("Boolean value of Tensor ... is ambiguous")
    with pytest.raises(TypeError, match="positional"):
        model.sample(4, torch.tensor([0, 1, 2, 0]))
    assert model.sample(4, y=torch.tensor([0, 1, 2, 0])).shape == (4, 1, 8, 8)
    plain = make_vae((1, 8, 8), [16])
    with pytest.raises(VaekitError, match="not conditional"):
        plain.sample(2, y=1)


def test_cvae_samples_of_a_class_are_classified_as_that_class(digits):
    """Train a CVAE on digits, draw E[x|z, y] for z ~ p(z) and each class y, and ask a
    logistic regression trained on the digits themselves: a clear majority of each class's
    samples (≥ 60%, and ≥ 80% over all classes) must be classified as the requested class."""
    from sklearn.linear_model import LogisticRegression

    from vaekit.training import fit

    x, labels = digits
    torch.manual_seed(0)
    model = make_vae((1, 8, 8), [128], 4, num_classes=10)
    # 15 epochs already give at least 92 % per class (measured), far above what is asked
    fit(model, (x, labels), epochs=15, batch_size=64, lr=3e-3, device="cpu", seed=0, dynamic_binarization=True)
    model.eval()
    classifier = LogisticRegression(max_iter=2000).fit(x.reshape(len(x), -1).numpy(), labels.numpy())
    torch.manual_seed(0)
    hits = []
    for label in range(10):
        images = model.sample(40, y=label)
        predicted = classifier.predict(images.reshape(40, -1).numpy())
        hits.append(float((predicted == label).mean()))
    assert min(hits) >= 0.6, hits
    assert sum(hits) / 10 >= 0.8, hits
