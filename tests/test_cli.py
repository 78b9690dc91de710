"""The command line end to end, in a temporary directory, as users run it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import run_cli


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "run.toml").write_text('hidden = [32]\nlatent_dim = 3\nepochs = 5\nbinarize = "dynamic"\n')
    done = run_cli("train", "--data", "digits", "--config", root / "run.toml", "--epochs", "2",
                   "--out", root / "run", "--quiet")
    assert done.returncode == 0, done.stderr
    return root


def test_train_resolves_file_then_flags(cli_run):
    stored = json.loads((cli_run / "run" / "config.json").read_text())
    assert stored["latent_dim"] == 3  # from the file
    assert stored["epochs"] == 2  # the flag wins over the file
    assert stored["hidden"] == [32]
    assert len((cli_run / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def test_evaluate_prints_one_json_object(cli_run):
    done = run_cli("evaluate", cli_run / "run", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for key in ("n", "elbo", "reconstruction", "kl"):
        assert key in result
    assert result["n"] == 180 and result["split"] == "validation"
    assert result["elbo"] == pytest.approx(result["reconstruction"] - result["kl"], abs=1e-6)
    done = run_cli("evaluate", cli_run / "run", "--split", "all", "--json")
    assert json.loads(done.stdout)["n"] == 1797
    text = run_cli("evaluate", cli_run / "run")
    assert text.returncode == 0 and "elbo" in text.stdout and "{" not in text.stdout


def test_evaluate_threads_option(cli_run):
    one = run_cli("evaluate", cli_run / "run", "--json", "--threads", "1", "--no-save")
    assert one.returncode == 0, one.stderr
    default = run_cli("evaluate", cli_run / "run", "--json", "--no-save")
    assert json.loads(one.stdout)["elbo"] == json.loads(default.stdout)["elbo"]  # same seed, same numbers
    bad = run_cli("evaluate", cli_run / "run", "--threads", "-1")
    assert bad.returncode != 0 and "--threads must be 0 (auto) or more" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_sample_encode_reconstruct_plot(cli_run):
    run, root = cli_run / "run", cli_run
    done = run_cli("sample", run, "-n", "9", "-o", root / "s.npy")
    assert done.returncode == 0, done.stderr
    samples = np.load(root / "s.npy")
    assert samples.shape == (9, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 1
    assert run_cli("sample", run, "-n", "16", "-o", root / "s.png").returncode == 0
    assert (root / "s.png").read_bytes()[:4] == b"\x89PNG"

    done = run_cli("encode", run, "--data", "digits", "-o", root / "z.csv")
    assert done.returncode == 0, done.stderr
    lines = (root / "z.csv").read_text().splitlines()
    assert lines[0] == "mu_1,mu_2,mu_3,logvar_1,logvar_2,logvar_3,label,row" and len(lines) == 1798
    assert run_cli("encode", run, "--data", "digits", "-o", root / "z.npy").returncode == 0
    assert np.load(root / "z.npy").shape == (1797, 3)
    assert np.load(root / "z.logvar.npy").shape == (1797, 3)

    assert run_cli("reconstruct", run, "-n", "5", "-o", root / "r.npy").returncode == 0
    assert np.load(root / "r.npy").shape == (5, 1, 8, 8)
    assert run_cli("reconstruct", run, "-n", "5", "-o", root / "r.png").returncode == 0

    (run / "latent.png").unlink()
    done = run_cli("plot", run)
    assert done.returncode == 0, done.stderr
    assert (run / "latent.png").stat().st_size > 10_000


def test_every_command_documents_its_options():
    for command in ("train", "evaluate", "sample", "reconstruct", "encode", "plot"):
        done = run_cli(command, "--help")
        assert done.returncode == 0
        assert "--help" in done.stdout
    assert "--latent-dim" in run_cli("train", "--help").stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--data", "missing.npy", "--out", "o"], "data file not found"),
        (["train", "--data", "digits", "--likelihood", "poisson", "--out", "o"], "likelihood must be one of"),
        (["train", "--data", "digits", "--lr", "-1", "--out", "o"], "lr must be positive"),
        (["train", "--data", "wrong.npy", "--out", "o"], "shaped"),
        (["train", "--data", "nan.npy", "--out", "o"], "NaN"),
        (["evaluate", "empty-run", "--json"], "no config.json"),
        (["evaluate", "no-weights", "--json"], "no model.safetensors"),
        (["evaluate", "nowhere", "--json"], "run directory not found"),
        (["sample", "nowhere", "-o", "x.gif"], "must end in"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, cli_run, args, message):
    np.save(tmp_path / "wrong.npy", np.zeros(7, dtype=np.float32))
    np.save(tmp_path / "nan.npy", np.array([[0.5, np.nan]], dtype=np.float32))
    (tmp_path / "empty-run").mkdir()
    (tmp_path / "no-weights").mkdir()
    for name in ("config.json", "run.json"):
        (tmp_path / "no-weights" / name).write_bytes((cli_run / "run" / name).read_bytes())
    done = run_cli(*args, cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_help_does_not_import_torch():
    import subprocess
    import sys

    from conftest import SRC

    code = "import sys; from vaekit.app.cli import main; main(['--help']); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert done.stdout.strip().endswith("False"), done.stdout


def test_the_default_split_reads_the_data_once(tiny_run, monkeypatch):
    import vaekit.app.data as data
    from vaekit.app.commands.common import model_and_data as _model_and_data

    calls = []
    real = data.load_data
    monkeypatch.setattr(data, "load_data", lambda *a, **k: calls.append(a) or real(*a, **k))
    _, _, dataset, split, _ = _model_and_data(tiny_run, None, None)
    assert split == "validation" and len(dataset) == 180  # digits has no test split
    assert len(calls) == 1
    _, _, explicit, _, _ = _model_and_data(tiny_run, None, "validation")
    assert torch.equal(explicit.x, dataset.x)  # the same draws as naming the split


def test_commands_run_in_the_test_process_leave_it_as_they_found_it(cli_run, tmp_path):
    """conftest.run_cli runs commands in this process: what a command may change for the whole
    process (cwd, threads, signal handlers, environment, generators) is as it was afterwards."""
    import os
    import signal

    def state():
        return (os.getcwd(), torch.get_num_threads(), signal.getsignal(signal.SIGINT),
                signal.getsignal(signal.SIGTERM), dict(os.environ), torch.get_rng_state())

    before = state()
    done = run_cli("evaluate", cli_run / "run", "--threads", "2", "--json", "--no-save", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    after = state()
    assert after[:5] == before[:5] and torch.equal(after[5], before[5])
