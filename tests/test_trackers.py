"""Experiment trackers through the training loop's callbacks: what TensorBoard and MLflow
hold after `vaekit train --log ...` is what metrics.jsonl holds."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

import vaekit
from conftest import run_cli

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tracked") / "run"
    done = run_cli("train", "--data", "digits", "--binarize", "dynamic", "--hidden", "16", "--epochs", "3",
                   "--log", "tensorboard,mlflow", "--out", out, "-q", "--seed", "4")
    assert done.returncode == 0, done.stderr
    return out


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_holds_every_epochs_metrics_the_config_and_the_figures(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked_run / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    for key in ("train_elbo", "validation_elbo", "train_kl"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert logged == [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in _metrics(tracked_run)]
    stored = json.loads((tracked_run / "evaluation.json").read_text())
    assert events.Scalars("evaluation/log_likelihood")[0].value == pytest.approx(stored["log_likelihood"], rel=1e-6)
    assert {"figures/latent", "figures/manifold", "figures/curves"} <= set(tags["images"])
    assert any("config" in tag for tag in tags["tensors"])


def test_mlflow_file_store_holds_params_metrics_and_figures(tracked_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tracked_run / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("vaekit")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.data.params["latent_dim"] == "2" and run.data.params["log"] == "tensorboard,mlflow"
    history = client.get_metric_history(run.info.run_id, "validation_elbo")
    assert [(m.step, m.value) for m in history] == [
        (r["epoch"], pytest.approx(r["validation_elbo"], rel=1e-6)) for r in _metrics(tracked_run)]
    assert run.info.status == "FINISHED"
    figures = {f.path for f in client.list_artifacts(run.info.run_id, "figures")}
    assert "figures/manifold.png" in figures and "figures/latent.png" in figures


def test_fit_logs_its_own_arguments_to_mlflow(tmp_path):
    from mlflow.tracking import MlflowClient

    from vaekit.trackers import MLflow

    x = vaekit.load_data("digits").train.x[:100]
    model = vaekit.VAE(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4)),
                       torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Unflatten(1, (1, 8, 8))))
    vaekit.fit(model, x, epochs=1, batch_size=50, seed=7, device="cpu", out=tmp_path / "run", callbacks=[MLflow()])
    client = MlflowClient(tracking_uri=(tmp_path / "run" / "mlruns").resolve().as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("vaekit").experiment_id])
    assert run.data.params["seed"] == "7" and run.data.params["batch_size"] == "50"
    assert run.data.params["optimizer"].startswith("Adam(")


def test_a_resumed_run_continues_its_mlflow_run(tmp_path):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "r"
    args = ("--data", "digits", "--hidden", "8", "--log", "mlflow", "-q", "--no-figures")
    assert run_cli("train", *args, "--epochs", "1", "--out", out).returncode == 0
    done = run_cli("train", "--resume", out, "--epochs", "2", "-q", "--no-figures")
    assert done.returncode == 0, done.stderr
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("vaekit").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_elbo")] == [1, 2]


def test_a_missing_tracker_package_is_one_clear_error_before_anything_is_written(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    config = vaekit.Config(data="digits", hidden=[8], epochs=1, log="tensorboard")
    with pytest.raises(vaekit.VaekitError, match=r"pip install 'vaekit\[tensorboard\]'"):
        vaekit.train(config, tmp_path / "r", quiet=True)
    assert not (tmp_path / "r").exists()


def test_an_unknown_tracker_is_refused_by_name(tmp_path):
    done = run_cli("train", "--data", "digits", "--log", "wandb", "--out", tmp_path / "r")
    assert done.returncode == 2 and "log must be one of tensorboard, mlflow; got 'wandb'" in done.stderr


def _mlflow_runs(uri, view="active"):
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("vaekit").experiment_id
    kind = ViewType.ACTIVE_ONLY if view == "active" else ViewType.DELETED_ONLY
    return client, client.search_runs([experiment], run_view_type=kind)


def test_overwrite_replaces_the_tracker_logs(tmp_path, monkeypatch):
    """Issue 25 item 2: 2 epochs at lr 1e-3, then --overwrite with 3 at 1e-2. MLflow used to show
    lr 0.001, epochs 2 and train_elbo steps [1, 2, 1, 2, 3]; TensorBoard two event files."""
    out = tmp_path / "run"
    args = ("--data", "digits", "--hidden", "8", "--log", "tensorboard,mlflow", "-q", "--no-figures", "--out", out)
    assert run_cli("train", *args, "--epochs", "2", "--lr", "1e-3").returncode == 0
    (out / "notes.txt").write_text("mine")  # the user's file stays
    done = run_cli("train", *args, "--epochs", "3", "--lr", "1e-2", "--overwrite")
    assert done.returncode == 0, done.stderr
    client, [run] = _mlflow_runs((out / "mlruns").resolve().as_uri())
    assert run.data.params["lr"] == "0.01" and run.data.params["epochs"] == "3"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_elbo")] == [1, 2, 3]
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert (out / "notes.txt").read_text() == "mine"
    # a store outside the run (MLFLOW_TRACKING_URI): the replaced MLflow run is deleted (soft)
    store = (tmp_path / "store").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert run_cli("train", *args, "--epochs", "1", "--overwrite").returncode == 0
    first = _mlflow_runs(store)[1][0].info.run_id
    assert run_cli("train", *args, "--epochs", "2", "--overwrite").returncode == 0
    client, [run] = _mlflow_runs(store)
    assert run.info.run_id != first and [r.info.run_id for r in _mlflow_runs(store, "deleted")[1]] == [first]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_elbo")] == [1, 2]


def test_an_apostrophe_in_the_run_path_is_no_problem_for_mlflow(tmp_path):
    """Issue 25 item 3: the path went unquoted into an MLflow filter string (an MlflowException
    traceback and a 0-epoch stub)."""
    out = tmp_path / "bob's \"best\" run_%"
    args = ("--data", "digits", "--hidden", "8", "--log", "mlflow", "-q", "--no-figures")
    done = run_cli("train", *args, "--epochs", "1", "--out", out)
    assert done.returncode == 0, done.stderr
    done = run_cli("train", "--resume", out, "--epochs", "2", "-q", "--no-figures")
    assert done.returncode == 0, done.stderr
    client, [run] = _mlflow_runs((out / "mlruns").resolve().as_uri())
    assert run.data.tags["vaekit.run_dir"] == str(out.resolve())
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_elbo")] == [1, 2]


def test_mlflow_outside_the_supported_range_is_one_clear_error(tmp_path, monkeypatch):
    """Issue 25 item 9: MLflow 3 (outside the extra's < 3 pin) died with an MlflowException."""
    import re
    from pathlib import Path

    from vaekit import trackers

    monkeypatch.setattr(trackers, "mlflow_version", lambda: "3.1.0")
    config = vaekit.Config(data="digits", hidden=[8], epochs=1, log="mlflow")
    message = (r"--log mlflow supports MLflow 2.10 or later, before 3 \(the 'vaekit\[mlflow\]' extra's range\), "
               r"but MLflow 3.1.0 is installed: pip install 'mlflow-skinny>=2.10,<3'")
    with pytest.raises(vaekit.VaekitError, match=message):
        vaekit.train(config, tmp_path / "r", quiet=True)
    assert not (tmp_path / "r").exists()
    monkeypatch.setattr(trackers, "mlflow_version", lambda: "2.9.4")
    with pytest.raises(vaekit.VaekitError, match="but MLflow 2.9.4 is installed"):
        trackers.check_installed(("mlflow",))
    # the range said is the extra's
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert re.search(r'mlflow = \["mlflow-skinny>=2\.10,<3"\]', pyproject)
