"""`vaekit evaluate` end to end on a trained run: the JSON keys, the table, the likelihood
curve, the gap decomposition, saving, bad options; and what training stores.
(The estimators themselves: test_evaluate.py, on the library alone.)"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import run_cli
from vaekit import evaluation as ev
from vaekit.app.cli import main
from vaekit.callbacks import FINAL_K

EXPECTED_KEYS = {
    "split", "n", "elbo", "reconstruction", "kl", "log_likelihood", "gap", "iwae_bound", "nll",
    "bits_per_dim", "bits_per_dim_note", "active_units", "active_units_per_dim",
    "mutual_information", "marginal_kl", "importance_samples", "iwae_k", "elbo_se",
    "reconstruction_se", "kl_se", "log_likelihood_se", "gap_se", "iwae_bound_se", "nll_se",
    "bits_per_dim_se", "mutual_information_se", "mutual_information_max", "marginal_kl_se", "seed",
    "weights", "epoch",  # which weights were scored, and the epoch they are from
}


def test_cli_evaluate_json_end_to_end(tiny_run, tmp_path):
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


def test_cli_evaluate_limit_scores_the_first_examples_and_saves_apart(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    every, scores = tmp_path / "every.csv", tmp_path / "scores.csv"
    assert main(["evaluate", str(run), "--importance-samples", "20", "--json", "-q", "--seed", "3",
                 "--per-example", str(every)]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(run), "--importance-samples", "20", "--json", "-q", "--seed", "3",
                 "--limit", "7", "--per-example", str(scores)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["n"] == 7 < whole["n"]
    rows = np.genfromtxt(scores, delimiter=",", names=True)["row"]
    assert list(rows) == list(np.genfromtxt(every, delimiter=",", names=True)["row"][:7])
    # The full split's stored result is untouched; the subset's is stored under its own name.
    assert json.loads((run / "evaluation-validation.json").read_text())["n"] == whole["n"]
    assert json.loads((run / "evaluation-validation-first7.json").read_text())["n"] == 7
    # A limit beyond the split's size scores (and stores) the whole split.
    assert main(["evaluate", str(run), "--importance-samples", "20", "--json", "-q", "--seed", "3",
                 "--limit", "100000"]) == 0
    assert json.loads(capsys.readouterr().out)["log_likelihood"] == whole["log_likelihood"]
    assert not list(run.glob("evaluation-validation-first1*"))


@pytest.mark.parametrize("args, message", [
    (["--importance-samples", "0"], "at least 1"),
    (["--limit", "0"], "--limit"),
    (["--importance-samples", "5", "--iwae-k", "10"], "between 1 and"),
    (["--per-example", "scores.txt"], ".csv or .npy"),
    (["--mi-examples", "-1"], "--mi-examples must be 0"),
])
def test_cli_evaluate_bad_options(tiny_run, args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(tiny_run), "--no-save", *args]) == 2
    assert message in capsys.readouterr().err


def test_training_stores_the_full_evaluation(tiny_run):
    stored = json.loads((tiny_run / "evaluation.json").read_text())
    assert stored["importance_samples"] == FINAL_K
    assert stored["elbo"] <= stored["log_likelihood"] + 3 * stored["gap_se"]
    assert stored["active_units"] is not None


def test_data_read_on_demand_gives_the_same_report_as_a_tensor(tiny_run):
    """The app's arrays read from files on demand (LazyArray) are data the library takes."""
    from vaekit.app.data.lazy import LazyArray, memmap_reader
    from vaekit.app.runs import load

    model = load(tiny_run)
    x = torch.bernoulli(torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    lazy = LazyArray(memmap_reader(x.numpy()), len(x), (1, 8, 8))
    assert ev.evaluate(model, lazy, importance_samples=20, batch_size=16) == \
        ev.evaluate(model, x, importance_samples=20, batch_size=16)


def test_cli_evaluate_mi_examples_zero_skips_the_mutual_information_only(tiny_run, capsys):
    base = ["evaluate", str(tiny_run), "--importance-samples", "20", "--json", "-q", "--no-save"]
    assert main(base) == 0
    full = json.loads(capsys.readouterr().out)
    assert main([*base, "--mi-examples", "0"]) == 0
    skipped = json.loads(capsys.readouterr().out)
    assert full["mutual_information"] is not None and full["marginal_kl"] is not None
    assert skipped["mutual_information"] is None and skipped["marginal_kl"] is None
    assert skipped["mutual_information_se"] is None
    same = ("elbo", "log_likelihood", "gap", "active_units")
    assert {k: skipped[k] for k in same} == {k: full[k] for k in same}
