"""Commands as a new user meets them (issue 24, round three) and per-step sizes that cannot fit
in memory (issue 25 item 5): each test fails on the behaviour the issue reported."""

from __future__ import annotations

import pytest

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
