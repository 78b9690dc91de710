"""Training: it learns, it records what it did, and it refuses what it cannot do."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vaekit.app.config import Config
from vaekit.app.data import run_splits
from vaekit.app.runs import build_model, load, train
from vaekit.errors import VaekitError
from vaekit.rundir import read_metrics
from vaekit.sources import Source
from vaekit.training import validation_terms


def test_training_on_digits_raises_validation_elbo_by_a_clear_margin(tmp_path):
    config = Config(data="digits", binarize="dynamic", hidden=[64], latent_dim=2, epochs=15, seed=0)
    torch.manual_seed(config.seed)
    untrained = build_model(config, (1, 8, 8))
    val = run_splits(config)["validation"]
    # the metric training records: one fixed binary draw of the validation images
    before = validation_terms(untrained, Source(val.x), torch.device("cpu"), binarize_seed=config.seed)["elbo"]
    run = train(config, tmp_path / "run", quiet=True, figures=False)
    metrics = read_metrics(run)
    assert [m["epoch"] for m in metrics] == list(range(1, 16))
    after = metrics[-1]["validation_elbo"]
    assert after > before + 10, (before, after)  # about −45 -> −28 nats when written
    assert metrics[-1]["train_elbo"] > metrics[0]["train_elbo"]
    for m in metrics:  # the reported terms are consistent: ELBO = reconstruction − KL
        assert m["train_elbo"] == pytest.approx(m["train_reconstruction"] - m["train_kl"], abs=1e-3)
        assert m["validation_kl"] >= 0 and m["seconds"] > 0


def test_run_directory_holds_everything(tiny_run):
    for name in ("config.json", "run.json", "model.safetensors", "metrics.jsonl", "evaluation.json",
                 "latent.png", "manifold.png", "reconstructions.png", "samples.png", "curves.png"):
        assert (tiny_run / name).is_file(), name
        assert (tiny_run / name).stat().st_size > 0, name
    stored = Config.from_file(tiny_run / "config.json")
    assert stored.epochs == 5 and stored.hidden == [64]
    evaluation = json.loads((tiny_run / "evaluation.json").read_text())
    assert evaluation["split"] == "validation" and evaluation["n"] == 180
    assert evaluation["elbo"] < 0


def test_save_load_round_trip_gives_identical_outputs(tiny_run, tmp_path):
    from vaekit.app.runs import save

    model = load(tiny_run)
    assert not model.training
    x = torch.rand(6, 1, 8, 8)
    again = load(save(model, Config.from_file(tiny_run / "config.json"), tmp_path / "copy"))
    q1, q2 = model.encode(x), again.encode(x)
    assert torch.equal(q1.mean, q2.mean) and torch.equal(q1.stddev, q2.stddev)
    z = torch.randn(4, 2)
    assert torch.equal(model.decode(z).mean, again.decode(z).mean)


def test_same_seed_same_run(tmp_path):
    config = Config(data="digits", binarize="dynamic", hidden=[16], epochs=2, seed=3)
    a = read_metrics(train(config, tmp_path / "a", quiet=True, figures=False))
    b = read_metrics(train(config, tmp_path / "b", quiet=True, figures=False))
    strip = [{k: v for k, v in m.items() if k != "seconds"} for m in a]
    assert strip == [{k: v for k, v in m.items() if k != "seconds"} for m in b]


@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_models_train_with_gaussian_likelihood_on_tabular_data(tmp_path, kind):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2)) @ rng.normal(size=(2, 6)) + 0.1 * rng.normal(size=(300, 6))
    np.save(tmp_path / "t.npy", x.astype(np.float32))
    config = Config(data=str(tmp_path / "t.npy"), model=kind, likelihood="gaussian",
                    sigma="per-dim", hidden=[32], latent_dim=2, epochs=30, batch_size=50)
    run = train(config, tmp_path / kind, quiet=True, figures=False)
    metrics = read_metrics(run)
    assert metrics[-1]["validation_reconstruction"] > metrics[0]["validation_reconstruction"] + 1
    if kind == "ae":
        assert all(m["train_kl"] == 0 for m in metrics)


def test_bernoulli_on_data_outside_unit_interval_is_refused(tmp_path):
    np.save(tmp_path / "wide.npy", np.linspace(-1, 3, 40, dtype=np.float32).reshape(10, 4))
    config = Config(data=str(tmp_path / "wide.npy"), likelihood="bernoulli", epochs=1)
    with pytest.raises(VaekitError, match=r"needs data in \[0, 1\]"):
        train(config, tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


def test_bernoulli_on_grey_levels_warns_once(tmp_path, capsys):
    config = Config(data="digits", hidden=[8], epochs=1, binarize="none")
    train(config, tmp_path / "grey", figures=False)
    err = capsys.readouterr().err
    assert err.count("not a bound on a log-likelihood") == 1


def test_an_existing_run_is_not_overwritten_by_accident(tiny_run, tmp_path):
    config = Config(data="digits", hidden=[8], epochs=1)
    run = train(config, tmp_path / "r", quiet=True, figures=False)
    before = (run / "model.safetensors").read_bytes()
    with pytest.raises(VaekitError, match="already holds a run.*--overwrite"):
        train(config.override({"seed": 5}), run, quiet=True, figures=False)
    assert (run / "model.safetensors").read_bytes() == before
    train(config.override({"seed": 5}), run, quiet=True, figures=False, overwrite=True)
    assert (run / "model.safetensors").read_bytes() != before


def test_threads_are_set_and_a_busy_machine_is_reported(monkeypatch, capsys):
    import os

    from vaekit.app import threads

    def set_threads(requested: int, quiet: bool = False) -> int:
        return threads.ThreadPolicy(requested, quiet=quiet).threads

    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    try:
        monkeypatch.setattr(os, "getloadavg", lambda: (7.5, 7.0, 6.0))
        assert set_threads(2) == 2  # an explicit count is kept, with a warning
        assert "load average 7.5" in capsys.readouterr().err
        assert set_threads(2, quiet=True) == 2
        assert capsys.readouterr().err == ""
        monkeypatch.setattr(threads, "own_jiffies", lambda: 0.0)  # a fresh process
        assert set_threads(0) == 1  # auto: the busy machine leaves one core
        assert "using 1 thread" in capsys.readouterr().err
        monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
        assert set_threads(0) == 2
        assert set_threads(1) == 1  # one thread cannot spin against itself: no warning
        assert capsys.readouterr().err == ""
    finally:
        torch.set_num_threads(before)
