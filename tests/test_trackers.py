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
