"""Evaluation against ground truth: probabilistic PCA's closed form, exact marginals of
linear-Gaussian models, quadrature over a 1-D latent, and models built with known structure.

Tolerances are stated where they are used; Monte-Carlo comparisons use the standard errors
the evaluator itself reports, which a separate test checks against repeated runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vaekit import evaluation as ev
from vaekit.app.config import Config
from vaekit.app.runs import build_model, objective_for
from vaekit.callbacks import FINAL_K
from vaekit.objectives import Batch, iwae_bound, log_importance_weights


# ---------------------------------------------------------------------- helpers
def linear_model(latent: int, d: int, sigma: str = "shared"):
    config = Config(architecture="linear", likelihood="gaussian", sigma=sigma, latent_dim=latent)
    return build_model(config, (d,)).eval()


def set_linear(model, enc_weight, enc_bias, dec_weight, dec_bias) -> None:
    with torch.no_grad():
        model.encoder[0].weight.copy_(enc_weight)
        model.encoder[0].bias.copy_(enc_bias)
        model.decoder[0].weight.copy_(dec_weight)
        model.decoder[0].bias.copy_(dec_bias)


def decoder_parts(model):
    w = model.decoder[0].weight.detach().double()
    b = model.decoder[0].bias.detach().double()
    return w, b, float(model.likelihood.sigma().detach())


def exact_log_likelihood(model, x: torch.Tensor) -> torch.Tensor:
    """log N(x; b, W Wᵀ + σ² I): the linear-Gaussian model's marginal, from its own weights."""
    w, b, sigma = decoder_parts(model)
    cov = w @ w.T + sigma**2 * torch.eye(len(b), dtype=torch.float64)
    return torch.distributions.MultivariateNormal(b, cov).log_prob(x.double())


def exact_posterior(model, x: torch.Tensor):
    """p(z|x) = N(m, Λ⁻¹) with Λ = WᵀW/σ² + I and m = Λ⁻¹ Wᵀ (x − b)/σ²."""
    w, b, sigma = decoder_parts(model)
    precision = w.T @ w / sigma**2 + torch.eye(w.shape[1], dtype=torch.float64)
    mean = torch.linalg.solve(precision, w.T @ (x.double() - b).T / sigma**2).T
    return mean, precision


def gaussian_elbo(model, x, mean, var) -> torch.Tensor:
    """The exact ELBO of q = N(mean, diag var) under the linear-Gaussian model."""
    w, b, sigma = decoder_parts(model)
    d = w.shape[0]
    residual = ((x.double() - mean @ w.T - b) ** 2).sum(1) + (var * (w**2).sum(0)).sum(1)
    reconstruction = -0.5 * d * math.log(2 * math.pi * sigma**2) - residual / (2 * sigma**2)
    kl = 0.5 * (var + mean**2 - 1 - var.log()).sum(1)
    return reconstruction - kl


def ppca_max_log_likelihood(x: torch.Tensor, latent: int) -> float:
    """Tipping & Bishop (1999): the maximum over (μ, W, σ²) of the mean log-likelihood of
    pPCA is −½[D log 2π + Σ_{j≤q} log λ_j + (D − q) log σ² + D], σ² the mean of the
    discarded eigenvalues λ of the sample covariance (divided by N)."""
    xc = x.double() - x.double().mean(0)
    eigenvalues = torch.linalg.eigvalsh(xc.T @ xc / len(x)).flip(0)
    d = x.shape[1]
    sigma2 = eigenvalues[latent:].mean()
    return float(-0.5 * (d * math.log(2 * math.pi) + eigenvalues[:latent].log().sum()
                         + (d - latent) * sigma2.log() + d))


# ---------------------------------------------------------------------- pPCA
@pytest.fixture(scope="module")
def ppca():
    """Data from a known pPCA model (D = 10, latent 2, N = 1000) and vaekit's linear VAE
    trained on it full-batch with Adam (2500 steps, a few seconds); the gap after 100 steps
    is kept to show it shrinking."""
    g = torch.Generator().manual_seed(0)
    d, latent, n = 10, 2, 1000
    w = torch.randn(d, latent, generator=g) * torch.tensor([2.0, 1.0])
    x = torch.randn(n, latent, generator=g) @ w.T + torch.randn(d, generator=g)
    x = x + 0.5 * torch.randn(n, d, generator=g)
    torch.manual_seed(0)
    model = linear_model(latent, d)
    config = Config(architecture="linear", likelihood="gaussian", latent_dim=latent)
    steps = 2500
    optimiser = torch.optim.Adam(model.parameters(), lr=0.1)
    decay = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda t: 1 - t / steps)
    early_gap = None
    objective = objective_for(config)
    for step in range(steps):
        loss, _ = objective(model, Batch(x))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        decay.step()
        if step == 100:
            early_gap = ev.evaluate(model, x, importance_samples=200)["gap"]
    return model.eval(), x, early_gap


def test_linear_vae_reaches_the_ppca_closed_form(ppca):
    model, x, early_gap = ppca
    result = ev.evaluate(model, x, importance_samples=1000, seed=1)
    best = ppca_max_log_likelihood(x, 2)
    ll, se = result["log_likelihood"], result["log_likelihood_se"]
    # Within 0.02 nats per example of the maximum, and never above it beyond 3 SE.
    assert abs(ll - best) < 0.02
    assert ll <= best + 3 * se + 1e-6
    # At the optimum the diagonal posterior is exact (orthogonal columns): the gap vanishes.
    assert early_gap > 0.1
    assert result["gap"] < 0.02
    assert result["elbo"] <= ll + 3 * result["gap_se"]


def test_importance_sampling_converges_to_the_exact_marginal(ppca):
    model, x, _ = ppca
    exact = float(exact_log_likelihood(model, x).mean())
    # A proposal deliberately too wide (σ² × e^1.5) opens a gap of about 2 nats to close.
    broad = linear_model(2, 10)
    broad.load_state_dict(model.state_dict())
    with torch.no_grad():
        broad.encoder[0].bias[2:] += 1.5
    errors = []
    for k in (1, 10, 100, 1000):
        result = ev.evaluate(broad, x, importance_samples=k, mi_examples=10, seed=k)
        ll, se = result["log_likelihood"], result["log_likelihood_se"] or 0.0  # no SE at K = 1
        if k > 1:
            assert result["elbo"] <= ll + 3 * (se + result["elbo_se"])
        assert ll <= exact + 3 * se + 1e-6
        errors.append(exact - ll)
    assert errors[0] > 1.0
    assert errors[0] > errors[1] > errors[2] > errors[3]
    assert errors[3] < 3 * se + 0.01


def test_agrees_with_objectives_log_importance_weights(ppca):
    model, x, _ = ppca
    torch.manual_seed(3)
    expected = log_importance_weights(model, x[:50], 7)
    torch.manual_seed(3)
    q = model.encode(x[:50])
    log_px, log_ratio = ev.weight_terms(model, q, x[:50], q.rsample((7,)))
    torch.testing.assert_close(log_px + log_ratio, expected)


# ---------------------------------------------------------------------- 1-D latent, Bernoulli
def tiny_bernoulli_model():
    """1-D latent, 6 Bernoulli pixels from a random tanh decoder, and an encoder whose q is a
    broad Gaussian for every x (a safe proposal), so the IS weights are well behaved."""
    torch.manual_seed(0)
    config = Config(latent_dim=1, hidden=[8], activation="tanh", likelihood="bernoulli")
    model = build_model(config, (6,)).eval()
    with torch.no_grad():
        for layer in model.decoder:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.mul_(3.0)
        last = model.encoder[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.3, math.log(1.5**2)]))
    return model


def all_binary_images(d: int = 6) -> torch.Tensor:
    return torch.tensor([[(i >> j) & 1 for j in range(d)] for i in range(2**d)], dtype=torch.float32)


def quadrature_log_likelihood(model, x: torch.Tensor) -> torch.Tensor:
    """log ∫ N(z; 0, 1) p(x|z) dz on a fine grid over [−12, 12] (Riemann sum in log space)."""
    z = torch.linspace(-12, 12, 24001, dtype=torch.float64)
    with torch.no_grad():
        log_px = model.decode(z[:, None].float()).log_prob(x[:, None]).double()  # [N, grid]
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z)
    return torch.logsumexp(log_px + log_prior, dim=1) + math.log(float(z[1] - z[0]))


def test_importance_sampling_matches_quadrature(monkeypatch):
    model = tiny_bernoulli_model()
    x = all_binary_images()
    truth = quadrature_log_likelihood(model, x)
    # The quadrature itself: probabilities of all 64 binary images sum to 1.
    assert abs(float(torch.logsumexp(truth, 0))) < 1e-6
    # Batches of 16 examples, chunks of 3 draws: the batching paths all run.
    monkeypatch.setattr(ev, "VALUES", 16 * 1000)
    monkeypatch.setattr(ev, "ROWS", 3 * 16)
    torch.manual_seed(0)
    scores = ev.per_example(model, x, importance_samples=1000, iwae_k=5)
    z = (scores["log_likelihood"] - truth) / scores["log_likelihood_var"].sqrt()
    assert float(z.abs().max()) < 4.5  # 64 examples: |z| > 4.5 has odds ~1e-4
    summary = ev.summarise(model, x, scores)
    assert abs(summary["log_likelihood"] - float(truth.mean())) < 3 * summary["log_likelihood_se"]
    assert summary["gap"] > 20 * summary["gap_se"]  # a real gap, so the check above means something


def test_curve_rises_with_k_from_the_elbo():
    model = tiny_bernoulli_model()
    x = all_binary_images()
    result = ev.evaluate(model, x, importance_samples=1000, curve=True, seed=1)
    points = result["curve"]
    assert [p["k"] for p in points] == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    # K = 1 is the ELBO in expectation (SD of a difference ≤ sum of the SDs).
    first = points[0]
    assert abs(first["estimate"] - result["elbo"]) < 4 * (first["se"] + result["elbo_se"])
    # Non-decreasing in K on average, and clearly rising overall.
    for a, b in zip(points, points[1:], strict=False):
        assert b["estimate"] >= a["estimate"] - 3 * (a["se"] + b["se"])
    assert points[-1]["estimate"] - first["estimate"] > 10 * (first["se"] + points[-1]["se"])
    assert points[-1]["estimate"] == result["log_likelihood"]
    assert points[5]["estimate"] == result["iwae_bound"]


def test_iwae_bound_agrees_with_objectives():
    model = tiny_bernoulli_model()
    x = all_binary_images()
    result = ev.evaluate(model, x, importance_samples=2000, iwae_k=10, seed=2)
    torch.manual_seed(3)
    with torch.no_grad():
        reference = torch.stack([iwae_bound(model, x, 10) for _ in range(200)]).double()
    ref_mean = float(reference.detach().mean())
    ref_se = float(reference.mean(1).std() / math.sqrt(len(reference)))
    assert abs(result["iwae_bound"] - ref_mean) < 4 * math.hypot(result["iwae_bound_se"], ref_se)


@pytest.mark.parametrize("proposal", [(0.3, 1.5), (0.8, 0.4)])
def test_standard_errors_match_the_scatter_of_repeated_runs(proposal):
    """The reported SEs describe the spread of the means over independent seeds: for 40
    seeds the sample SD has a relative error of about 11 %, so the ratio must lie in
    [0.6, 1.5] (beyond 3.5 of those errors). Two proposals: broad (light-tailed weights)
    and narrow, off-centre q = N(0.8, 0.4²), whose weights p/q have an infinite variance."""
    model = tiny_bernoulli_model()
    with torch.no_grad():
        model.encoder[-1].bias.copy_(torch.tensor([proposal[0], math.log(proposal[1] ** 2)]))
    x = all_binary_images()
    keys = ("elbo", "log_likelihood", "gap", "iwae_bound")
    means = {k: [] for k in keys}
    ses = {k: [] for k in keys}
    for seed in range(40):
        torch.manual_seed(seed)
        scores = ev.per_example(model, x, importance_samples=100, iwae_k=10)
        for key in keys:
            mean, se = ev._mean_and_se(scores, key)
            means[key].append(mean)
            ses[key].append(se)
    for key in keys:
        ratio = float(np.std(means[key], ddof=1) / np.mean(ses[key]))
        assert 0.6 < ratio < 1.5, (key, ratio)


# ---------------------------------------------------------------------- estimators
def test_grouped_values_and_jackknife_against_brute_force():
    g = torch.Generator().manual_seed(0)
    log_w = (torch.randn(60, 3, generator=g) * 2).double()
    for k in (1, 7, 20):
        groups = 60 // k
        values = log_w[: groups * k].reshape(groups, k, 3).logsumexp(1) - math.log(k)
        estimate, var = ev._grouped(log_w, k)
        torch.testing.assert_close(estimate, values.mean(0))
        torch.testing.assert_close(var, values.var(0) / groups)
    # One group: the jackknife, each draw left out in turn.
    estimate, var = ev._grouped(log_w, 60)
    left_out = torch.stack([torch.cat([log_w[:j], log_w[j + 1 :]]).logsumexp(0) - math.log(59)
                            for j in range(60)])
    torch.testing.assert_close(estimate, log_w.logsumexp(0) - math.log(60))
    torch.testing.assert_close(var, 59 / 60 * ((left_out - left_out.mean(0)) ** 2).sum(0))
    # One weight holding all the mass: a huge but finite variance, never NaN or infinity.
    _, var = ev._grouped(torch.tensor([[0.0], [-2000.0], [-2000.0]], dtype=torch.float64), 3)
    assert torch.isfinite(var).all() and float(var) > 1e5


def test_examples_per_batch_keeps_memory_independent_of_k():
    for k in (1, 50, 5000, ev.VALUES, 10 * ev.VALUES):
        batch = ev.examples_per_batch(1000, k)
        assert 1 <= batch <= 1000
        assert batch * k <= ev.VALUES or batch == 1
        assert batch * ev.chunk_size(batch) <= max(ev.ROWS, batch)


# ---------------------------------------------------------------------- active units, MI
def test_active_units_find_the_dead_dimensions():
    """Latent 4 of which 2 are dead: their encoder rows are zero (q = N(0, 1) whatever x) and
    so are their decoder columns."""
    g = torch.Generator().manual_seed(0)
    model = linear_model(4, 6, sigma="fixed:0.5")
    enc_w = torch.randn(8, 6, generator=g) * 0.5
    enc_w[[2, 3, 6, 7]] = 0.0
    dec_w = torch.randn(6, 4, generator=g)
    dec_w[:, 2:] = 0.0
    set_linear(model, enc_w, torch.zeros(8), dec_w, torch.zeros(6))
    x = torch.randn(500, 6, generator=g)
    count, per_dim = ev.active_units(model, x)
    assert count == 2
    assert min(per_dim[:2]) > 0.1
    assert per_dim[2:] == [0.0, 0.0]
    result = ev.evaluate(model, x, importance_samples=10)
    assert result["active_units"] == 2 and result["active_units_per_dim"] == per_dim


def one_dim_encoder(means: list[float], log_var: float):
    """A linear VAE on 1-D data x_i = i whose q(z|x_i) = N(means[i], e^log_var)."""
    model = linear_model(1, 1, sigma="fixed:1")
    slope = means[1] - means[0] if len(means) > 1 else 0.0
    assert all(abs(m - (means[0] + slope * i)) < 1e-9 for i, m in enumerate(means))
    set_linear(model, torch.tensor([[slope], [0.0]]), torch.tensor([means[0], log_var]),
               torch.ones(1, 1), torch.zeros(1))
    return model, torch.arange(len(means), dtype=torch.float32)[:, None]


def test_mutual_information_matches_quadrature():
    model, x = one_dim_encoder([-1.0, -0.25, 0.5, 1.25, 2.0], math.log(0.6**2))
    q = torch.distributions.Normal(torch.tensor([-1.0, -0.25, 0.5, 1.25, 2.0]).double(), 0.6)
    z = torch.linspace(-10, 12, 20001, dtype=torch.float64)
    log_q = q.log_prob(z[:, None])  # [grid, 5]
    log_mix = torch.logsumexp(log_q, 1, keepdim=True) - math.log(5)
    truth = float((log_q.exp() * (log_q - log_mix)).sum(0).mean() * (z[1] - z[0]))
    # Every example repeated 400 times: the aggregate posterior is unchanged, draws are many.
    torch.manual_seed(0)
    mi, se = ev.mutual_information(model, x.repeat(400, 1), examples=2000)
    assert 0.2 < truth < math.log(5)
    assert abs(mi - truth) < 3.5 * se


def test_mutual_information_limits_and_the_kl_split():
    # The same posterior for every x: q(z) = q(z|x), so I_q = 0 and the KL is all marginal.
    model, x = one_dim_encoder([0.7] * 1, math.log(0.3))
    x = x.repeat(50, 1)
    result = ev.evaluate(model, x, importance_samples=10)
    assert abs(result["mutual_information"]) < 1e-6
    assert result["marginal_kl"] == pytest.approx(result["kl"], abs=1e-6)
    # Far-apart, narrow posteriors: q(z|x_i) is all of q(z) near its draws, so I_q = log N.
    model, x = one_dim_encoder([10.0 * i for i in range(20)], math.log(0.01))
    mi, _ = ev.mutual_information(model, x)
    assert mi == pytest.approx(math.log(20), abs=1e-6)
    assert ev.evaluate(model, x, importance_samples=2)["mutual_information_max"] == math.log(20)
    result = ev.evaluate(model, x, importance_samples=10)
    assert result["mutual_information"] + result["marginal_kl"] == pytest.approx(result["kl"])


# ---------------------------------------------------------------------- gap decomposition
def test_gap_decomposition_on_the_linear_gaussian_model():
    """With correlated columns of W the exact posterior is a correlated Gaussian; the best
    diagonal Gaussian has the posterior mean and variances 1/Λ_uu (the mean-field optimum).
    Its ELBO, log p(x) and the amortised q's ELBO are all exact here."""
    g = torch.Generator().manual_seed(0)
    d, latent = 5, 2
    w = torch.randn(d, latent, generator=g)
    w[:, 1] += 0.8 * w[:, 0]  # correlated columns: the approximation gap is not zero
    b = torch.randn(d, generator=g)
    model = linear_model(latent, d, sigma="fixed:0.5")
    x = torch.randn(200, latent, generator=g) @ w.T + b + 0.5 * torch.randn(200, d, generator=g)
    # An encoder near, but not at, the best amortised map: a real amortisation gap.
    set_linear(model, torch.zeros(2 * latent, d), torch.zeros(2 * latent), w, b)
    _, precision = exact_posterior(model, x)
    gain = torch.linalg.solve(precision, w.double().T / 0.25).float()
    enc_w = torch.cat([gain + 0.03 * torch.randn(latent, d, generator=g), torch.zeros(latent, d)])
    enc_b = torch.cat([-gain @ b + 0.2, torch.log(1 / torch.diagonal(precision)).float() + 0.5])
    set_linear(model, enc_w, enc_b, w, b)

    mean, precision = exact_posterior(model, x)
    best_var = (1 / torch.diagonal(precision)).expand_as(mean)
    elbo_best = gaussian_elbo(model, x, mean, best_var)
    with torch.no_grad():
        q = model.encode(x)
    elbo_amortised = gaussian_elbo(model, x, q.mean.double(), q.variance.double())
    log_px = exact_log_likelihood(model, x)

    # The default 200 noisy Adam steps land the means within a third of a posterior SD
    # (about 0.16 here, from up to 0.6 away) and the variances within 10 % typically.
    torch.manual_seed(0)
    local = ev.optimise_local(model, x, q)
    assert float((q.mean.double() - mean).abs().max()) > 0.3
    torch.testing.assert_close(local.mean.double(), mean, atol=0.05, rtol=0)
    error = (local.variance.double() / best_var - 1).abs()
    assert float(error.median()) < 0.1 and float(error.max()) < 0.5
    fitted = gaussian_elbo(model, x, local.mean.double(), local.variance.double())
    deficit = float((elbo_best - fitted).mean())
    assert 0 <= deficit < 0.02

    result = ev.evaluate(model, x, importance_samples=500, gap_decomposition=True, seed=1)
    amortisation = float((elbo_best - elbo_amortised).mean())
    approximation = float((log_px - elbo_best).mean())
    assert amortisation > 0.2 and approximation > 0.2
    # Within 3 SE plus what the optimisation leaves of the optimum (0.02 nats, as above).
    assert abs(result["elbo_local"] - float(elbo_best.mean())) < 3 * result["elbo_local_se"] + 0.02
    assert abs(result["amortisation_gap"] - amortisation) < 3 * result["amortisation_gap_se"] + 0.02
    assert abs(result["approximation_gap"] - approximation) < 3 * result["approximation_gap_se"] + 0.02
    assert result["amortisation_gap"] + result["approximation_gap"] == pytest.approx(result["gap"])


# ---------------------------------------------------------------------- bits per dimension
def test_bits_per_dim_says_what_it_is():
    model = tiny_bernoulli_model()
    binary = all_binary_images()
    bits, note = ev.bits_per_dim(model, binary, 4.0)
    assert bits == pytest.approx(4.0 / (6 * math.log(2))) and "discrete" in note
    bits, note = ev.bits_per_dim(model, binary * 0.5, 4.0)
    assert bits is None and "not a normalised probability" in note
    bits, note = ev.bits_per_dim(linear_model(2, 6), torch.rand(5, 6), 4.0)
    assert bits == pytest.approx(4.0 / (6 * math.log(2))) and "no dequantisation" in note


# ---------------------------------------------------------------------- command line, runs
EXPECTED_KEYS = {
    "split", "n", "elbo", "reconstruction", "kl", "log_likelihood", "gap", "iwae_bound", "nll",
    "bits_per_dim", "bits_per_dim_note", "active_units", "active_units_per_dim",
    "mutual_information", "marginal_kl", "importance_samples", "iwae_k", "elbo_se",
    "reconstruction_se", "kl_se", "log_likelihood_se", "gap_se", "iwae_bound_se", "nll_se",
    "bits_per_dim_se", "mutual_information_se", "mutual_information_max", "marginal_kl_se", "seed",
    "weights", "epoch",  # which weights were scored, and the epoch they are from
}


def test_cli_evaluate_json_end_to_end(tiny_run, tmp_path):
    from conftest import run_cli

    out = tmp_path / "scores.csv"
    done = run_cli("evaluate", tiny_run, "--json", "--importance-samples", "30", "--iwae-k", "10",
                   "--per-example", out, "--no-save")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == EXPECTED_KEYS
    assert result["importance_samples"] == 30 and result["iwae_k"] == 10
    assert result["elbo"] <= result["log_likelihood"] + 3 * result["gap_se"]
    assert result["nll"] == -result["log_likelihood"]
    table = np.genfromtxt(out, delimiter=",", names=True)
    assert len(table) == result["n"]
    assert np.mean(table["log_likelihood"]) == pytest.approx(result["log_likelihood"])
    assert not list(tiny_run.glob("evaluation-*.json"))


def test_cli_evaluate_table_curve_gaps_and_saving(tiny_run, tmp_path, capsys):
    import shutil

    from vaekit.app.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    scores = tmp_path / "scores.npy"
    code = main(["evaluate", str(run), "--importance-samples", "20", "--curve", "--quiet",
                 "--gap-decomposition", "--local-steps", "5", "--per-example", str(scores)])
    out = capsys.readouterr().out
    assert code == 0
    assert "importance-sampled, K = 20" in out and "amortisation_gap" in out
    assert (run / "likelihood_curve.png").stat().st_size > 0
    stored = json.loads((run / "evaluation-validation.json").read_text())
    assert {"elbo_local", "amortisation_gap", "approximation_gap", "curve"} <= set(stored)
    table = np.load(scores, allow_pickle=False)
    assert {"elbo", "log_likelihood", "elbo_local"} <= set(table.dtype.names)
    assert len(table) == stored["n"]


@pytest.mark.parametrize("args, message", [
    (["--importance-samples", "0"], "at least 1"),
    (["--importance-samples", "5", "--iwae-k", "10"], "between 1 and"),
    (["--per-example", "scores.txt"], ".csv or .npy"),
])
def test_cli_evaluate_bad_options(tiny_run, args, message, capsys, tmp_path, monkeypatch):
    from vaekit.app.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(tiny_run), "--no-save", *args]) == 2
    assert message in capsys.readouterr().err


def test_training_stores_the_full_evaluation(tiny_run):
    stored = json.loads((tiny_run / "evaluation.json").read_text())
    assert stored["importance_samples"] == FINAL_K
    assert stored["elbo"] <= stored["log_likelihood"] + 3 * stored["gap_se"]
    assert stored["active_units"] is not None


def test_autoencoder_has_no_likelihood(tiny_config, tmp_path):
    from vaekit.app.data import run_splits

    tiny_config.model = "ae"
    data = run_splits(tiny_config)["validation"]
    model = build_model(tiny_config, data.event_shape)
    x = data.x
    result = ev.evaluate(model, x, importance_samples=5)
    assert result["reconstruction"] is not None
    for key in ("elbo", "kl", *ev.LIKELIHOOD_KEYS):
        assert result[key] is None


def test_every_kind_of_data_gives_the_same_report():
    """A tensor, an array read on demand, an (x, labels) pair, a Dataset and a DataLoader
    hold the same examples: the same report, from the same seeded draws."""
    from torch.utils.data import DataLoader, TensorDataset

    from vaekit.app.data.lazy import LazyArray, memmap_reader

    model = tiny_bernoulli_model()
    x = all_binary_images()
    lazy = LazyArray(memmap_reader(x.numpy()), len(x), (6,))
    reports = []
    for data in (x, lazy, (x, None), TensorDataset(x), DataLoader(TensorDataset(x), batch_size=7)):
        reports.append(ev.evaluate(model, data, importance_samples=50, batch_size=20))
    assert all(report == reports[0] for report in reports[1:])


def test_evaluate_draws_from_its_seed_and_leaves_the_global_generator_alone():
    model = tiny_bernoulli_model()
    x = all_binary_images()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = ev.evaluate(model, x, importance_samples=20, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is untouched
    torch.manual_seed(7)  # the global seed plays no part
    assert ev.evaluate(model, x, importance_samples=20, seed=5) == a
    assert ev.evaluate(model, x, importance_samples=20, seed=6)["log_likelihood"] != a["log_likelihood"]
