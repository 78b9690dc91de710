"""Priors and posteriors as parts of the models (issue 23): every estimator for every
prior × posterior, the importance-sampling estimator against a hand-written one, a
full-covariance posterior on a linear-Gaussian model against the exact posterior and
log p(x), save/load of learned priors and flows, and the one point per example."""

import math
import warnings

import pytest
import torch
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal

import vaekit
from vaekit.errors import VaekitError
from vaekit.evaluation import evaluate, score_batch
from vaekit.model import VAE, TwoLayerVAE
from vaekit.objectives import Batch, elbo, elbo_objective, iwae_bound, iwae_objective
from vaekit.posteriors import POSTERIORS, FlowPosterior, make_posterior, representative
from vaekit.priors import MixtureOfGaussians, StandardNormal, VampPrior
from vaekit.rundir import RunDirectory
from vaekit.sampling import posterior_means, reconstruct

SHAPE = (1, 4, 4)
FEATURES = 8
NOT_INVERTIBLE = ("planar", "sylvester")


def _prior(name: str, latent: int) -> nn.Module:
    if name == "standard":
        return StandardNormal(latent)
    if name == "mog":
        return MixtureOfGaussians(latent, components=3)
    return VampPrior(SHAPE, latent, components=3)


def _vae(prior: str, posterior: str, latent: int = 2, seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(16, FEATURES), nn.Tanh())
    decoder = nn.Sequential(nn.Linear(latent, 16), nn.Unflatten(1, SHAPE))
    return VAE(encoder, decoder, "bernoulli", prior=_prior(prior, latent),
               posterior=make_posterior(posterior, latent, features=FEATURES))


def _data(n: int = 10) -> torch.Tensor:
    return torch.bernoulli(torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("posterior", list(POSTERIORS))
@pytest.mark.parametrize("prior", ["standard", "mog", "vamp"])
def test_every_estimator_runs_for_every_prior_and_posterior(prior, posterior):
    if prior == "vamp" and posterior in NOT_INVERTIBLE:
        with pytest.raises(VaekitError, match="without an inverse"):
            _vae(prior, posterior)
        return
    model, x = _vae(prior, posterior), _data()
    bound = elbo(model, x, samples=3)
    assert bound.shape == (10,) and torch.isfinite(bound).all()
    assert torch.isfinite(iwae_bound(model, x, 5)).all()
    for objective in (elbo_objective, iwae_objective):
        model.zero_grad()
        loss, _ = objective(model, Batch(x))
        loss.backward()
        learned = [p for name, p in model.named_parameters() if name.startswith(("prior_module", "posterior"))]
        assert all(p.grad is not None for p in learned)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Björck's iteration on a random start
        report = evaluate(model, x, importance_samples=16, gap_decomposition=True, local_steps=5,
                          mi_examples=10)
    for key in ("elbo", "log_likelihood", "gap", "iwae_bound", "elbo_local", "amortisation_gap",
                "approximation_gap"):
        assert math.isfinite(report[key]), key
    # the IS estimate is at least the ELBO on average (Jensen), here well beyond the noise
    assert report["log_likelihood"] > report["elbo"] - 3 * report["gap_se"]
    assert (report["mutual_information"] is None) == (posterior in NOT_INVERTIBLE)
    assert report["active_units"] is not None


# a VampPrior with Sylvester components is refused (its components' density is needed everywhere)
TWO_LAYER_PARTS = [(p, q) for p in ("mog", "vamp") for q in (None, "full", "iaf", "sylvester")
                   if (p, q) != ("vamp", "sylvester")]


@pytest.mark.parametrize("prior, posterior", TWO_LAYER_PARTS)
def test_two_layer_model_takes_a_top_prior_and_a_posterior_head(prior, posterior):
    torch.manual_seed(0)
    head = None if posterior is None else make_posterior(posterior, 3, features=FEATURES)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(16, FEATURES if head else 6), nn.Tanh())
    decoder = nn.Sequential(nn.Linear(3, 16), nn.Unflatten(1, SHAPE))
    model = TwoLayerVAE(encoder, decoder, "bernoulli", 3, 2, nn.Linear(3, 4), nn.Linear(2, 6),
                        prior=_prior(prior, 2), posterior=head)
    x = _data()
    q = model.encode(x)
    z, log_q = q.rsample_and_log_prob((4,))
    # the joint density is q(z1|x) q(z2|z1) at the draws, whatever q(z1|x) is
    z1, z2 = z.split([3, 2], -1)
    if posterior != "sylvester":  # invertible stages can be scored afresh at the split draws
        torch.testing.assert_close(log_q, q.first.log_prob(z1) + q.then(z1).log_prob(z2))
    p = model.prior
    torch.testing.assert_close(p.log_prob(z), model.prior_module().log_prob(z2) + p.then(z2).log_prob(z1))
    assert torch.isfinite(elbo(model, x, samples=2)).all()
    report = evaluate(model, x, importance_samples=8, mi_examples=10)
    assert math.isfinite(report["log_likelihood"])
    assert model.sample(3).shape == (3, *SHAPE)
    assert model.sample(3, generator=torch.Generator().manual_seed(0)).shape == (3, *SHAPE)


def _bernoulli_log_px(model, x, z):
    logits = model.decoder(z.reshape(-1, z.shape[-1])).reshape(*z.shape[:-1], -1)
    flat = x.flatten(1)
    return (flat * logits - torch.nn.functional.softplus(logits)).sum(-1)


@pytest.mark.parametrize("posterior", list(POSTERIORS))
def test_importance_sampling_estimate_is_the_hand_written_one(posterior):
    """log p̂(x) = log (1/K) Σ_k p(x|z_k) p(z_k) / q(z_k|x) with q's density computed apart from
    vaekit's: closed forms for the Gaussians, the base density and autograd's Jacobian of the
    whole flow for flows."""
    model = _vae("standard", posterior).double()
    x = _data(3).double()
    K = 20
    with torch.no_grad():
        q = model.encode(x)
        torch.manual_seed(5)
        ours = score_batch(model, x, q, K, K)["log_likelihood"]
        torch.manual_seed(5)
        if isinstance(q, FlowPosterior):
            eps = q.base_dist.rsample((K,))
            log_q = torch.empty(K, 3, dtype=torch.float64)
            z = torch.empty(K, 3, 2, dtype=torch.float64)
            for b in range(3):
                def flow(e, b=b):
                    out = e.reshape(1, 1, 2).expand(1, 3, 2).clone()
                    for step in q.transforms:
                        out = step._call(out)
                    return out[0, b]
                for k in range(K):
                    with torch.enable_grad():
                        jac = torch.autograd.functional.jacobian(flow, eps[k, b])
                    z[k, b] = flow(eps[k, b])
                    gaussian = q.base_dist.base_dist
                    base = Normal(gaussian.loc[b], gaussian.scale[b]).log_prob(eps[k, b]).sum()
                    log_q[k, b] = base - torch.linalg.slogdet(jac)[1]
        else:
            z = q.rsample((K,))
            full = posterior == "full"
            cov = q.scale_tril @ q.scale_tril.transpose(-1, -2) if full else torch.diag_embed(q.variance)
            diff = z - q.mean
            mahal = (diff.unsqueeze(-2) @ torch.linalg.solve(cov, diff.unsqueeze(-1))).squeeze(-1).squeeze(-1)
            log_q = -0.5 * (mahal + torch.logdet(2 * math.pi * cov))
        log_p = -0.5 * (z**2).sum(-1) - math.log(2 * math.pi)
        log_w = _bernoulli_log_px(model, x, z) + log_p - log_q
        expected = torch.log(torch.exp(log_w).mean(0))
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------- linear-Gaussian
def _linear_gaussian(seed: int = 0):
    """p(z) = N(0, I₂), p(x|z) = N(Wz + c, s² I₃) with a W that makes the posterior strongly
    correlated; data drawn from the model. Exact: p(x) = N(c, WWᵀ + s²I),
    p(z|x) = N(Σ Wᵀ(x − c)/s², Σ), Σ = (I + WᵀW/s²)⁻¹."""
    g = torch.Generator().manual_seed(seed)
    W = torch.tensor([[1.0, 0.9], [0.8, 1.0], [0.5, 0.6]], dtype=torch.float64)
    c = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    s = 0.5
    z = torch.randn(40, 2, generator=g, dtype=torch.float64)
    x = z @ W.T + c + s * torch.randn(40, 3, generator=g, dtype=torch.float64)
    log_px = MultivariateNormal(c, W @ W.T + s * s * torch.eye(3, dtype=torch.float64)).log_prob(x)
    cov = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + W.T @ W / s**2)
    return W, c, s, x, log_px, cov


def _linear_model(W, c, s, posterior: str) -> VAE:
    head = make_posterior(posterior, 2)
    encoder = nn.Linear(3, head.in_features).double()
    decoder = nn.Linear(2, 3).double()
    with torch.no_grad():
        decoder.weight.copy_(W)
        decoder.bias.copy_(c)
    return VAE(encoder, decoder, vaekit.likelihoods.GaussianLikelihood(sigma=s), posterior=head).double()


def test_full_covariance_posterior_is_exact_on_a_linear_gaussian_model():
    W, c, s, x, log_px, cov = _linear_gaussian()
    model = _linear_model(W, c, s, "full")
    tril = torch.linalg.cholesky(cov)
    with torch.no_grad():  # the encoder set to the exact posterior: [μ(x), log diag(L)², below]
        model.encoder.weight.zero_()
        model.encoder.weight[:2] = cov @ W.T / s**2
        model.encoder.bias[:2] = -(cov @ W.T / s**2) @ c
        model.encoder.bias[2:4] = torch.log(tril.diagonal() ** 2)
        model.encoder.bias[4] = tril[1, 0]
    # q = p(z|x): every importance weight is p(x), so the IS estimate is exact, and so is the
    # ELBO as the mean of the log-weights (kl="mc"); with the closed-form KL only its
    # reconstruction term is Monte Carlo, and the gap is 0 within its SE
    report = evaluate(model, x, importance_samples=200, kl="mc", seed=0)
    assert report["log_likelihood"] == pytest.approx(float(log_px.mean()), abs=1e-9)
    assert report["gap"] == pytest.approx(0.0, abs=1e-9)
    assert report["elbo"] == pytest.approx(float(log_px.mean()), abs=1e-9)
    closed = evaluate(model, x, importance_samples=200, seed=0)
    assert abs(closed["gap"]) < 3 * closed["gap_se"]


def test_full_covariance_posterior_trained_reaches_the_exact_posterior_a_diagonal_one_cannot():
    """The encoder trained on the ELBO (decoder fixed at the truth): the full-covariance q
    reaches p(z|x), so the gap and its approximation part are 0 within their SEs and the IS
    estimate is the exact log p(x); the diagonal family's per-example optimum stays
    KL(mean-field optimum ‖ p(z|x)) = ½ log(Σ11 Σ22 / det Σ) below log p(x)."""
    W, c, s, x, log_px, cov = _linear_gaussian()
    exact = float(log_px.mean())
    torch.manual_seed(0)
    full = _linear_model(W, c, s, "full")
    full.decoder.requires_grad_(False)
    optimiser = torch.optim.Adam(full.encoder.parameters(), lr=0.05)
    decay = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda t: 1 - t / 1000)
    for _ in range(1000):
        optimiser.zero_grad()
        (-elbo(full, x, samples=8).mean()).backward()
        optimiser.step()
        decay.step()
    with torch.no_grad():
        torch.testing.assert_close(full.encode(x).covariance_matrix, cov.expand(40, 2, 2), atol=0.01, rtol=0)
    report = evaluate(full, x, importance_samples=500, gap_decomposition=True, seed=0)
    assert abs(report["gap"]) < 3 * report["gap_se"] + 0.005
    assert abs(report["approximation_gap"]) < 3 * report["approximation_gap_se"] + 0.005
    assert report["log_likelihood"] == pytest.approx(exact, abs=3 * report["log_likelihood_se"] + 0.002)
    diagonal = _linear_model(W, c, s, "diagonal")
    worse = evaluate(diagonal, x, importance_samples=100, gap_decomposition=True, local_steps=400, seed=0)
    expected = 0.5 * math.log(float(cov[0, 0] * cov[1, 1] / torch.det(cov)))  # 0.74 nats here
    assert exact - worse["elbo_local"] == pytest.approx(expected, abs=0.03)


# ---------------------------------------------------------------------- save / load
@pytest.mark.parametrize("prior,posterior", [("mog", "iaf"), ("vamp", "full"), ("vamp", "householder"),
                                             ("mog", "sylvester"), ("standard", "planar")])
def test_learned_priors_and_flows_survive_a_save_and_load(tmp_path, prior, posterior):
    model, x = _vae(prior, posterior, seed=0), _data(4)
    with torch.no_grad():  # parameters away from their initial values
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    run.write_info(SHAPE, model="VAE")
    run.save_weights(model)
    other = _vae(prior, posterior, seed=1)
    pairs = zip(model.state_dict().values(), other.state_dict().values(), strict=True)
    assert not all(torch.equal(a, b) for a, b in pairs)
    run.load_weights(other)  # what vaekit.load(run, model=other) does with the weights
    loaded = other
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    model.eval()
    z = torch.randn(5, 2)
    assert torch.equal(model.prior.log_prob(z), loaded.prior.log_prob(z))
    torch.manual_seed(3)
    a = model.encode(x).rsample_and_log_prob((2,)) if posterior not in ("full",) else None
    torch.manual_seed(3)
    b = loaded.encode(x).rsample_and_log_prob((2,)) if posterior not in ("full",) else None
    if a is not None:
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(representative(model.encode(x)), representative(loaded.encode(x)))


def test_the_default_prior_adds_nothing_to_the_state_dict():
    model = VAE(nn.Linear(16, 4), nn.Linear(2, 16), latent_dim=2)
    assert sorted(model.state_dict()) == ["decoder.bias", "decoder.weight", "encoder.bias", "encoder.weight"]
    hvae = TwoLayerVAE(nn.Linear(16, 6), nn.Linear(3, 16), "bernoulli", 3, 2, nn.Linear(3, 4), nn.Linear(2, 6))
    assert not any(k.startswith("prior_module") for k in hvae.state_dict())


# ---------------------------------------------------------------------- one point per example
def test_figures_and_sampling_use_the_representative_point_of_a_flow():
    model, x = _vae("standard", "sylvester"), _data(6)
    q = model.encode(x)
    point = representative(q)
    torch.testing.assert_close(posterior_means(model, x), point)
    torch.testing.assert_close(reconstruct(model, x), torch.sigmoid(model.decoder(point)))
    with pytest.raises(NotImplementedError, match="representative"):
        q.mean  # noqa: B018 - a flow's mean has no closed form; the rule is stated instead


# ---------------------------------------------------------------------- refusals
def test_vampprior_is_bound_without_side_effects_and_refuses_a_conditional_model():
    model, x = _vae("vamp", "diagonal"), _data(4)
    model.encode(x)
    clamped = model.clamped
    with torch.no_grad():
        model.posterior.amortise.bias[2:4] = 30.0  # the pseudo-inputs' log-variances clamped
    model.prior.log_prob(torch.zeros(2))
    assert model.clamped is clamped  # the prior's encoder pass leaves the data's count alone
    with pytest.raises(VaekitError, match="conditional"):
        VAE(nn.Linear(16, 4), nn.Linear(2, 16), latent_dim=2, num_classes=3,
            prior=VampPrior(SHAPE, 2, components=3))


def test_free_bits_refuses_where_the_kl_per_coordinate_is_undefined():
    x = _data(4)
    for prior, posterior in (("mog", "diagonal"), ("standard", "iaf"), ("standard", "full")):
        model = _vae(prior, posterior)
        with pytest.raises(VaekitError, match="per latent coordinate is undefined"):
            elbo_objective(model, Batch(x), free_bits=0.1)
    loss, _ = elbo_objective(_vae("standard", "diagonal"), Batch(x), free_bits=0.1)
    assert torch.isfinite(loss)


def test_parts_over_other_coordinates_are_refused_with_both_numbers():
    with pytest.raises(VaekitError, match="3 latent coordinates.*2"):
        VAE(nn.Linear(16, 4), nn.Linear(2, 16), latent_dim=2, prior=MixtureOfGaussians(3))
    with pytest.raises(VaekitError, match="nn.Module"):
        VAE(nn.Linear(16, 4), nn.Linear(2, 16), latent_dim=2, prior=lambda: Normal(0, 1))
    with pytest.raises(VaekitError, match="encoder gives 6 features per example but latent_dim 2 needs 4"):
        VAE(nn.Linear(16, 6), nn.Linear(2, 16), latent_dim=2).encode(torch.rand(3, 16))
    with pytest.raises(VaekitError, match="encoder gives 7 features per example but the iaf posterior needs 8"):
        head = make_posterior("iaf", 2, features=8)
        VAE(nn.Linear(16, 7), nn.Linear(2, 16), posterior=head).encode(torch.rand(3, 16))
    with pytest.raises(VaekitError, match="decode takes latent points with 2 coordinates"):
        VAE(nn.Linear(16, 4), nn.Linear(2, 16), latent_dim=2).decode(torch.zeros(3, 3))


def test_an_analytic_kl_is_refused_where_none_is_registered_and_auto_falls_back():
    model, x = _vae("mog", "diagonal"), _data(4)
    with pytest.raises(VaekitError, match="no closed-form KL"):
        elbo(model, x, kl="analytic")
    torch.manual_seed(0)
    auto = elbo(model, x, samples=4)
    torch.manual_seed(0)
    mc = elbo(model, x, samples=4, kl="mc")
    torch.testing.assert_close(auto, mc)
    standard = _vae("standard", "diagonal")
    assert isinstance(standard.prior, Independent)
    torch.manual_seed(0)
    a = elbo(standard, x, kl="auto")
    torch.manual_seed(0)
    b = elbo(standard, x, kl="analytic")
    assert torch.equal(a, b)


def _strongly_coupled_two_layer(head: str | None) -> TwoLayerVAE:
    """A two-layer model whose q(z2|z1) leans hard on z1 (mean 3 z1, s.d. 0.1): a family that
    drops that dependence cannot fit as well as the encoder."""
    torch.manual_seed(0)
    posterior = None if head is None else make_posterior(head, 2, features=FEATURES)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(16, FEATURES if posterior else 4), nn.Tanh())
    decoder = nn.Sequential(nn.Linear(2, 16), nn.Unflatten(1, SHAPE))
    up = nn.Linear(2, 4)
    with torch.no_grad():
        up.weight.zero_()
        up.weight[:2] = 3 * torch.eye(2)
        up.bias.copy_(torch.tensor([0.0, 0.0, 2 * math.log(0.1), 2 * math.log(0.1)]))
    return TwoLayerVAE(encoder, decoder, "bernoulli", 2, 2, up, nn.Linear(2, 4), posterior=posterior)


@pytest.mark.parametrize("head", [None, "iaf"])
def test_two_layer_gap_split_refits_the_posteriors_own_family(head):
    from vaekit.estimators import log_prob_at_own_sample
    from vaekit.evaluation import _local_family

    model, x = _strongly_coupled_two_layer(head), _data(6)
    with torch.no_grad():
        q = model.encode(x)
        make, start = _local_family(model, x, q, None)
        # δ = 0 is the encoder's own q: the same draws get the same density under both
        torch.manual_seed(3)
        z, log_local = log_prob_at_own_sample(make(start), (5,))
        torch.manual_seed(3)
        z_q, log_q = log_prob_at_own_sample(q, (5,))
    torch.testing.assert_close(z, z_q)
    torch.testing.assert_close(log_local, log_q)
    report = evaluate(model, x, importance_samples=400, gap_decomposition=True, local_steps=60, seed=0,
                      mi_examples=6)
    # the refitted family contains the encoder's q, so refitting cannot lose (beyond the noise)
    assert report["amortisation_gap"] > -3 * report["amortisation_gap_se"] - 0.02
