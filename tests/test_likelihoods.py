"""p(x|z) families against scipy and hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from vaekit.likelihoods import BernoulliLikelihood, GaussianLikelihood


def test_bernoulli_log_prob_by_hand():
    logits = torch.tensor([[0.3, -1.2, 2.0], [0.0, 4.0, -3.0]], dtype=torch.float64)
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    p = torch.sigmoid(logits)
    by_hand = (x * p.log() + (1 - x) * (1 - p).log()).sum(-1)
    dist = BernoulliLikelihood((3,))(logits)
    torch.testing.assert_close(dist.log_prob(x), by_hand)
    assert dist.log_prob(x).shape == (2,)


def test_bernoulli_sums_over_image_dimensions():
    logits = torch.randn(4, 1, 3, 3, dtype=torch.float64)
    x = torch.rand(4, 1, 3, 3, dtype=torch.float64).round()
    p = torch.sigmoid(logits)
    by_hand = (x * p.log() + (1 - x) * (1 - p).log()).sum((1, 2, 3))
    torch.testing.assert_close(BernoulliLikelihood((1, 3, 3))(logits).log_prob(x), by_hand)


@pytest.mark.parametrize("sigma", ["fixed:0.25", "shared", "per-dim"])
def test_gaussian_log_prob_matches_scipy(sigma):
    torch.manual_seed(0)
    lik = GaussianLikelihood((5,), sigma=sigma).double()
    if sigma != "fixed:0.25":
        with torch.no_grad():
            lik.raw_sigma.uniform_(-1.0, 1.0)
    mean = torch.randn(3, 5, dtype=torch.float64)
    x = torch.randn(3, 5, dtype=torch.float64)
    scale = lik.sigma().expand(3, 5).detach().numpy()
    expected = stats.norm.logpdf(x.numpy(), mean.numpy(), scale).sum(-1)
    np.testing.assert_allclose(lik(mean).log_prob(x).detach().numpy(), expected, rtol=1e-12)


def test_gaussian_sigma_modes_have_the_right_parameters():
    assert len(list(GaussianLikelihood((2, 3), "fixed:0.1").parameters())) == 0
    assert GaussianLikelihood((2, 3), "shared").raw_sigma.shape == ()
    assert GaussianLikelihood((2, 3), "per-dim").raw_sigma.shape == (2, 3)
    assert float(GaussianLikelihood((4,), "fixed:0.1").sigma()) == pytest.approx(0.1)
    assert GaussianLikelihood((4,), "shared").sigma().item() == pytest.approx(1.0)


def test_learned_sigma_never_falls_below_its_floor():
    lik = GaussianLikelihood((3,), "per-dim", sigma_min=0.05)
    with torch.no_grad():
        lik.raw_sigma.fill_(-1e4)  # what unbounded learning would drive it to
    assert torch.all(lik.sigma() >= 0.05)
    assert math.isfinite(lik(torch.zeros(1, 3)).log_prob(torch.zeros(1, 3)).item())


def test_fast_bernoulli_agrees_with_torch_and_is_stable_for_extreme_logits():
    from torch.distributions import Bernoulli

    from vaekit.likelihoods import LogitBernoulli

    logits = torch.tensor([-200.0, -30.0, -1.0, 0.0, 2.5, 30.0, 200.0], dtype=torch.float64)
    for x in (torch.zeros(7, dtype=torch.float64), torch.ones(7, dtype=torch.float64),
              torch.full((7,), 0.3, dtype=torch.float64)):
        expected = Bernoulli(logits=logits, validate_args=False).log_prob(x)
        torch.testing.assert_close(LogitBernoulli(logits=logits, validate_args=False).log_prob(x), expected)
    assert torch.isfinite(LogitBernoulli(logits=logits).log_prob(torch.ones(7, dtype=torch.float64))).all()
