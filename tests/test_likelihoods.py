"""p(x|z) families against scipy, hand computation, or numerical integration (the
continuous Bernoulli's normaliser)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from conftest import make_vae
from vaekit.errors import VaekitError
from vaekit.likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    DiscretizedLogisticLikelihood,
    GaussianLikelihood,
    LaplaceLikelihood,
    StableContinuousBernoulli,
    continuous_bernoulli_log_norm,
    make_likelihood,
)


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


@pytest.mark.parametrize("sigma", [0.25, "shared", "per-dim"])
def test_gaussian_log_prob_matches_scipy(sigma):
    torch.manual_seed(0)
    lik = GaussianLikelihood((5,), sigma=sigma).double()
    if isinstance(sigma, str):  # learned: move σ_G away from its starting value
        with torch.no_grad():
            lik.raw_sigma.uniform_(-1.0, 1.0)
    mean = torch.randn(3, 5, dtype=torch.float64)
    x = torch.randn(3, 5, dtype=torch.float64)
    scale = lik.sigma().expand(3, 5).detach().numpy()
    expected = stats.norm.logpdf(x.numpy(), mean.numpy(), scale).sum(-1)
    np.testing.assert_allclose(lik(mean).log_prob(x).detach().numpy(), expected, rtol=1e-12)


def test_gaussian_sigma_modes_have_the_right_parameters():
    assert len(list(GaussianLikelihood((2, 3), 0.1).parameters())) == 0
    assert GaussianLikelihood((2, 3), "shared").raw_sigma.shape == ()
    assert GaussianLikelihood((2, 3), "per-dim").raw_sigma.shape == (2, 3)
    assert float(GaussianLikelihood((4,), 0.1).sigma()) == pytest.approx(0.1)
    assert GaussianLikelihood((4,), "shared").sigma().item() == pytest.approx(1.0)
    # the library takes a number for a fixed σ_G; "fixed:0.1" is the config's spelling only
    for bad in ("fixed:0.1", 0.0, -1.0, math.inf):
        with pytest.raises(VaekitError, match="sigma"):
            GaussianLikelihood((4,), bad)


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


# ------------------------------------------------------------------ variants (issue 7)
def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


@pytest.mark.parametrize("name, reference", [("gaussian", stats.norm), ("laplace", stats.laplace)])
def test_location_scale_families_match_scipy(name, reference):
    mean = torch.tensor([[0.2, -1.0, 3.0], [0.0, 0.5, 0.9]], dtype=torch.float64)
    x = torch.tensor([[0.1, -2.0, 3.5], [1.0, 0.5, -0.3]], dtype=torch.float64)
    lik = make_likelihood(name, (3,), sigma=0.7).double()
    got = lik(mean).log_prob(x)
    want = reference.logpdf(x.numpy(), loc=mean.numpy(), scale=0.7).sum(1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-7)  # the fixed σ is stored in float32
    assert isinstance(lik, LaplaceLikelihood if name == "laplace" else GaussianLikelihood)


# ------------------------------------------------------------------ continuous Bernoulli
# λ values straddling 0.5 closely (where the textbook normaliser is 0/0), the edge of
# torch's Taylor window (0.499, 0.501), moderate values, and λ within 1e-6 of 0 and 1.
LAMBDAS = [1e-6, 1e-3, 0.1, 0.3, 0.4989, 0.499, 0.4999, 0.49999, 0.5, 0.500001, 0.5011, 0.7,
           0.999, 1 - 1e-6]


def _reference_log_norm(lam: float) -> float:
    """−log ∫₀¹ λ^x (1−λ)^(1−x) dx by adaptive quadrature, in float64."""
    value, _ = integrate.quad(lambda x: lam**x * (1 - lam) ** (1 - x), 0, 1, epsabs=0, epsrel=1e-13)
    return -math.log(value)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-11), (torch.float32, 2e-6)])
def test_continuous_bernoulli_normaliser_matches_numerical_integration(dtype, tol):
    logits = torch.tensor([_logit(lam) for lam in LAMBDAS], dtype=dtype)
    got = continuous_bernoulli_log_norm(logits).double().numpy()
    want = np.array([_reference_log_norm(lam) for lam in LAMBDAS])
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)


@pytest.mark.parametrize("lam", [0.02, 0.4995, 0.5, 0.93])
def test_continuous_bernoulli_density_integrates_to_one(lam):
    lik = ContinuousBernoulliLikelihood((1,))
    logits = torch.tensor([[_logit(lam)]], dtype=torch.float64)

    def density(x: float) -> float:
        return math.exp(float(lik(logits).log_prob(torch.tensor([[x]], dtype=torch.float64))))

    total, _ = integrate.quad(density, 0, 1, epsabs=0, epsrel=1e-12)
    assert total == pytest.approx(1.0, abs=1e-9)


def test_continuous_bernoulli_log_prob_closed_form_and_sum_over_dims():
    lams = np.array([0.2, 0.5, 0.9])
    logits = torch.tensor(lams, dtype=torch.float64).logit()[None]
    x = torch.tensor([[0.3, 0.8, 0.05]], dtype=torch.float64)
    got = float(ContinuousBernoulliLikelihood((3,))(logits).log_prob(x))
    ref = sum(xi * math.log(li) + (1 - xi) * math.log1p(-li) + _reference_log_norm(li)
              for xi, li in zip(x[0].tolist(), lams, strict=True))
    assert got == pytest.approx(ref, abs=1e-9)


# The mean and the sampler over the whole logit range: past torch's clamp (|η| ≈ 15.9 in
# float32), across the series/exact switch points (0.1, 1) and down to η = 0.
CB_LOGITS = [-1e4, -300.0, -72.0, -40.0, -16.0, -15.9, -5.0, -1.0001, -1.0, -0.9999, -0.5, -0.1001,
             -0.1, -0.0999, -1e-3, -1e-7, 0.0, 1e-7, 1e-3, 0.0999, 0.1, 0.1001, 0.5, 0.9999, 1.0, 1.0001,
             5.0, 15.9, 16.0, 40.0, 72.0, 300.0, 1e4]


def _cb_mean_reference(eta: float) -> float:
    """E[x] = 1/(1 − e^(−η)) − 1/η at 40 significant digits (1/2 at η = 0)."""
    import mpmath

    with mpmath.workdps(40):
        if eta == 0:
            return 0.5
        e = mpmath.mpf(eta)
        return float(1 / (1 - mpmath.exp(-e)) - 1 / e)


def _cb_cdf_reference(eta: float, x: float) -> float:
    """F(x) = (e^(ηx) − 1) / (e^η − 1) at 40 significant digits (x at η = 0)."""
    import mpmath

    with mpmath.workdps(40):
        if eta == 0:
            return x
        e = mpmath.mpf(eta)
        return float(mpmath.expm1(e * x) / mpmath.expm1(e))


def _cb_cdf_float64(eta: float, x: np.ndarray) -> np.ndarray:
    """F(x) = (e^(ηx) − 1) / (e^η − 1) in float64 for many x at once, written so that large
    |η| neither overflows nor cancels (η > 0: both terms scaled by e^(−η))."""
    if eta == 0:
        return x.copy()
    if eta > 0:
        return np.exp(eta * (x - 1)) * np.expm1(-eta * x) / np.expm1(-eta)
    return np.expm1(eta * x) / np.expm1(eta)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-14), (torch.float32, 2.5e-7)])
def test_continuous_bernoulli_mean_matches_closed_form_over_the_whole_logit_range(dtype, atol):
    tiny_to_huge = np.logspace(-8, 3, 45)
    grid = sorted(set(CB_LOGITS) | set(np.linspace(-100, 100, 401)) | set(tiny_to_huge) | set(-tiny_to_huge))
    logits = torch.tensor(grid, dtype=dtype)
    want = np.array([_cb_mean_reference(float(e)) for e in logits.double()])
    dist = StableContinuousBernoulli(logits=logits, validate_args=False)
    lik_mean = ContinuousBernoulliLikelihood((len(grid),))(logits[None]).mean[0]
    for got in (dist.mean, lik_mean, ContinuousBernoulliLikelihood().mean(logits)):
        assert got.dtype == dtype
        np.testing.assert_allclose(got.double().numpy(), want, rtol=0, atol=atol)
    # the values the issue found torch reporting as 0.0627 / 0.9373
    assert float(dist.mean[logits == -72.0]) == pytest.approx(1 / 72, abs=1e-6)
    assert float(dist.mean[logits == 72.0]) == pytest.approx(1 - 1 / 72, abs=1e-6)


def _cb_variance_reference(eta: float) -> float:
    """Var[x] = 1/η² − 1/(4 sinh²(η/2)) at 50 significant digits (1/12 at η = 0)."""
    import mpmath

    with mpmath.workdps(50):
        if eta == 0:
            return 1 / 12
        e = mpmath.mpf(eta)
        return float(1 / e**2 - 1 / (4 * mpmath.sinh(e / 2) ** 2))


def _cb_entropy_reference(eta: float) -> float:
    """H = −∫ p log p = 1 − b·coth(b) + log(sinh(b)/b), b = |η|/2, at 50 digits (0 at η = 0)."""
    import mpmath

    with mpmath.workdps(50):
        if eta == 0:
            return 0.0
        b = abs(mpmath.mpf(eta)) / 2
        return float(1 - b * mpmath.coth(b) + mpmath.log(mpmath.sinh(b) / b))


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 2e-15), (torch.float32, 1e-6)])
def test_continuous_bernoulli_variance_and_entropy_match_closed_forms_over_the_whole_logit_range(dtype, rtol):
    """Measured: 7e-16 (float64) and 3e-7 (float32) relative, worst at the series' edge |η| = 2."""
    tiny_to_huge = np.logspace(-8, 4, 121)
    edges = {1.999999, 2.0, 2.000001, 0.0}
    grid = sorted(set(CB_LOGITS) | set(np.linspace(-100, 100, 401)) | set(tiny_to_huge) | set(-tiny_to_huge) | edges)
    logits = torch.tensor(grid, dtype=dtype)
    dist = StableContinuousBernoulli(logits=logits, validate_args=False)
    for got, reference in ((dist.variance, _cb_variance_reference), (dist.entropy(), _cb_entropy_reference)):
        assert got.dtype == dtype and bool(torch.isfinite(got).all())
        want = np.array([reference(float(e)) for e in logits.double()])
        np.testing.assert_allclose(got.double().numpy(), want, rtol=rtol, atol=1e-300)
    np.testing.assert_allclose(dist.stddev.double().numpy() ** 2, dist.variance.double().numpy(), rtol=1e-5)
    # torch's clamp reports 0.0039 and -1.769 for η = ±72: the values of η ≈ ±15.9
    at72 = StableContinuousBernoulli(logits=torch.tensor([-72.0, 72.0]), validate_args=False)
    np.testing.assert_allclose(at72.variance.numpy(), [1 / 72**2] * 2, rtol=1e-5)
    np.testing.assert_allclose(at72.entropy().numpy(), [1 - math.log(72)] * 2, rtol=1e-5)


@pytest.mark.parametrize("eta", [-72.0, -3.0, 0.0, 0.5, 1.9, 16.0, 300.0])
def test_continuous_bernoulli_variance_and_entropy_agree_with_draws(eta):
    """Monte Carlo with 200,000 float64 draws: the sample variance and −mean(log p(x)) within
    5 standard errors of the closed forms (the SE of the entropy from the draws' log p)."""
    n = 200_000
    dist = StableContinuousBernoulli(logits=torch.full((n,), eta, dtype=torch.float64), validate_args=False)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        x = dist.sample()
    variance = float(dist.variance[0])
    centred = (x - float(dist.mean[0])) ** 2
    assert abs(float(centred.mean()) - variance) < 5 * float(centred.std()) / math.sqrt(n)
    log_p = dist.log_prob(x)
    assert abs(-float(log_p.mean()) - float(dist.entropy()[0])) < 5 * max(float(log_p.std()), 1e-12) / math.sqrt(n)


def test_continuous_bernoulli_mean_is_what_decode_mean_returns():
    from vaekit.model import VAE

    decoder = torch.nn.Linear(2, 3)
    with torch.no_grad():
        decoder.weight.zero_()
        decoder.bias.copy_(torch.tensor([-72.0, 0.0, 30.0]))
    model = VAE(torch.nn.Linear(3, 4), decoder, "continuous-bernoulli", latent_dim=2)
    got = model.decode_mean(torch.zeros(1, 2))[0].detach().double().numpy()
    want = [_cb_mean_reference(e) for e in (-72.0, 0.0, 30.0)]
    np.testing.assert_allclose(got, want, rtol=0, atol=2.5e-7)


def test_continuous_bernoulli_icdf_inverts_the_cdf_over_the_whole_logit_range():
    u = torch.tensor([0.0, 1e-12, 1e-6, 0.01, 0.3, 0.5, 0.7, 0.99, 1 - 1e-6, 1 - 1e-12], dtype=torch.float64)
    for eta in CB_LOGITS:
        dist = StableContinuousBernoulli(logits=torch.full_like(u, eta), validate_args=False)
        x = dist.icdf(u)
        assert bool(((x >= 0) & (x <= 1)).all()), eta
        back = np.array([_cb_cdf_reference(eta, float(xi)) for xi in x])
        # F is steep (slope up to |η|) where the mass is: compare on the probability scale
        np.testing.assert_allclose(back, u.numpy(), rtol=0, atol=1e-9, err_msg=f"eta = {eta}")
        np.testing.assert_allclose(dist.cdf(x).numpy(), u.numpy(), rtol=0, atol=1e-9, err_msg=f"eta = {eta}")


@pytest.mark.parametrize("eta", [-300.0, -72.0, -20.0, -3.0, -0.3, 0.0, 0.5, 5.0, 16.0, 40.0, 72.0, 1e4])
def test_continuous_bernoulli_draws_follow_the_cdf(eta):
    """Kolmogorov–Smirnov distance of 20,000 float32 draws from the closed-form CDF, against
    the 0.1 % critical value 1.95/√n; the draws' mean against the closed-form mean."""
    n = 20_000
    logits = torch.full((n,), eta)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        x = StableContinuousBernoulli(logits=logits, validate_args=False).sample()
    assert x.dtype == torch.float32 and bool(((x >= 0) & (x <= 1)).all())
    xs = np.sort(x.double().numpy())
    cdf = _cb_cdf_float64(eta, xs)
    # the float64 closed form is the 40-digit one to far below the KS tolerance (~1e-2)
    some = xs[:: n // 50]
    np.testing.assert_allclose(cdf[:: n // 50], [_cb_cdf_reference(eta, float(v)) for v in some], rtol=0, atol=1e-12)
    ranks = np.arange(1, n + 1) / n
    ks = max(np.max(ranks - cdf), np.max(cdf - (ranks - 1 / n)))
    assert ks < 1.95 / math.sqrt(n), ks
    sd = float(np.std(xs))
    assert abs(float(np.mean(xs)) - _cb_mean_reference(eta)) < 5 * max(sd, 1e-6) / math.sqrt(n)


def test_continuous_bernoulli_rsample_gradient_is_finite_at_extreme_logits():
    logits = torch.tensor([-1e4, -72.0, -1.0, 0.0, 1e-4, 1.0, 72.0, 1e4], requires_grad=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        x = StableContinuousBernoulli(logits=logits, validate_args=False).rsample((50,))
    x.sum().backward()
    assert bool(torch.isfinite(logits.grad).all()), logits.grad


# ------------------------------------------------------------------ discretised logistic
def _logistic_reference(x, loc, scale, levels):
    """log P(bin of x) under Logistic(loc, scale) with tail bins, via scipy in float64: the
    difference of CDFs left of the mean, of survival functions right of it (each in logs)."""
    half = 0.5 / (levels - 1)
    with np.errstate(divide="ignore"):
        log_cu = np.where(x > 1 - half, 0.0, stats.logistic.logcdf(x + half, loc, scale))
        log_cl = np.where(x < half, -np.inf, stats.logistic.logcdf(x - half, loc, scale))
        log_su = np.where(x > 1 - half, -np.inf, stats.logistic.logsf(x + half, loc, scale))
        log_sl = np.where(x < half, 0.0, stats.logistic.logsf(x - half, loc, scale))
        left = log_cu + np.log1p(-np.exp(log_cl - log_cu))
        right = log_sl + np.log1p(-np.exp(log_su - log_sl))
    return np.where(x < loc, left, right)


@pytest.mark.parametrize("levels", [256, 17])
def test_discretized_logistic_matches_scipy(levels):
    gen = torch.Generator().manual_seed(0)
    k = torch.randint(0, levels, (2, 50), generator=gen)
    k[0, :3] = torch.tensor([0, levels - 1, levels // 2])  # both tail bins and the middle
    x = (k / (levels - 1)).double()
    loc = torch.rand(2, 50, generator=gen, dtype=torch.float64) * 1.2 - 0.1
    log_scale = torch.rand(2, 50, generator=gen, dtype=torch.float64) * 4 - 5
    lik = DiscretizedLogisticLikelihood((50,), levels)
    got = lik(torch.stack([loc, log_scale], dim=1)).log_prob(x)
    want = _logistic_reference(x.numpy(), loc.numpy(), np.exp(log_scale.numpy()), levels).sum(1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-8)


@pytest.mark.parametrize("log_scale", [-7.0, -3.0, 0.0, 2.0])
def test_discretized_logistic_is_a_normalised_pmf_over_the_levels(log_scale):
    levels = 256
    x = torch.arange(levels, dtype=torch.float64) / (levels - 1)
    params = torch.stack([torch.full_like(x, 0.37), torch.full_like(x, log_scale)])[None]
    lik = DiscretizedLogisticLikelihood((levels,), levels)
    per_level = lik(params).base_dist.log_prob(x[None])
    assert torch.isfinite(per_level).all()
    assert float(per_level.exp().sum()) == pytest.approx(1.0, abs=1e-10)


def test_discretized_logistic_is_stable_in_float32_far_from_the_mean():
    # μ far from x with a tiny scale: naive cdf differences give log(0) = -inf
    x = torch.tensor([[0.5, 0.2]])
    params = torch.tensor([[[0.9, 0.1], [-7.0, -7.0]]])
    logp = DiscretizedLogisticLikelihood((2,), 256)(params).base_dist.log_prob(x)
    ref = _logistic_reference(x.double().numpy(), np.array([[0.9, 0.1]]), math.exp(-7.0), 256)
    assert torch.isfinite(logp).all()
    np.testing.assert_allclose(logp.double().numpy(), ref, rtol=1e-4)


def test_decoders_give_params_per_dim_outputs():
    for architecture in ("mlp", "conv"):
        model = make_vae((1, 8, 8), [16], 3, architecture=architecture, likelihood="logistic", levels=17)
        z = torch.randn(5, 4, 3)
        p = model.decode(z)
        assert p.batch_shape == (5, 4) and p.event_shape == (1, 8, 8)
        x = torch.randint(0, 17, (4, 1, 8, 8)) / 16
        assert p.log_prob(x).shape == (5, 4)
        assert model.decode_mean(z).shape == (5, 4, 1, 8, 8)


# ------------------------------------------------------------------ learned σ_G per dimension
def test_learned_per_dimension_sigma_recovers_the_noise_level():
    """Factor-analysis data x = A z + b + ε, ε_d ~ N(0, σ_d²) with known σ_d (8 noisy
    dimensions, 2 factors: identifiable). The linear VAE with per-dimension σ_G is then the
    exact model class (its decoder can rotate A so the true posterior is diagonal), so
    maximising the ELBO is maximum likelihood and recovers σ_d; the reference is also the
    exact ML fit (scikit-learn's FactorAnalysis). A noiseless dimension stops at the floor."""
    from sklearn.decomposition import FactorAnalysis

    from vaekit.objectives import elbo

    gen = torch.Generator().manual_seed(0)
    n = 4000
    true_sigma = torch.tensor([0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.0])
    a = torch.randn(9, 2, generator=gen)
    a[-1] = 0.0
    x = torch.randn(n, 2, generator=gen) @ a.T + 0.3 + true_sigma * torch.randn(n, 9, generator=gen)
    torch.manual_seed(0)
    model = make_vae((9,), latent_dim=2, architecture="linear", likelihood="gaussian", sigma="per-dim",
                     sigma_min=0.01)
    steps = 800
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=0.001)
    for _ in range(steps):
        loss = -elbo(model, x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    sigma = model.likelihood.sigma().detach()
    ml = FactorAnalysis(2).fit(x[:, :8].numpy()).noise_variance_ ** 0.5
    # 10% of the truth (n = 4000 leaves ~2% sampling error; single-sample gradients some more)
    np.testing.assert_allclose(sigma[:8].numpy(), true_sigma[:8].numpy(), rtol=0.1)
    np.testing.assert_allclose(sigma[:8].numpy(), ml, rtol=0.06)
    assert 0.01 <= float(sigma[8]) < 0.02


def test_summed_bernoulli_matches_the_elementwise_sum_under_broadcasting():
    from torch.distributions import Bernoulli, Independent

    from vaekit.likelihoods import BernoulliLikelihood

    g = torch.Generator().manual_seed(3)
    logits = (4 * torch.randn(5, 7, 1, 6, 6, generator=g, dtype=torch.float64)).requires_grad_()
    x = torch.rand(7, 1, 6, 6, generator=g, dtype=torch.float64)  # grey levels broadcast over the 5 draws
    ours = BernoulliLikelihood((1, 6, 6))(logits).log_prob(x)
    torch_bern = Independent(Bernoulli(logits=logits, validate_args=False), 3).log_prob(x.expand(5, 7, 1, 6, 6))
    assert ours.shape == (5, 7)
    assert torch.allclose(ours, torch_bern, atol=1e-10)
    (grad,) = torch.autograd.grad(ours.sum(), logits)
    assert torch.allclose(grad, (x - torch.sigmoid(logits)).detach(), atol=1e-12)  # d/dl [x·l − softplus(l)]
    mixed = BernoulliLikelihood((1, 6, 6))(logits.detach().float()).log_prob(x)  # float64 data: the generic path
    assert torch.allclose(mixed.double(), torch_bern.detach(), atol=1e-4)
