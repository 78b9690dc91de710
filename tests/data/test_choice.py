"""Choices made from the data when none was given: the likelihood, and the --standardize hint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vaekit.app.data import Dataset
from vaekit.app.data.choice import choose_likelihood, scale_hint

from .helpers import cli


def test_the_likelihood_follows_the_data():
    assert choose_likelihood(torch.tensor([[0.0, 1.0], [1.0, 1.0]]))[0] == "bernoulli"
    assert choose_likelihood(torch.tensor([[0.2, 0.7], [1.0, 0.0]]))[0] == "bernoulli"
    name, why = choose_likelihood(torch.tensor([[0.2, 1.5], [-3.0, 0.0]]))
    assert name == "gaussian" and why == "the values span [-3, 1.5], beyond a Bernoulli's [0, 1]"


def test_the_scale_hint_names_the_widest_and_narrowest_columns():
    x = torch.tensor([[1.0, 100.0, 5.0], [2.0, 300.0, 5.0], [3.0, 200.0, 5.0]])  # sds 0.82, 82, constant
    hint = scale_hint(Dataset(x, features=["a", "b", "c"]))
    assert hint.startswith("hint: the columns' scales differ 100×") and "'b'" in hint and "'a'" in hint
    assert "--standardize" in hint
    assert scale_hint(Dataset(x[:, [0, 2]], features=["a", "c"])) is None  # a constant column is no scale
    assert scale_hint(Dataset(x * torch.tensor([1.0, 0.5, 1.0]))) is None  # 50×: no hint
    assert scale_hint(Dataset(torch.rand(4, 1, 3, 3))) is None  # images: pixels are one unit


@pytest.fixture
def table(tmp_path):
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(0, 1, 60), rng.normal(1000, 500, 60)])
    path = tmp_path / "wide.csv"
    np.savetxt(path, x, delimiter=",", header="small,large", comments="")
    return path


def test_a_table_beyond_0_1_trains_with_a_gaussian_and_says_why(table, tmp_path, capsys):
    status, _, err = cli(capsys, "train", "--data", table, "--hidden", "8", "--epochs", "1",
                         "--out", tmp_path / "run", "--no-figures")
    assert status == 0, err  # it used to fail: "the bernoulli likelihood needs data in [0, 1]"
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["likelihood"] == "gaussian"
    assert "likelihood: gaussian, chosen from the data: the values span [" in err
    assert "hint: the columns' scales differ" in err and "'large'" in err and "--standardize" in err
    status, _, err = cli(capsys, "train", "--data", table, "--hidden", "8", "--epochs", "1", "--standardize",
                         "--out", tmp_path / "std", "--no-figures")
    assert status == 0, err
    assert "likelihood: gaussian" in err and "hint" not in err
    # a likelihood given is used as given, and refused on data it cannot model
    status, _, err = cli(capsys, "train", "--data", table, "--likelihood", "bernoulli", "--epochs", "1",
                         "--out", tmp_path / "b")
    assert status == 2 and "the bernoulli likelihood needs data in [0, 1]" in err


def test_data_in_0_1_keep_the_bernoulli(tmp_path, capsys):
    path = tmp_path / "p.csv"
    np.savetxt(path, np.random.default_rng(0).random((40, 3)), delimiter=",", header="a,b,c", comments="")
    status, _, err = cli(capsys, "train", "--data", path, "--hidden", "8", "--epochs", "1",
                         "--out", tmp_path / "run", "--no-figures")
    assert status == 0, err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["likelihood"] == "bernoulli"
    assert "likelihood: bernoulli, chosen from the data: the values lie in [0, 1], from" in err
