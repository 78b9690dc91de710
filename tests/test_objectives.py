"""The estimators against ground truth: closed forms and Monte-Carlo agreement."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal

from conftest import make_vae
from vaekit.objectives import elbo, elbo_terms, iwae_bound, kl_divergence

# Monte-Carlo checks pass when the difference is within this many standard errors; with a
# fixed seed the tests are deterministic, and 5 SE makes a false alarm ~1e-6 unlikely.
SE_TOL = 5.0


def _gaussian(batch: int, dim: int, seed: int) -> Independent:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    std = torch.rand(batch, dim, generator=g, dtype=torch.float64) + 0.3
    return Independent(Normal(mu, std), 1)


def test_analytic_kl_matches_closed_form_by_hand():
    q = _gaussian(4, 3, seed=1)
    p = Independent(Normal(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)), 1)
    mu, var = q.mean, q.variance
    by_hand = 0.5 * (var + mu**2 - 1 - var.log()).sum(-1)  # KL(N(μ,σ²)‖N(0,1)), summed over dims
    torch.testing.assert_close(kl_divergence(q, p), by_hand)


def test_closed_form_kl_equals_monte_carlo_kl():
    torch.manual_seed(0)
    q = _gaussian(5, 3, seed=2)
    p = Independent(Normal(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)), 1)
    z = q.sample((200_000,))
    log_ratio = q.log_prob(z) - p.log_prob(z)  # [M, B]
    mc = kl_divergence(q, p, "mc", z)
    se = log_ratio.std(0) / math.sqrt(len(z))
    exact = kl_divergence(q, p, "analytic")
    assert torch.all((mc - exact).abs() < SE_TOL * se), (mc, exact, se)
    assert torch.all(exact > 0)


def _small_model(likelihood: str = "bernoulli", seed: int = 0):
    torch.manual_seed(seed)
    return make_vae((6,), [16], 2, likelihood=likelihood).double()


def test_elbo_with_m_samples_is_unbiased():
    model = _small_model()
    probabilities = torch.full((3, 6), 0.4, dtype=torch.float64)
    x = torch.bernoulli(probabilities, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(1)
    reference = elbo(model, x, samples=200_000).detach()
    # 4,000 independent M=5 estimates: their mean must agree with the high-sample value
    draws = torch.stack([elbo(model, x, samples=5).detach() for _ in range(4000)])
    se = draws.std(0) / math.sqrt(len(draws))
    assert torch.all((draws.mean(0) - reference).abs() < SE_TOL * se + 1e-3), (draws.mean(0), reference)
    # and averaging M samples shrinks the spread like 1/M
    singles = torch.stack([elbo(model, x, samples=1).detach() for _ in range(4000)])
    ratio = singles.var(0) / draws.var(0)
    assert torch.all((ratio > 3.5) & (ratio < 7.0)), ratio


def test_reconstruction_minus_kl_is_elbo_and_terms_are_per_example():
    model = _small_model()
    x = torch.rand(7, 6, dtype=torch.float64).round()
    terms = elbo_terms(model, x, samples=3)
    assert set(terms) == {"elbo", "reconstruction", "kl"}
    for value in terms.values():
        assert value.shape == (7,)
    torch.testing.assert_close(terms["elbo"], terms["reconstruction"] - terms["kl"])
    assert torch.all(terms["kl"] >= 0)
    assert torch.all(terms["reconstruction"] <= 0)  # Bernoulli log-probabilities


def test_gradients_reach_the_encoder_through_rsample_only():
    model = _small_model()
    x = torch.rand(4, 6, dtype=torch.float64).round()
    q = model.encode(x)
    rec = model.decode(q.rsample()).log_prob(x).sum()
    grads = torch.autograd.grad(rec, list(model.encoder.parameters()), allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)

    q = model.encode(x)
    rec = model.decode(q.sample()).log_prob(x).sum()  # no reparameterisation: path is cut
    grads = torch.autograd.grad(rec, list(model.encoder.parameters()), allow_unused=True)
    assert all(g is None for g in grads)


def test_elbo_terms_of_the_autoencoder_have_no_kl():
    torch.manual_seed(0)
    model = make_vae((5,), [8], 2, model="ae")
    x = torch.rand(3, 5).round()
    terms = elbo_terms(model, x, samples=4)
    assert torch.all(terms["kl"] == 0)
    expected = model.decode(model.encoder(x)).log_prob(x)
    torch.testing.assert_close(terms["reconstruction"], expected)


# ---------------------------------------------------------------------------------------
# log p(x) = ELBO + KL(q ‖ p(z|x)), checked on the linear-Gaussian model where everything
# is known in closed form: p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I).


def _linear_gaussian(seed: int = 0, d: int = 5, latent: int = 2, sigma: float = 0.7):
    torch.manual_seed(seed)
    model = make_vae((d,), latent_dim=latent, architecture="linear", likelihood="gaussian", sigma=sigma).double()
    return model, sigma


def _exact_terms(model, x, sigma):
    dec = model.decoder[0]
    w, b = dec.weight, dec.bias  # [D, L], [D]
    d, latent = w.shape
    eye = torch.eye(latent, dtype=w.dtype)
    marginal = MultivariateNormal(b, w @ w.T + sigma**2 * torch.eye(d, dtype=w.dtype))
    m = w.T @ w + sigma**2 * eye
    post_mean = (torch.linalg.solve(m, w.T @ (x - b).T)).T
    posterior = MultivariateNormal(post_mean, sigma**2 * torch.linalg.inv(m))
    return marginal.log_prob(x), posterior


def test_log_evidence_equals_elbo_plus_kl_to_the_true_posterior():
    model, sigma = _linear_gaussian()
    x = torch.randn(6, 5, dtype=torch.float64)
    log_px, posterior = _exact_terms(model, x, sigma)
    q = model.encode(x)
    q_full = MultivariateNormal(q.mean, torch.diag_embed(q.variance))
    kl_to_posterior = torch.distributions.kl_divergence(q_full, posterior)

    # E_q[log p(x|z)] in closed form for a linear-Gaussian decoder
    dec = model.decoder[0]
    resid = x - q.mean @ dec.weight.T - dec.bias
    trace = (dec.weight**2 @ q.variance.T).T.sum(-1)
    d = x.shape[1]
    rec_exact = -0.5 * d * math.log(2 * math.pi * sigma**2) - (resid.pow(2).sum(-1) + trace) / (2 * sigma**2)
    elbo_exact = rec_exact - kl_divergence(q, model.prior)
    torch.testing.assert_close(log_px, elbo_exact + kl_to_posterior, rtol=1e-10, atol=1e-10)

    # vaekit's Monte-Carlo ELBO agrees with the exact one within its standard error
    torch.manual_seed(2)
    draws = torch.stack([elbo(model, x, samples=1000).detach() for _ in range(20)])
    se = draws.std(0) / math.sqrt(draws.numel() / x.shape[0])
    assert torch.all((draws.mean(0) - elbo_exact).abs() < SE_TOL * se + 1e-6)
    assert torch.all(elbo_exact <= log_px)


def test_elbo_is_tight_when_q_is_the_true_posterior():
    model, sigma = _linear_gaussian(seed=3, d=4, latent=1, sigma=0.5)
    x = torch.randn(5, 4, dtype=torch.float64)
    log_px, posterior = _exact_terms(model, x, sigma)
    # Set the linear encoder to output the exact posterior (1-D latent: diagonal is exact).
    dec = model.decoder[0]
    w, b = dec.weight, dec.bias
    m = (w.T @ w + sigma**2).squeeze()
    enc = model.encoder[0]
    with torch.no_grad():
        enc.weight[0] = (w.T / m).squeeze()
        enc.bias[0] = -(w.T @ b / m).squeeze()
        enc.weight[1] = 0
        enc.bias[1] = math.log(sigma**2 / m)
    torch.testing.assert_close(model.encode(x).mean[:, 0], posterior.mean[:, 0])
    torch.manual_seed(0)
    # With q = p(z|x) every log p(x,z) − log q(z|x) equals log p(x): the Monte-Carlo-KL
    # estimate has zero variance, and the analytic-KL ELBO is log p(x) in expectation.
    torch.testing.assert_close(elbo(model, x, samples=3, kl="mc").detach(), log_px, rtol=1e-9, atol=1e-9)
    analytic = torch.stack([elbo(model, x, samples=500).detach() for _ in range(20)])
    se = analytic.std(0) / math.sqrt(analytic.shape[0])
    assert torch.all((analytic.mean(0) - log_px).abs() < SE_TOL * se)
    torch.testing.assert_close(iwae_bound(model, x, 7).detach(), log_px, rtol=1e-9, atol=1e-9)


def test_unknown_kl_estimator_is_refused():
    q = _gaussian(2, 2, seed=0)
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_divergence(q, q, "exact")
