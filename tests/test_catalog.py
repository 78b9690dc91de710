"""`vaekit runs`: the table of runs under a folder, and the status rule read from their files."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from vaekit import rundir
from vaekit.app import catalog

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def copy_run(name: str, dest: Path, age: float = 3600.0) -> Path:
    """A copy of a fixture run whose files were all last written ``age`` seconds ago."""
    shutil.copytree(FIXTURES / name, dest)
    stamp = time.time() - age
    for path in dest.iterdir():
        os.utime(path, (stamp, stamp))
    return dest


def set_epochs(run_dir: Path, epochs: int) -> None:
    config = json.loads((run_dir / rundir.CONFIG).read_text())
    config["epochs"] = epochs
    (run_dir / rundir.CONFIG).write_text(json.dumps(config))


def touch(path: Path, age: float) -> None:
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))


def write_checkpoint(path: Path, in_epoch: dict | None) -> None:
    rundir.atomic_write(path, rundir.encode_tensors({"w": torch.zeros(1)}, {"epoch": 1, "in_epoch": in_epoch}))


def status(run_dir: Path) -> str:
    return catalog.summarise_run(run_dir)["status"]


def test_a_complete_run_is_finished(tmp_path):
    run = copy_run("vae-v0.1", tmp_path / "a")
    assert status(run) == "finished"
    (run / rundir.EVALUATION).unlink()  # all epochs, but no final evaluation yet
    assert status(run) == "killed"


def test_recent_writes_mean_running(tmp_path):
    run = copy_run("vae-v0.1", tmp_path / "a")
    set_epochs(run, 10)
    touch(run / rundir.CONFIG, 3600)
    assert status(run) == "killed"
    touch(run / rundir.METRICS, 5)  # an epoch just ended
    assert status(run) == "running"


def test_running_allows_for_the_longest_epoch(tmp_path):
    run = copy_run("vae-v0.1", tmp_path / "a")
    set_epochs(run, 10)
    rows = rundir.read_metrics(run)
    rows[-1]["seconds"] = 300.0  # a slow epoch: silence up to 2 × 300 s + 60 s is expected
    rundir.write_metrics(run, rows)
    touch(run / rundir.CONFIG, 3600)
    touch(run / rundir.METRICS, 500)
    assert status(run) == "running"
    touch(run / rundir.METRICS, 700)
    assert status(run) == "killed"


def test_a_mid_epoch_checkpoint_written_last_means_stopped(tmp_path):
    run = copy_run("vae-v0.1", tmp_path / "a")
    set_epochs(run, 10)
    touch(run / rundir.CONFIG, 3600)
    write_checkpoint(run / rundir.CHECKPOINT, {"step": 3})
    touch(run / rundir.CHECKPOINT, 1800)
    assert status(run) == "stopped"
    touch(run / rundir.METRICS, 1000)  # progress after that checkpoint was lost: not a clean stop
    assert status(run) == "killed"


def test_an_end_of_epoch_checkpoint_means_killed(tmp_path):
    run = copy_run("vae-v0.1", tmp_path / "a")
    set_epochs(run, 10)
    touch(run / rundir.CONFIG, 3600)
    write_checkpoint(run / rundir.CHECKPOINT, None)
    touch(run / rundir.CHECKPOINT, 1800)
    assert status(run) == "killed"
    (run / rundir.CHECKPOINT).write_bytes(b"not safetensors")
    touch(run / rundir.CHECKPOINT, 1800)
    assert status(run) == "killed"


def test_the_table_of_a_folder(tmp_path):
    copy_run("vae-v0.1", tmp_path / "runs" / "a")
    copy_run("cvae-v0.1", tmp_path / "runs" / "group" / "b")
    (tmp_path / "runs" / "not-a-run").mkdir()
    evaluation = {"split": "test", "n": 10, "log_likelihood": -80.5, "log_likelihood_se": 0.25,
                  "importance_samples": 1000}
    (tmp_path / "runs" / "a" / "evaluation-test.json").write_text(json.dumps(evaluation))
    rows = catalog.runs_table(tmp_path / "runs")
    assert [r["name"] for r in rows] == ["a", "group/b"]
    a, b = rows
    assert a["data"] == "digits" and a["model"] == "vae mlp 16 d=2 bernoulli"
    assert (a["epochs_done"], a["epochs_planned"], a["status"]) == (2, 2, "finished")
    metrics = rundir.read_metrics(tmp_path / "runs" / "a")
    assert a["best_validation_elbo"] == max(m["validation_elbo"] for m in metrics)
    assert a["wall_seconds"] == pytest.approx(sum(m["seconds"] for m in metrics))
    assert (a["test_log_likelihood"], a["test_log_likelihood_se"]) == (-80.5, 0.25)
    assert b["model"].startswith("cvae") and b["test_log_likelihood"] is None  # digits has no test split
    text = catalog.format_runs(rows)
    assert "group/b" in text and "-80.50 ± 0.25" in text and "finished" in text


def test_an_unreadable_run_is_listed_with_its_problem(tmp_path):
    run = copy_run("vae-v0.1", tmp_path / "a")
    (run / rundir.CONFIG).write_text("{not json")
    row, = catalog.runs_table(tmp_path)
    assert row["status"] == "unreadable"
    assert "not valid JSON" in row["problem"]
    assert "a: " in catalog.format_runs([row])


def test_cli_runs_table_and_json(tmp_path):
    copy_run("vae-v0.1", tmp_path / "runs" / "a")
    done = run_cli("runs", tmp_path / "runs")
    assert done.returncode == 0, done.stderr
    assert "finished" in done.stdout and "2/2" in done.stdout
    done = run_cli("runs", tmp_path / "runs", "--json")
    rows = json.loads(done.stdout)
    assert rows[0]["name"] == "a" and rows[0]["status"] == "finished"
    done = run_cli("runs", tmp_path / "missing")
    assert done.returncode == 2 and "folder not found" in done.stderr
    assert "Traceback" not in done.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no runs under" in run_cli("runs", empty).stdout


def test_a_run_trained_from_python_is_listed_with_its_plan(tmp_path):
    import torch

    import vaekit

    x = (torch.rand(60, 6, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    model = vaekit.VAE(torch.nn.Linear(6, 4), torch.nn.Linear(2, 6), "bernoulli", latent_dim=2)
    vaekit.fit(model, x[:50], validation=x[50:], epochs=2, batch_size=10, device="cpu", out=tmp_path / "py")
    [row] = catalog.runs_table(tmp_path)
    assert row["name"] == "py" and row["problem"] is None
    assert (row["epochs_done"], row["epochs_planned"], row["status"]) == (2, 2, "finished")
    assert row["model"] == "VAE (from Python)"
    assert row["best_validation_elbo"] is not None


def damage_metrics(run: Path, kind: str) -> None:
    rows = rundir.read_metrics(run)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if kind == "overflowing-int":
        text = text.replace('"validation_elbo": ', '"validation_elbo": 1' + "0" * 400 + ', "was": ', 1)
    elif kind == "5000-digit-int":
        text = text.replace('"epoch": 1', '"epoch": 1, "x": ' + "9" * 5000, 1)
    elif kind == "huge-seconds":
        text = "".join(json.dumps({**r, "seconds": 1e308}) + "\n" for r in rows)
    elif kind == "epoch-as-text":
        text = text.replace('"epoch": 1', '"epoch": "1"', 1)
    (run / rundir.METRICS).write_text(text)


@pytest.mark.parametrize(("kind", "reason"), [
    ("overflowing-int", "line 1 holds a 401-digit integer"),
    ("5000-digit-int", "line 1 holds a 5,000-digit integer"),
    ("huge-seconds", "line 1 has seconds 1e+308, not a duration"),
    ("epoch-as-text", "line 1 has epoch '1'"),
])
def test_a_damaged_run_is_unreadable_and_the_others_are_listed(tmp_path, kind, reason):
    copy_run("vae-v0.1", tmp_path / "good")
    damage_metrics(copy_run("vae-v0.1", tmp_path / "bad"), kind)
    bad, good = catalog.runs_table(tmp_path)
    assert (bad["name"], bad["status"]) == ("bad", "unreadable") and reason in bad["problem"]
    assert (good["status"], good["problem"]) == ("finished", None) and good["best_validation_elbo"] is not None
    text = catalog.format_runs([bad, good])
    assert "bad: " in text and reason in text and "finished" in text
    done = run_cli("runs", tmp_path)
    assert done.returncode == 0 and reason in done.stdout and "Traceback" not in done.stderr


@pytest.mark.parametrize("damage", [{"curve": "abc"}, {"curve": [{"k": "x"}]}, {"split": ["a"]},
                                    {"log_likelihood": "high"}, {"n": -1}, {"importance_samples": True}])
def test_a_damaged_stored_evaluation_is_skipped_and_named(tmp_path, damage):
    run = copy_run("vae-v0.1", tmp_path / "a")
    evaluation = {"split": "test", "n": 10, "log_likelihood": -80.5, "importance_samples": 1000, **damage}
    (run / "evaluation-test.json").write_text(json.dumps(evaluation))
    [row] = catalog.runs_table(tmp_path)
    assert row["status"] == "finished" and row["test_log_likelihood"] is None
    assert "evaluation-test.json skipped" in row["problem"] and next(iter(damage)) in row["problem"]


def test_a_python_runs_record_is_checked(tmp_path):
    import vaekit

    x = (torch.rand(40, 6, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    model = vaekit.VAE(torch.nn.Linear(6, 4), torch.nn.Linear(2, 6), "bernoulli", latent_dim=2)
    vaekit.fit(model, x, epochs=1, batch_size=10, device="cpu", out=tmp_path / "py")
    info = json.loads((tmp_path / "py" / rundir.INFO).read_text())
    (tmp_path / "py" / rundir.INFO).write_text(json.dumps({**info, "checkpoint_minutes": "often"}))
    [row] = catalog.runs_table(tmp_path)
    assert row["status"] == "unreadable" and "checkpoint_minutes is 'often'" in row["problem"]


def test_durations_that_are_not_finite_show_a_dash():
    assert catalog.format_duration(float("inf")) == "—" and catalog.format_duration(float("nan")) == "—"
    assert catalog.format_duration(3725.0) == "1:02:05"


def test_wall_time_is_the_sessions_where_recorded_else_the_epochs_named_so(tmp_path):
    old = copy_run("vae-v0.1", tmp_path / "old")
    new = copy_run("vae-v0.1", tmp_path / "new")
    info = json.loads((new / rundir.INFO).read_text())
    (new / rundir.INFO).write_text(json.dumps({**info, "sessions_seconds": [11.0, 4.5]}))  # a resume: two sessions
    new_row, old_row = catalog.runs_table(tmp_path)
    epochs = sum(m["seconds"] for m in rundir.read_metrics(old))
    assert (new_row["wall_seconds"], new_row["wall_time_source"]) == (15.5, "sessions")
    assert new_row["epochs_seconds"] == pytest.approx(epochs)
    assert (old_row["wall_time_source"], old_row["sessions_seconds"]) == ("epochs", None)
    assert old_row["wall_seconds"] == pytest.approx(epochs)
    lines = catalog.format_runs([new_row, old_row]).splitlines()
    assert next(x for x in lines if x.startswith(" new")).endswith("15.5 s")
    assert next(x for x in lines if x.startswith(" old")).endswith("s (epochs)")
    assert any(x.startswith("wall time (epochs): the epochs' seconds summed") for x in lines)
    # a damaged record of the sessions falls back to the epochs' sum
    (new / rundir.INFO).write_text(json.dumps({**info, "sessions_seconds": "11"}))
    assert catalog.summarise_run(new)["wall_time_source"] == "epochs"


def test_a_run_that_validated_on_the_test_set_shows_its_test_log_likelihood(tmp_path):
    """validation_split = "test": training's evaluation.json scored the test set (as "validation")."""
    run = copy_run("vae-v0.1", tmp_path / "runs" / "a")
    config = json.loads((run / rundir.CONFIG).read_text())
    (run / rundir.CONFIG).write_text(json.dumps({**config, "validation_split": "test"}))
    evaluation = json.loads((run / rundir.EVALUATION).read_text())
    assert evaluation["split"] == "validation"
    [row] = catalog.runs_table(tmp_path / "runs")
    assert row["test_log_likelihood"] == evaluation["log_likelihood"]
    assert f"{evaluation['log_likelihood']:.2f}" in catalog.format_runs([row])
    # a run that validated on a fraction of the training set has no test number in it
    (run / rundir.CONFIG).write_text(json.dumps(config))
    assert catalog.runs_table(tmp_path / "runs")[0]["test_log_likelihood"] is None


def test_a_fit_run_shows_its_sessions_time(tmp_path):
    # issue 24 item 4: fit records the sessions' real time, which `vaekit runs` shows
    from conftest import make_vae
    from vaekit.training import fit

    x = torch.rand(64, 6, generator=torch.Generator().manual_seed(0))
    fit(make_vae((6,), [8], 2), x, epochs=2, batch_size=32, device="cpu", out=tmp_path / "run")
    row = catalog.summarise_run(tmp_path / "run")
    assert row["wall_time_source"] == "sessions" and row["status"] == "finished"
    assert row["wall_seconds"] == row["sessions_seconds"] >= row["epochs_seconds"]


def test_the_model_column_names_a_learned_prior_and_a_richer_posterior():
    from vaekit.app.catalog import describe_model
    from vaekit.app.config import Config

    plain = Config(data="digits", hidden=[16], latent_dim=2, likelihood="bernoulli").validate()
    assert describe_model(plain) == "vae mlp 16 d=2 bernoulli"
    closed = Config(data="digits", hidden=[16], latent_dim=2, likelihood="bernoulli", prior="vamp", prior_components=50,
                    posterior="iaf", flow_steps=3).validate()
    assert describe_model(closed) == "vae mlp 16 d=2 bernoulli vamp prior K=50 iaf q 3 steps"
    full = Config(data="digits", hidden=[16], latent_dim=2, likelihood="bernoulli", posterior="full").validate()
    assert describe_model(full).endswith("bernoulli full q")
