"""Commands as a new user meets them (issue 24, round three) and per-step sizes that cannot fit
in memory (issue 25 item 5): each test fails on the behaviour the issue reported."""

from __future__ import annotations

import json

import pytest
import torch

from data.helpers import cli
from vaekit.errors import VaekitError


# ---------------------------------------------------------------------- 24.8 plot -o NEWDIR
def test_plot_creates_its_output_folder(tiny_run, tmp_path, capsys):
    folder = tmp_path / "new" / "figures"
    status, out, err = cli(capsys, "plot", tiny_run, "-o", folder, "--threads", "1")
    assert status == 0, err
    assert (folder / "latent.png").is_file() and f"wrote {folder / 'latent.png'}" in out


def test_plot_refuses_a_file_as_its_output_folder(tiny_run, tmp_path, capsys):
    target = tmp_path / "figures"
    target.write_text("mine")
    status, _, err = cli(capsys, "plot", tiny_run, "-o", target)
    assert status == 2 and err.strip() == f"error: --output {target} is a file, not a folder"
    assert target.read_text() == "mine"


# ---------------------------------------------------------------------- 25.5 per-step sizes
@pytest.mark.parametrize(("settings", "message"), [
    (["--samples", "100000000"], "error: samples = 100,000,000: one training step would hold at least"),
    (["--objective", "iwae", "--k", "1000000000"], "error: k = 1,000,000,000: one training step would hold"),
])
def test_a_step_that_cannot_fit_in_memory_is_refused_before_the_run_starts(tmp_path, capsys, settings, message):
    status, _, err = cli(capsys, "train", "--data", "digits", "--hidden", "16", "--epochs", "1", "--no-figures",
                         "-q", "--out", tmp_path / "run", *settings)
    assert status == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert "GB of memory; lower" in err
    assert not (tmp_path / "run").exists()  # no 0-epoch run left behind


def test_the_step_estimate_is_a_lower_bound_that_lets_real_steps_through(monkeypatch):
    from vaekit.app import factories
    from vaekit.app.config import Config

    config = Config(data="digits", hidden=[400], latent_dim=20, batch_size=128, samples=10)
    # z and the decoder's output and hidden layer, per example and draw, in float32
    assert factories.step_memory(config, (1, 28, 28)) == 4 * 128 * 10 * (20 + 784 + 400)
    assert factories.step_memory(config, (1, 28, 28), examples=50) == 4 * 50 * 10 * (20 + 784 + 400)
    factories.check_step_size(config, (1, 28, 28))  # 62 MB: fine
    # 4 MB: the weights (2.6 MB) fit, ten draws per example of a batch of 128 (6.2 MB) do not
    monkeypatch.setattr(factories, "_physical_memory", lambda: 4 * 10**6)
    with pytest.raises(VaekitError, match=r"^samples = 10: .* than this machine's 0.0 GB of memory; lower samples$"):
        factories.check_step_size(config, (1, 28, 28))
    one = Config(data="digits", hidden=[400], latent_dim=20, batch_size=10_000)
    with pytest.raises(VaekitError, match="^batch_size = 10,000: .*lower batch_size$"):
        factories.check_step_size(one, (1, 28, 28))
    factories.check_step_size(one, (1, 28, 28), examples=500)  # a batch is no larger than the training set
    # a huge layer is named as the model's size, the clearer of the two
    wide = Config(data="digits", hidden=[4_000_000], latent_dim=20, batch_size=128)
    with pytest.raises(VaekitError, match="^the model's parameters alone take"):
        factories.check_step_size(wide, (1, 28, 28))


def test_an_evaluation_whose_weights_cannot_fit_is_refused(tiny_run, capsys):
    status, _, err = cli(capsys, "evaluate", tiny_run, "--importance-samples", "100000000000", "--no-save")
    assert status == 2
    assert err.startswith("error: --importance-samples 100,000,000,000: the evaluation would hold 1,600.0 GB")
    assert err.count("\n") == 1 and "lower --importance-samples" in err


# ---------------------------------------------------------------------- 24.11 names that mean two things
def help_of(capsys, *command) -> str:
    """The help text, its lines joined by single spaces (phrases are wrapped apart at any width)."""
    status, out, err = cli(capsys, *command, "--help")
    assert status == 0, err
    return " ".join(out.split())


def test_importance_samples_and_training_samples_say_what_they_are(capsys):
    evaluate = help_of(capsys, "evaluate")
    assert "not train's --samples" in evaluate
    assert "--samples" not in evaluate.replace("--importance-samples", "").replace("train's --samples", "")
    train = help_of(capsys, "train")
    assert "Monte-Carlo draws M of z per example in each training step's ELBO estimate" in train
    assert "(not the importance samples K of 'vaekit evaluate')" in train


def test_the_old_evaluate_samples_flag_still_works(tiny_run, capsys):
    status, out, err = cli(capsys, "evaluate", tiny_run, "--samples", "3", "--json", "--no-save", "-q")
    assert status == 0, err
    assert json.loads(out)["importance_samples"] == 3


@pytest.mark.parametrize("command", ["evaluate", "sample", "plot", "explore", "report", "data fetch"])
def test_usage_lines_name_arguments_in_capitals_without_braces(capsys, command):
    usage = help_of(capsys, *command.split()).split(" [OPTIONS] ")[1].split()[0]
    assert usage in ("RUN", "RUN...", "NAME"), usage  # not {run_dir}


def test_defaults_show_once_and_without_parentheses(capsys):
    train = help_of(capsys, "train")
    assert "[default: digits]" in train and "(digits)]" not in train
    betas = train.split("--adam-betas")[1].split("--adam-eps")[0]
    assert betas.count("0.9,0.999") == 1, betas
    eps = train.split("--adam-eps")[1].split("--weight-decay")[0]
    assert eps.count("1e-08") + eps.count("1e-8") == 1, eps


def tiny_model(d: int):
    from vaekit.app.config import Config
    from vaekit.app.factories import build_model

    return build_model(Config(data="digits", hidden=[8], latent_dim=d), (1, 8, 8)).eval()


def captured_titles(monkeypatch) -> list[str]:
    from vaekit import plots

    titles: list[str] = []

    def save(fig, path):
        titles.extend([fig.get_suptitle(), *(ax.get_title() for ax in fig.axes)])
        return path

    monkeypatch.setattr(plots, "_save", save)
    return titles


@pytest.mark.parametrize(("d", "rest"), [(3, "(z₃ = 0)"), (20, "(z₃…z₂₀ = 0)")])
def test_the_manifold_title_writes_every_index_as_a_subscript(monkeypatch, tmp_path, d, rest):
    from vaekit import plots

    titles = captured_titles(monkeypatch)
    model = tiny_model(d)
    plots.manifold_figure(model, tmp_path / "m.png", n=3)
    assert any(rest in t for t in titles) and not any("z_" in t for t in titles), titles


def test_the_latent_figure_says_when_it_shows_a_subset_of_the_training_set(monkeypatch, tmp_path):
    from vaekit import plots

    titles = captured_titles(monkeypatch)
    model = tiny_model(2)
    x = torch.rand(30, 1, 8, 8)
    plots.latent_figure(model, x, None, tmp_path / "a.png", total=54_000)
    plots.latent_figure(model, x, None, tmp_path / "b.png")
    assert any(t.endswith("\n30 of the 54,000 training examples") for t in titles), titles
    assert any(t.endswith("\n30 training examples") for t in titles), titles


def test_grey_levels_under_a_bernoulli_likelihood_print_no_log_likelihood(tmp_path, capsys):
    status, out, err = cli(capsys, "train", "--data", "digits", "--binarize", "none", "--likelihood", "bernoulli",
                           "--hidden", "16", "--epochs", "1", "--no-figures", "--threads", "1", "--out", tmp_path / "r")
    assert status == 0, err
    assert "the ELBO is then not a bound on a log-likelihood" in err
    line = next(line for line in out.splitlines() if line.startswith("validation:"))
    assert line.startswith("validation: importance-sampled estimate (not a log-likelihood: the bernoulli "
                           "likelihood of non-binary data) -"), line
    status, out, err = cli(capsys, "train", "--data", "digits", "--binarize", "dynamic", "--hidden", "16",
                           "--epochs", "1", "--no-figures", "--threads", "1", "--out", tmp_path / "b")
    assert status == 0, err
    assert "validation: log-likelihood -" in out
