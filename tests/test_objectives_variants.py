"""The training objectives beyond the plain ELBO: IWAE, β, KL warm-up, free bits; and the
importance-weighted bound on a fixed model (L_1 = ELBO ≤ L_k, non-decreasing in k)."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal

from conftest import make_vae
from vaekit.objectives import (
    Batch,
    elbo,
    elbo_objective,
    elbo_terms,
    free_bits_kl,
    iwae_bound,
    iwae_objective,
    kl_per_dimension,
    kl_weight,
    log_importance_weights,
)


def training_loss(model, x, objective, epochs_done: float = 0.0):
    """The training ``objective`` on the minibatch ``x``: (loss, terms)."""
    return objective(model, Batch(x, None, epochs_done))


@pytest.fixture(scope="module")
def fitted(digits):
    """A small VAE trained briefly on binarised digits, and 100 fixed binary examples."""
    torch.manual_seed(0)
    x_all = digits[0]
    x_bin = torch.bernoulli(x_all, generator=torch.Generator().manual_seed(1))
    model = make_vae((1, 8, 8), [64], 4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(300):
        batch = x_bin[(step * 64) % 1600 :][:64]
        loss = -elbo(model, batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, x_bin[1600:1700]


def _repeat(fn, reps: int) -> tuple[float, float]:
    """Mean and standard error over ``reps`` independent evaluations of ``fn()``."""
    values = torch.tensor([float(fn().detach().mean()) for _ in range(reps)], dtype=torch.float64)
    return float(values.mean()), float(values.std() / math.sqrt(reps))


@torch.no_grad()
def test_iwae_bound_is_at_least_the_elbo_and_non_decreasing_in_k(fitted):
    """In expectation L_1 = ELBO ≤ L_2 ≤ … ≤ L_k (Burda et al. 2016, Theorem 1). Each L_k
    is averaged over 100 examples and 40 independent repetitions; consecutive means may
    differ by at most 3 combined standard errors in the wrong direction, and L_100 must
    exceed the ELBO by more than 3 standard errors (the bound really tightens)."""
    model, x = fitted
    torch.manual_seed(0)
    analytic, s_elbo = _repeat(lambda: elbo(model, x), 40)  # closed-form KL
    means = {}
    for k in (1, 2, 5, 20, 100):
        means[k] = _repeat(lambda k=k: iwae_bound(model, x, k), 40)
    m1, s1 = means[1]
    assert abs(m1 - analytic) < 4 * math.hypot(s1, s_elbo)  # L_1 is the (Monte-Carlo) ELBO
    ks = sorted(means)
    for a, b in zip(ks, ks[1:], strict=False):
        (ma, sa), (mb, sb) = means[a], means[b]
        assert mb >= ma - 3 * math.hypot(sa, sb), (a, b, means)
    m100, s100 = means[100]
    assert m100 > analytic + 3 * math.hypot(s100, s_elbo), means


@torch.no_grad()
def test_importance_sampling_converges_to_the_exact_likelihood_of_a_linear_gaussian_model():
    """A linear decoder with fixed Gaussian noise has log p(x) = log N(x; b, W Wᵀ + σ² I) in
    closed form: L_k stays below it (in expectation) and approaches it as k grows."""
    torch.manual_seed(0)
    model = make_vae((5,), latent_dim=2, architecture="linear", likelihood="gaussian", sigma=0.5).double()
    x = torch.randn(200, 5, dtype=torch.float64)
    w, b = model.decoder[0].weight, model.decoder[0].bias
    exact = MultivariateNormal(b, w @ w.T + 0.25 * torch.eye(5)).log_prob(x).mean()
    elbo_mean, _ = _repeat(lambda: elbo(model, x), 20)
    l_big, se_big = _repeat(lambda: iwae_bound(model, x, 2000), 5)
    assert elbo_mean < float(exact)
    assert l_big <= float(exact) + 3 * se_big + 1e-9
    # the untrained encoder is a poor proposal, yet 2000 draws close most of the gap
    assert float(exact) - l_big < 0.1 * (float(exact) - elbo_mean)


def test_kl_warmup_schedule_values():
    # kl_weight(β, warm-up epochs, epochs done): e.g. 0.5 epochs done = half-way through epoch 1
    assert kl_weight(1.0, 4, 0.0) == 0.0
    assert kl_weight(1.0, 4, 0.5) == pytest.approx(0.125)
    assert kl_weight(1.0, 4, 2.0) == pytest.approx(0.5)
    assert kl_weight(1.0, 4, 3.75) == pytest.approx(0.9375)
    assert kl_weight(1.0, 4, 4.0) == 1.0
    assert kl_weight(1.0, 4, 49.3) == 1.0
    assert kl_weight(1.0, 4) == 1.0  # no training position: evaluation uses the full weight
    assert kl_weight(4.0, 2, 1.0) == pytest.approx(2.0)
    assert kl_weight(4.0, 2, 2.0) == pytest.approx(4.0)
    assert kl_weight(0.5, 0, 0.0) == 0.5  # no warm-up: just β


def _same_draws(fn, seed: int = 0):
    torch.manual_seed(seed)
    return fn()


def test_training_loss_weights_the_kl_and_always_reports_the_true_elbo(fitted):
    model, x = fitted
    plain = _same_draws(lambda: elbo_terms(model, x))
    for settings, done, weight in [
        (dict(beta=3.0), 0.0, 3.0),
        (dict(warmup=10), 2.5, 0.25),  # half-way through epoch 3: 2.5 / 10
        (dict(warmup=10, beta=2.0), 29.5, 2.0),
    ]:
        objective = functools.partial(elbo_objective, **settings)
        loss, terms = _same_draws(lambda o=objective, d=done: training_loss(model, x, o, d))
        for key in ("elbo", "reconstruction", "kl"):
            torch.testing.assert_close(terms[key], plain[key])
        expected = -(plain["reconstruction"] - weight * plain["kl"]).mean()
        torch.testing.assert_close(loss, expected)


def test_iwae_objective_is_the_negative_iwae_bound_and_reports_the_mc_elbo(fitted):
    model, x = fitted
    objective = functools.partial(iwae_objective, k=7)
    loss, terms = _same_draws(lambda: training_loss(model, x, objective))
    bound = _same_draws(lambda: iwae_bound(model, x, 7))
    log_w = _same_draws(lambda: log_importance_weights(model, x, 7))
    torch.testing.assert_close(loss, -bound.mean())
    torch.testing.assert_close(terms["elbo"], log_w.mean(0))
    torch.testing.assert_close(terms["elbo"], terms["reconstruction"] - terms["kl"])
    # the IWAE training objective is larger than the ELBO it reports (Jensen)
    assert float(-loss.detach()) > float(terms["elbo"].detach().mean())


class _FixedPosterior(nn.Module):
    """q(z|x) = N(μ, σ²) with μ, σ free per example, p(z) = N(0, I), and a decoder whose
    log-likelihood does not depend on z: the loss's KL part is all that moves."""

    def __init__(self, mu: torch.Tensor, sigma: torch.Tensor):
        super().__init__()
        self.mu = nn.Parameter(mu.clone())
        self.log_sigma = nn.Parameter(sigma.log())

    def encode(self, x, y=None):
        return Independent(Normal(self.mu, self.log_sigma.exp()), 1)

    def decode(self, z, y=None):
        return Independent(Normal(torch.zeros(*z.shape[:-1], 3), 1.0), 1)

    @property
    def prior(self):
        return Independent(Normal(torch.zeros(4), torch.ones(4)), 1)


def test_free_bits_floor_each_dimension_at_lambda():
    """KL per coordinate (averaged over the batch) below λ counts as λ and gets no
    gradient; above λ it counts, and is pushed down, as usual."""
    mu = torch.tensor([[0.1, 2.0, 0.0, 1.0], [-0.1, 1.5, 0.0, -1.0]])
    sigma = torch.tensor([[1.0, 0.5, 0.9, 1.0], [1.0, 0.5, 1.1, 1.0]])
    model = _FixedPosterior(mu, sigma)
    x = torch.zeros(2, 3)
    # closed-form KL(N(μ, σ²) ‖ N(0, 1)) per coordinate, batch mean
    kl_dims = (0.5 * (mu**2 + sigma**2 - 1) - sigma.log()).mean(0)
    floor = 0.3
    assert (kl_dims < floor).any() and (kl_dims > floor).any()
    loss, terms = training_loss(model, x, functools.partial(elbo_objective, free_bits=floor))
    rec = float(terms["reconstruction"].detach().mean())
    assert float(loss.detach()) == pytest.approx(-rec + float(kl_dims.clamp(min=floor).sum()), rel=1e-6)
    # the reported KL is the true one, not the floored one
    assert float(terms["kl"].detach().mean()) == pytest.approx(float(kl_dims.sum()), rel=1e-6)
    loss.backward()
    below = kl_dims < floor
    assert torch.all(model.mu.grad[:, below] == 0)
    assert torch.all(model.log_sigma.grad[:, below] == 0)
    # above the floor: d/dμ of mean_b KL = μ / B
    torch.testing.assert_close(model.mu.grad[:, ~below], mu[:, ~below] / 2)


def test_free_bits_kl_and_per_dimension_kl_sum_to_the_total():
    q = Independent(Normal(torch.randn(5, 3), torch.rand(5, 3) + 0.2), 1)
    p = Independent(Normal(torch.zeros(3), torch.ones(3)), 1)
    dims = kl_per_dimension(q, p)
    torch.testing.assert_close(dims.sum(-1), torch.distributions.kl_divergence(q, p))
    assert float(free_bits_kl(dims, 0.0)) == pytest.approx(float(dims.mean(0).sum()))
    assert float(free_bits_kl(dims, 1e3)) == pytest.approx(3e3)
    z = q.rsample((4,))
    mc = kl_per_dimension(q, p, "mc", z)
    torch.testing.assert_close(mc.sum(-1), (q.log_prob(z) - p.log_prob(z)).mean(0))

