"""The variants from the command line: training options, `sample --label/--sampler`,
and one clear error line for the combinations that cannot work."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli
from vaekit.rundir import FIGURES


@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "cvae"
    done = run_cli("train", "--data", "digits", "--binarize", "dynamic", "--model", "cvae",
                   "--architecture", "conv", "--channels", "8,16", "--latent-dim", "3",
                   "--epochs", "2", "--kl-warmup", "1", "--free-bits", "0.1", "--quiet", "--out", out)
    assert done.returncode == 0, done.stderr
    return out


def test_cvae_run_records_its_settings_and_draws_every_figure(cvae_run):
    config = json.loads((cvae_run / "config.json").read_text())
    assert (config["model"], config["architecture"], config["channels"]) == ("cvae", "conv", [8, 16])
    assert config["classes"] == 10  # read from the digits labels
    assert (config["kl_warmup"], config["free_bits"]) == (1, 0.1)
    for name in FIGURES:
        assert (cvae_run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_evaluate_passes_the_labels_to_a_conditional_model(cvae_run, capsys):
    from vaekit.app.cli import main

    assert main(["evaluate", str(cvae_run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "validation" and result["elbo"] < 0


def test_sample_a_label_and_from_the_gmm(cvae_run, tmp_path):
    done = run_cli("sample", cvae_run, "--label", "3", "-n", "5", "-o", tmp_path / "three.npy")
    assert done.returncode == 0, done.stderr
    assert np.load(tmp_path / "three.npy").shape == (5, 1, 8, 8)
    from vaekit.app.cli import main

    assert main(["sample", str(cvae_run), "--sampler", "gmm", "--components", "3", "--label", "7",
                 "-n", "6", "-o", str(tmp_path / "gmm.png")]) == 0
    assert (tmp_path / "gmm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["--label", "10"], "error: --label must be in 0..9"),
    (["--sampler", "flow"], "error: --sampler must be 'prior' or 'gmm'"),
    (["--sampler", "gmm", "--components", "0"], "error: --components must be at least 1"),
])
def test_sample_refuses_bad_options(cvae_run, tmp_path, capsys, args, message):
    from vaekit.app.cli import main

    assert main(["sample", str(cvae_run), "-o", str(tmp_path / "x.png"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_label_needs_a_conditional_model(tiny_run, tmp_path, capsys):
    from vaekit.app.cli import main

    assert main(["sample", str(tiny_run), "--label", "1", "-o", str(tmp_path / "x.png")]) == 2
    assert "error: --label needs a conditional model" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--model", "hvae", "--kl", "analytic"], "--kl mc"),
    (["--architecture", "conv", "--channels", "8,8,8,8"], "divisible by 16"),
    (["--likelihood", "logistic"], "--levels"),
    (["--objective", "iwae", "--free-bits", "1"], "free_bits applies to the elbo objective"),
    (["--channels", "8,x"], "channels must be layer sizes"),
])
def test_impossible_variants_get_one_clear_error(tmp_path, capsys, args, message):
    from vaekit.app.cli import main

    out = str(tmp_path / "r")
    code = main(["train", "--data", "digits", "--epochs", "1", "--quiet", "--out", out, *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "r" / "config.json").exists()


def test_two_layer_iwae_run_with_a_discrete_likelihood(tmp_path):
    from vaekit.app.cli import main

    out = tmp_path / "hvae"
    code = main(["train", "--data", "digits", "--model", "hvae", "--kl", "mc", "--objective", "iwae",
                 "--k", "3", "--likelihood", "logistic", "--levels", "17", "--latent-dim", "4",
                 "--latent-dim2", "2", "--hidden2", "8", "--hidden", "16", "--epochs", "1",
                 "--no-figures", "--quiet", "--out", str(out)])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["objective"], config["k"], config["latent_dim2"], config["hidden2"]) == ("iwae", 3, 2, [8])
    evaluation = json.loads((out / "evaluation.json").read_text())
    # bits/dim of the discretised logistic: −ELBO / (D ln 2), D = 64
    # bits of a probability: the importance-sampled NLL per dimension, in base 2
    assert evaluation["bits_per_dim"] == pytest.approx(evaluation["nll"] / (64 * np.log(2)))
    assert evaluation["bits_per_dim"] <= -evaluation["elbo"] / (64 * np.log(2)) + 0.05
