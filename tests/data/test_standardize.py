"""Standardisation: fitted on the training split, recorded in the run, applied and inverted
the same way by evaluate, encode, reconstruct and sample."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vaekit.app.config import Config
from vaekit.app.data import Dataset, split_validation
from vaekit.app.data.lazy import LazyArray, memmap_reader
from vaekit.app.data.standardize import Standardization
from vaekit.app.runs import load, train
from vaekit.errors import VaekitError

from .helpers import cli


def test_fit_matches_numpy_and_handles_constant_features():
    x = np.random.default_rng(0).normal([1e4, -3, 0], [2.0, 0.1, 1.0], (500, 3))
    x[:, 2] = 7.0  # constant: sd 0, kept at 1 so it maps to 0 instead of dividing by 0
    st = Standardization.fit(torch.from_numpy(x).float())
    np.testing.assert_allclose(st.mean, x.astype(np.float32).mean(0), rtol=1e-6)
    np.testing.assert_allclose(st.std[:2], x.astype(np.float32).std(0)[:2], rtol=1e-4)
    assert st.std[2] == 1.0
    z = st.apply(torch.from_numpy(x).float())
    torch.testing.assert_close(z[:, 2], torch.zeros(500))
    torch.testing.assert_close(st.invert(z), torch.from_numpy(x).float(), rtol=1e-6, atol=1e-3)
    assert st.log_jacobian == pytest.approx(-np.log(st.std).sum())


def test_lazy_data_get_the_same_map():
    x = np.random.default_rng(1).random((40, 5)).astype(np.float32) * 10
    lazy = LazyArray(memmap_reader(x), 40, (5,))
    st = Standardization.fit(lazy)
    eager = Standardization.fit(torch.from_numpy(x))
    np.testing.assert_allclose(st.mean, eager.mean)
    torch.testing.assert_close(st.apply(lazy)[torch.tensor([3, 1])], eager.apply(torch.from_numpy(x))[[3, 1]])


def test_record_round_trip_and_validation():
    st = Standardization(np.array([1.0, 2.0]), np.array([0.5, 4.0]))
    again = Standardization.from_dict(json.loads(json.dumps(st.to_dict())), "x")
    np.testing.assert_array_equal(again.mean, st.mean)
    np.testing.assert_array_equal(again.std, st.std)
    with pytest.raises(VaekitError, match="std positive"):
        Standardization.from_dict({"shape": [1], "mean": [0], "std": [0]}, "x")
    with pytest.raises(VaekitError, match="needs shape, mean and std"):
        Standardization.from_dict({"mean": [0]}, "x")
    with pytest.raises(VaekitError, match=r"data shaped \[3\] per example, but the run standardised \[2\]"):
        st.apply(torch.zeros(1, 3))


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("table")
    rng = np.random.default_rng(0)
    x = np.c_[rng.normal(100, 20, 200), rng.normal(-5, 0.01, 200), rng.normal(0, 1, 200)]
    labels = rng.integers(0, 3, 200)
    rows = [f"{a:.17g},{b:.17g},{c:.17g},{g}" for (a, b, c), g in zip(x, labels, strict=True)]
    lines = ["height,offset,noise,group", *rows]
    (folder / "t.csv").write_text("\n".join(lines) + "\n")
    config = Config(data=str(folder / "t.csv"), label_column="group", standardize=True,
                    likelihood="gaussian", hidden=[8], latent_dim=2, epochs=2, batch_size=50, seed=3)
    return train(config, folder / "run", quiet=True, figures=False), config, x.astype(np.float32)


def test_run_records_the_training_split_statistics(table_run):
    run_dir, config, x = table_run
    train_part, _ = split_validation(Dataset(torch.from_numpy(x)), config.validation_fraction, config.seed)
    record = json.loads((run_dir / "data.json").read_text())["standardization"]
    assert record["shape"] == [3]
    np.testing.assert_allclose(record["mean"], train_part.x.double().mean(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(record["std"], train_part.x.double().std(0, correction=0).numpy(), rtol=1e-5)


def test_encode_sample_evaluate_reconstruct_use_the_recorded_map(table_run, tmp_path, capsys):
    run_dir, config, x = table_run
    record = json.loads((run_dir / "data.json").read_text())["standardization"]
    mean, std = np.array(record["mean"]), np.array(record["std"])
    model = load(run_dir)
    z = torch.from_numpy((x - mean) / std).float()

    status, _, err = cli(capsys, "encode", run_dir, "-o", tmp_path / "mu.npy")
    assert status == 0, err
    with torch.no_grad():
        expected = model.encode(z).mean.numpy()
    np.testing.assert_allclose(np.load(tmp_path / "mu.npy"), expected, rtol=1e-4, atol=1e-5)

    status, _, err = cli(capsys, "sample", run_dir, "-n", "5", "--seed", "4", "-o", tmp_path / "s.npy")
    assert status == 0, err
    torch.manual_seed(4)
    expected = model.sample(5).double().numpy() * std + mean
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), expected, rtol=1e-5, atol=1e-4)

    status, _, err = cli(capsys, "reconstruct", run_dir, "--split", "all", "-n", "3",
                         "-o", tmp_path / "r.npy")
    assert status == 0, err
    with torch.no_grad():
        expected = model.decode_mean(model.encode(z[:3]).mean).double().numpy() * std + mean
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), expected, rtol=1e-5, atol=1e-4)

    # other data: the run's map, not one refitted to the new rows
    other = tmp_path / "other.csv"
    other.write_text("height,offset,noise,group\n100,-5,0,1\n140,-4.99,1,2\n")
    status, out, err = cli(capsys, "evaluate", run_dir, "--data", other, "--json", "--samples", "1")
    assert status == 0, err
    from vaekit.evaluation import evaluate

    rows = torch.from_numpy((np.array([[100, -5, 0], [140, -4.99, 1]]) - mean) / std).float()
    torch.manual_seed(0)
    expected = evaluate(model, rows, importance_samples=1)["elbo"]
    result = json.loads(out)
    assert result["elbo_standardized"] == pytest.approx(expected, rel=1e-5)
    assert result["elbo"] == pytest.approx(expected - np.log(std).sum(), rel=1e-5)  # in the data's units


def test_bernoulli_on_standardised_data_is_refused(tmp_path):
    (tmp_path / "t.csv").write_text("a,b\n1,2\n3,5\n4,4\n5,1\n")
    config = Config(data=str(tmp_path / "t.csv"), standardize=True, hidden=[4], epochs=1,
                    validation_fraction=0.0, likelihood="bernoulli")  # given (auto would choose gaussian)
    with pytest.raises(VaekitError, match="bernoulli likelihood needs data in"):
        train(config, tmp_path / "run", quiet=True, figures=False)


def test_evaluate_reports_log_p_x_in_the_datas_own_units(tmp_path, capsys):
    """Issue 24 item 2: scaling a table's columns by 1000 must shift log p(x) by -D log(1000)
    per example (a density per unit of x: each column's unit is 1000 times smaller). It used
    to stay unchanged: the figure was of the standardised data, which scaling does not change."""
    rng = np.random.default_rng(0)
    x = rng.normal([0.0, 5.0, -2.0, 1.0], [1.0, 3.0, 0.5, 2.0], (120, 4))
    results = {}
    for scale in (1, 1000):
        path = tmp_path / f"t{scale}.csv"
        np.savetxt(path, x * scale, delimiter=",", header="a,b,c,d", comments="", fmt="%.17g")
        run = tmp_path / f"run{scale}"
        status, _, err = cli(capsys, "train", "--data", path, "--standardize", "--hidden", "8", "--epochs", "2",
                             "--no-figures", "--out", run, "--seed", "3")
        assert status == 0, err
        assert "evaluation.json: log-likelihood, ELBO and bits/dim are of the data in their own units" in err
        quick = json.loads((run / "evaluation.json").read_text())
        status, out, err = cli(capsys, "evaluate", run, "--json", "--importance-samples", "20", "--split", "train")
        assert status == 0, err
        assert "are of the data in their own units" in err
        results[scale] = result = json.loads(out)
        for r in (result, quick):
            assert r["units"] == "data" and r["log_jacobian"] == pytest.approx(-np.log(std_of(run)).sum())
            for key in ("log_likelihood", "elbo", "reconstruction", "iwae_bound"):
                assert r[key] - r[key + "_standardized"] == pytest.approx(r["log_jacobian"], abs=1e-9)
            assert r["nll"] == -r["log_likelihood"]
            assert r["bits_per_dim"] == pytest.approx(r["nll"] / (4 * np.log(2)))
            assert r["kl"] == pytest.approx(r["reconstruction"] - r["elbo"])  # unchanged by the units
    # the same standardised data (to float rounding), so the same model: only the units differ
    small, large = results[1], results[1000]
    assert large["log_likelihood_standardized"] == pytest.approx(small["log_likelihood_standardized"], abs=1e-3)
    shift = large["log_likelihood"] - small["log_likelihood"]
    assert shift == pytest.approx(-4 * np.log(1000), abs=1e-3)
    assert large["elbo"] - small["elbo"] == pytest.approx(-4 * np.log(1000), abs=1e-3)


def std_of(run):
    return np.array(json.loads((run / "data.json").read_text())["standardization"]["std"])
