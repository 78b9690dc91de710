"""Posterior heads (vaekit.posteriors) and the estimator helpers (vaekit.estimators): every
flow's log-det against autograd's Jacobian, densities that integrate to 1, scoring at own
draws, refusals, gradients, shapes with sample dimensions."""

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from vaekit.errors import VaekitError
from vaekit.estimators import kl_or_mc, log_prob_at_own_sample
from vaekit.model import diagonal_normal
from vaekit.posteriors import (
    IAF,
    DiagonalGaussian,
    FlowPosterior,
    ForeignPoint,
    FullCovarianceGaussian,
    Householder,
    Planar,
    Sylvester,
    make_posterior,
    representative,
)
from vaekit.priors import MixtureOfGaussians, StandardNormal

HEADS = {
    "diagonal": lambda L, F: DiagonalGaussian(L, features=F),
    "full": lambda L, F: FullCovarianceGaussian(L, features=F),
    "planar": lambda L, F: Planar(L, steps=3, features=F),
    "iaf": lambda L, F: IAF(L, steps=2, features=F, hidden=12, context=5),
    "householder": lambda L, F: Householder(L, steps=3, features=F),
    "sylvester-orthogonal": lambda L, F: Sylvester(L, steps=2, kind="orthogonal", features=F, vectors=max(1, L - 1)),
    "sylvester-householder": lambda L, F: Sylvester(L, steps=2, kind="householder", features=F, reflections=2),
    "sylvester-triangular": lambda L, F: Sylvester(L, steps=3, kind="triangular", features=F),
}
FLOWS = [name for name in HEADS if name not in ("diagonal", "full")]
INVERTIBLE = ["diagonal", "full", "iaf", "householder"]


def _posterior(name, latent=3, batch=4, features=7, seed=0, dtype=torch.float64, spread=1.5):
    torch.manual_seed(seed)
    head = HEADS[name](latent, features).to(dtype)
    h = spread * torch.randn(batch, features, dtype=dtype)
    return head, head(h)


@pytest.mark.parametrize("name", HEADS)
def test_every_head_scores_its_own_draws_with_sample_dimensions(name):
    head, q = _posterior(name, dtype=torch.float32)
    assert q.batch_shape == (4,) and q.event_shape == (3,)
    z = q.rsample((5, 2))
    log_q = q.log_prob(z)
    assert z.shape == (5, 2, 4, 3) and log_q.shape == (5, 2, 4) and torch.isfinite(log_q).all()
    z2, log_q2 = log_prob_at_own_sample(q, (6,))
    assert z2.shape == (6, 4, 3)
    torch.testing.assert_close(q.log_prob(z2), log_q2)
    assert representative(q).shape == (4, 3)


@pytest.mark.parametrize("name", FLOWS)
def test_each_steps_log_det_is_autograds_jacobian(name):
    _, q = _posterior(name)
    assert isinstance(q, FlowPosterior)
    for step in q.transforms:
        x = 1.5 * torch.randn(4, 3, dtype=torch.float64)
        full = jacobian(step._call, x)  # [B, L, B, L]: examples must not mix
        for b in range(4):
            for c in range(4):
                if b != c:
                    assert full[b, :, c, :].abs().max() == 0
        expected = torch.stack([torch.linalg.slogdet(full[b, :, b, :])[1] for b in range(4)])
        y = step._call(x)
        torch.testing.assert_close(step.log_abs_det_jacobian(x, y), expected)  # the kept values
        torch.testing.assert_close(step.log_abs_det_jacobian(x.clone(), y), expected)  # recomputed


@pytest.mark.parametrize("name", FLOWS)
def test_log_q_is_the_base_density_through_the_whole_flow(name):
    _, q = _posterior(name)
    x0 = q.base_dist.sample()

    def chain(x):
        for step in q.transforms:
            x = step._call(x)
        return x

    full = jacobian(chain, x0)
    log_det = torch.stack([torch.linalg.slogdet(full[b, :, b, :])[1] for b in range(4)])
    expected = q.base_dist.log_prob(x0) - log_det
    x = x0
    log_q = q.base_dist.log_prob(x0)
    for step in q.transforms:
        y = step(x)
        log_q = log_q - step.log_abs_det_jacobian(x, y)
        x = y
    torch.testing.assert_close(log_q, expected)
    torch.testing.assert_close(q.log_prob(x), expected)  # torch's path, through the cache


@pytest.mark.parametrize("reverse_step", [0, 1])
def test_iaf_jacobian_is_triangular_with_the_gates_on_its_diagonal(reverse_step):
    _, q = _posterior("iaf", latent=4)
    step = q.transforms[reverse_step]
    x = torch.randn(4, 4, dtype=torch.float64)
    full = jacobian(step._call, x)
    for b in range(4):
        block = full[b, :, b, :]
        # step 0: natural order, z'_i depends on z_j for j ≤ i; step 1: the order reversed
        later = torch.triu(block, 1) if reverse_step == 0 else torch.tril(block, -1)
        assert later.abs().max() == 0
        assert block.diagonal().min() > 0
    torch.testing.assert_close(full[torch.arange(4), :, torch.arange(4), :].diagonal(dim1=-2, dim2=-1),
                               torch.sigmoid(step._net(x)[1]))


@pytest.mark.parametrize("name", INVERTIBLE)
def test_density_integrates_to_one_on_a_grid(name):
    _, q = _posterior(name, latent=2, batch=1)
    with torch.no_grad():
        draws = q.rsample((20_000,))[:, 0]
        centre, spread = draws.mean(0), draws.std(0)
        axes = [torch.linspace(float(c - 9 * s), float(c + 9 * s), 401, dtype=torch.float64)
                for c, s in zip(centre, spread, strict=True)]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 1, 2)
        cell = float((axes[0][1] - axes[0][0]) * (axes[1][1] - axes[1][0]))
        total = float(q.log_prob(grid).exp().sum()) * cell
    assert abs(total - 1) < 2e-3, total


@pytest.mark.parametrize("name", HEADS)
def test_density_is_normalised_by_importance_sampling(name):
    # E_{z~q}[f(z) / q(z)] = ∫ f = 1 for a normalised f, whatever f, only if the log q the
    # head reports is q's true log-density at its draws (no inverse needed, so it checks the
    # flows without one). f: a Gaussian narrower than q's draws, for a finite variance.
    _, q = _posterior(name, latent=2, batch=1)
    with torch.no_grad():
        z, log_q = log_prob_at_own_sample(q, (200_000,))
        z, log_q = z[:, 0], log_q[:, 0]
        f = torch.distributions.MultivariateNormal(z.mean(0), 0.5 * torch.cov(z.T))
        ratio = torch.exp(f.log_prob(z) - log_q)
    estimate, se = float(ratio.mean()), float(ratio.std() / math.sqrt(len(ratio)))
    assert abs(estimate - 1) < 5 * se + 1e-3, (estimate, se)


@pytest.mark.parametrize("name", HEADS)
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    body = torch.nn.Linear(6, 7)
    head = HEADS[name](3, 7)
    q = head(body(torch.randn(5, 6)))
    z, log_q = log_prob_at_own_sample(q, (2,))
    (log_q - StandardNormal(3)().log_prob(z) + z.pow(2).sum(-1)).mean().backward()
    for module in (body, head):
        for pname, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_a_width_that_does_not_fit_is_refused_with_both_numbers():
    head = Planar(2, steps=2)  # [μ, log σ², u, w, b] = 2 + 2 + 2·(2 + 2 + 1) = 14
    assert head.in_features == 14
    with pytest.raises(VaekitError, match=r"gives 6 features .* needs 14"):
        head(torch.randn(3, 6))
    assert DiagonalGaussian(5).in_features == 10
    assert Sylvester(4, steps=2, features=32).in_features == 32
    with pytest.raises(VaekitError, match="unknown posterior 'radial'"):
        make_posterior("radial", 2)
    with pytest.raises(VaekitError, match="1 to 3 orthogonal vectors"):
        Sylvester(3, kind="orthogonal", vectors=4)


@pytest.mark.parametrize("name", ["planar", "sylvester-orthogonal", "sylvester-triangular"])
def test_flows_without_an_inverse_refuse_foreign_points(name):
    _, q = _posterior(name)
    z = q.rsample((2,))
    q.log_prob(z)
    with pytest.raises(ForeignPoint, match="no closed-form inverse"):
        q.log_prob(z.clone())
    q.rsample()  # a newer draw replaces the cache: the older one is foreign now
    with pytest.raises(ForeignPoint):
        q.log_prob(z)


@pytest.mark.parametrize("name", ["iaf", "householder"])
def test_invertible_flows_score_any_point(name):
    _, q = _posterior(name)
    z = q.rsample((3,))
    own = q.log_prob(z)
    torch.testing.assert_close(q.log_prob(z.clone()), own)  # through the exact inverse


@pytest.mark.parametrize("name", ["iaf", "householder"])
def test_points_far_out_in_another_posterior_have_log_density_minus_infinity_not_nan(name):
    from torch.distributions import TransformedDistribution

    _, q = _posterior(name, latent=6, dtype=torch.float32, spread=4.0)
    near = q.rsample((5,)).clone()
    far = torch.full((2, 4, 6), 1e30)
    far[1, :, ::2] = -3e38  # beyond float32 in the base space after the inverse steps
    scores = q.log_prob(torch.cat([near, far]))
    assert not scores.isnan().any()
    assert torch.isfinite(scores[:5]).all()
    assert (scores[5:] < -1e30).all()  # -inf where a preimage overflowed, else astronomically small
    # where torch's own path is finite, the same number
    plain = TransformedDistribution(q.base_dist, q.transforms).log_prob(near)
    torch.testing.assert_close(scores[:5], plain)


def test_iaf_inverse_keeps_exact_coordinates_when_the_others_overflow_midway():
    _, q = _posterior("iaf", latent=8, dtype=torch.float32, spread=6.0)
    step = q.transforms[0]
    x = q.base_dist.rsample((50,))
    y = step(x)
    torch.testing.assert_close(step._inverse(y.clone()), x, rtol=1e-3, atol=1e-3)


def test_the_representative_point_is_the_base_mean_pushed_through_the_flow():
    _, q = _posterior("planar")
    z = q.rsample()
    point = representative(q)
    x = q.base_dist.mean
    for step in q.transforms:
        x = step._call(x)
    torch.testing.assert_close(point, x)
    q.log_prob(z)  # the pending draw's cache survived
    with pytest.raises(NotImplementedError, match="representative"):
        _ = q.mean
    _, gaussian = _posterior("full")
    torch.testing.assert_close(representative(gaussian), gaussian.mean)


def test_diagonal_head_is_todays_posterior():
    params = torch.randn(4, 6)
    q = DiagonalGaussian(3)(params)
    z = torch.randn(2, 4, 3)
    torch.testing.assert_close(q.log_prob(z), diagonal_normal(*params.chunk(2, -1)).log_prob(z))


def test_full_covariance_density_and_kl_against_closed_forms():
    scipy_stats = pytest.importorskip("scipy.stats")
    _, q = _posterior("full", latent=3, batch=2)
    z = torch.randn(5, 2, 3, dtype=torch.float64)
    for b in range(2):
        cov = (q.scale_tril[b] @ q.scale_tril[b].T).detach().numpy()
        expected = scipy_stats.multivariate_normal(q.loc[b].detach().numpy(), cov).logpdf(z[:, b].numpy())
        torch.testing.assert_close(q.log_prob(z)[:, b].detach(), torch.as_tensor(expected))
    # the registered closed form against torch's MVN–MVN rule, for the standard prior and another
    p = StandardNormal(3).double()()
    other = torch.distributions.Independent(torch.distributions.Normal(
        torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5), 1)
    for prior in (p, other):
        as_mvn = torch.distributions.MultivariateNormal(prior.base_dist.loc,
                                                        scale_tril=torch.diag(prior.base_dist.scale))
        reference = torch.distributions.kl_divergence(
            torch.distributions.MultivariateNormal(q.loc, scale_tril=q.scale_tril), as_mvn)
        torch.testing.assert_close(kl_or_mc(q, prior), reference)


def test_kl_or_mc_is_closed_form_where_registered_else_monte_carlo_at_own_draws():
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3)
    q = diagonal_normal(mu, logvar)
    p = StandardNormal(3)()
    torch.testing.assert_close(kl_or_mc(q, p), torch.distributions.kl_divergence(q, p))
    _, flow = _posterior("sylvester-orthogonal", dtype=torch.float32)
    z, log_q = log_prob_at_own_sample(flow, (7,))
    torch.testing.assert_close(kl_or_mc(flow, p, z, log_q), (log_q - p.log_prob(z)).mean(0))
    torch.testing.assert_close(kl_or_mc(flow, p, z), (log_q - p.log_prob(z)).mean(0))
    assert kl_or_mc(flow, p, samples=3).shape == (4,)
    mog = MixtureOfGaussians(3, components=2)()
    z = q.rsample((100_000,))
    exact_ish = (q.log_prob(z) - mog.log_prob(z)).mean(0)
    torch.testing.assert_close(kl_or_mc(q, mog, z), exact_ish)


def test_planar_is_invertible_even_when_the_raw_u_points_against_w():
    w = torch.tensor([[1.0, 0.0]])
    u = torch.tensor([[-5.0, 1.0]])  # wᵀu = −5: f would fold the plane
    from vaekit.posteriors import PlanarStep

    step = PlanarStep(u, w, torch.zeros(1))
    assert float((step.w * step.u).sum()) > -1
    x = torch.linspace(-4, 4, 101)
    y = step._call(torch.stack([x, torch.zeros_like(x)], -1))[:, 0]
    assert (y.diff() > 0).all()  # monotone along w: one-to-one


@pytest.mark.parametrize("wu", [-5.0, -15.0, -30.0])
def test_planar_log_det_stays_exact_in_float32_when_w_u_is_very_negative(wu):
    """wᵀû = −1 + softplus(wᵀu) is within float32's rounding of −1 here: the log-det must come
    from that formula, not from a dot product that rounds to −1 or below (NaN, −inf)."""
    from vaekit.posteriors import PlanarStep

    torch.manual_seed(0)
    w = torch.randn(50, 5)
    u = w * wu / (w * w).sum(-1, keepdim=True)
    x = 1e-3 * torch.randn(50, 5)  # wᵀx + b near 0, where 1 + tanh'·wᵀû is smallest
    step = PlanarStep(u, w, torch.zeros(50))
    log_det = step.log_abs_det_jacobian(x, step(x))
    assert torch.isfinite(log_det).all()
    for i in range(50):
        exact = PlanarStep(u[i:i + 1].double(), w[i:i + 1].double(), torch.zeros(1, dtype=torch.float64))
        jac = jacobian(lambda v: exact(v[None])[0], x[i].double())  # noqa: B023
        assert abs(float(log_det[i]) - float(torch.linalg.slogdet(jac)[1])) < 1e-3


def test_sylvester_q_matrices_are_orthonormal():
    for kind, size in (("orthogonal", 2), ("householder", 4)):
        _, q = _posterior(f"sylvester-{kind}", latent=4, dtype=torch.float32)
        for step in q.transforms:
            gram = step.q.transpose(-1, -2) @ step.q
            torch.testing.assert_close(gram, torch.eye(gram.shape[-1]).expand_as(gram), atol=1e-5, rtol=0)
            assert step.q.shape[-2:] == (4, 3 if kind == "orthogonal" else size)


@pytest.mark.parametrize("shape", [(5, 16, 4), (2, 3, 6, 6), (4, 9, 1)])
def test_bjorck_reaches_the_polar_factor_with_its_gradient(shape):
    """Björck's iteration converges to the orthonormal matrix nearest A, U Vᵀ of A's SVD,
    whatever the layout it runs in; and it is differentiable through its rounds."""
    from vaekit.posteriors import _orthonormal_columns

    torch.manual_seed(1)
    a = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    q = _orthonormal_columns(a)
    u, _, vh = torch.linalg.svd(a.detach(), full_matrices=False)
    torch.testing.assert_close(q.detach(), u @ vh, atol=1e-9, rtol=0)
    weights = torch.randn(shape, dtype=torch.float64)
    (grad,) = torch.autograd.grad((q * weights).sum(), a)
    polar = lambda m: torch.einsum("...ik,...kj->...ij", *torch.linalg.svd(m, full_matrices=False)[::2])  # noqa: E731
    (expected,) = torch.autograd.grad((polar(a) * weights).sum(), a)
    torch.testing.assert_close(grad, expected, atol=1e-6, rtol=1e-6)


def test_bjorck_says_when_it_stops_short():
    from vaekit.posteriors import _orthonormal_columns

    a = torch.tensor([[1.0, 0.0], [0.0, 1e-3], [0.0, 0.0]])  # a tiny singular value: slow to grow
    with pytest.warns(RuntimeWarning, match=r"stopped after 3 rounds"):
        _orthonormal_columns(a, rounds=3)


def test_made_is_autoregressive_and_its_first_output_sees_the_context():
    from vaekit.posteriors import MADE

    torch.manual_seed(0)
    made = MADE(3, context_dim=2, hidden=9, layers=2)
    z, context = torch.randn(3), torch.randn(2)
    m_jac = jacobian(lambda z: made(z, context)[0], z)
    assert torch.triu(m_jac).abs().max() == 0  # m_i depends on z_j only for j < i
    moved = made(z, context + 1)[0] - made(z, context)[0]
    assert (moved.abs() > 0).all()  # every output, the first included, depends on the context


@pytest.mark.parametrize("name", ["planar", "iaf", "sylvester-orthogonal"])
def test_flows_compute_in_float32_under_bf16_autocast(name):
    head, _ = _posterior(name, dtype=torch.float32)
    h = torch.randn(4, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        params = head.amortise(h)  # the network part runs in bf16 ...
        torch.manual_seed(1)
        q = head(h)
        z16, log_q16 = log_prob_at_own_sample(q, (3,))
        assert q.log_prob(z16).dtype == torch.float32
    torch.manual_seed(1)  # ... the flow itself in float32: the same numbers as outside autocast
    z, log_q = log_prob_at_own_sample(head.distribution(params.float()), (3,))
    torch.testing.assert_close(z16, z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(log_q16, log_q, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lead", [(), (5,), (3, 2)])
def test_per_example_matmul_is_the_broadcast_product_for_any_draw_shape(lead):
    from vaekit.posteriors import per_example_matmul

    torch.manual_seed(0)
    m = torch.randn(7, 4, 3, dtype=torch.float64)
    x = torch.randn(*lead, 7, 4, dtype=torch.float64)
    assert torch.allclose(per_example_matmul(x, m), (x.unsqueeze(-2) @ m).squeeze(-2), atol=1e-12)
    strided = torch.randn(7, 3, 4, dtype=torch.float64).transpose(-1, -2)  # as R's transpose is passed
    assert torch.allclose(per_example_matmul(x, strided), (x.unsqueeze(-2) @ strided).squeeze(-2), atol=1e-12)


def test_full_covariance_draws_are_torchs_multivariate_normal_draws():
    from torch.distributions import MultivariateNormal

    from vaekit.posteriors import FullCovarianceNormal

    torch.manual_seed(1)
    loc = torch.randn(6, 3, dtype=torch.float64)
    tril = torch.tril(torch.randn(6, 3, 3, dtype=torch.float64), -1) + torch.diag_embed(torch.rand(6, 3) + 0.5).double()
    torch.manual_seed(2)
    ours = FullCovarianceNormal(loc, scale_tril=tril).rsample((4, 2))
    torch.manual_seed(2)
    theirs = MultivariateNormal(loc, scale_tril=tril).rsample((4, 2))
    assert ours.shape == (4, 2, 6, 3)
    assert torch.allclose(ours, theirs, atol=1e-12)
