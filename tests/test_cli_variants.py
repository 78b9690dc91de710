"""The variants from the command line: training options, `sample --label/--sampler`,
and one clear error line for the combinations that cannot work."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli
from vaekit.plots import FIGURES


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
    done = run_cli("evaluate", cvae_run, "--json")
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)) >= {"elbo", "reconstruction", "kl"}


def test_sample_a_label_and_from_the_gmm(cvae_run, tmp_path):
    done = run_cli("sample", cvae_run, "--label", "3", "-n", "5", "-o", tmp_path / "three.npy")
    assert done.returncode == 0, done.stderr
    assert np.load(tmp_path / "three.npy").shape == (5, 1, 8, 8)
    done = run_cli("sample", cvae_run, "--sampler", "gmm", "--components", "3", "--label", "7",
                   "-n", "6", "-o", tmp_path / "gmm.png")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "gmm.png").stat().st_size > 0
    done = run_cli("sample", cvae_run, "--label", "10", "-o", tmp_path / "x.png")
    assert done.returncode == 2 and "error: --label must be in 0..9" in done.stderr
    done = run_cli("sample", cvae_run, "--sampler", "flow", "-o", tmp_path / "x.png")
    assert done.returncode == 2 and "--sampler must be 'prior' or 'gmm'" in done.stderr


def test_label_needs_a_conditional_model(tiny_run, tmp_path):
    done = run_cli("sample", tiny_run, "--label", "1", "-o", tmp_path / "x.png")
    assert done.returncode == 2
    assert "error: --label needs a conditional model" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("args, message", [
    (["--model", "hvae"], "--kl mc"),
    (["--architecture", "conv", "--channels", "8,8,8,8"], "divisible by 16"),
    (["--likelihood", "logistic"], "--levels"),
    (["--objective", "iwae", "--free-bits", "1"], "free_bits applies to the elbo objective"),
    (["--channels", "8,x"], "channels must be layer sizes"),
])
def test_impossible_variants_get_one_clear_error(tmp_path, capsys, args, message):
    from vaekit.cli import main

    out = str(tmp_path / "r")
    code = main(["train", "--data", "digits", "--epochs", "1", "--quiet", "--out", out, *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "r" / "config.json").exists()


def test_two_layer_iwae_run_with_a_discrete_likelihood(tmp_path):
    from vaekit.cli import main

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
    assert evaluation["bits_per_dim"] == pytest.approx(-evaluation["elbo"] / (64 * np.log(2)))
