"""The splits of a run, and what the run records about its data (data.json)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vaekit.app.config import Config
from vaekit.app.data import load_data, read_run_data, run_splits, select_split
from vaekit.app.runs import train
from vaekit.errors import VaekitError

from .helpers import cli


@pytest.fixture(scope="module")
def static_run(tmp_path_factory):
    """A tiny statically binarised run on a .npy file the tests may then alter."""
    folder = tmp_path_factory.mktemp("static")
    x = np.random.default_rng(0).random((120, 12)).astype(np.float32)
    np.save(folder / "grey.npy", x)
    config = Config(data=str(folder / "grey.npy"), binarize="static", hidden=[8], latent_dim=2,
                    epochs=1, batch_size=32, seed=7)
    return train(config, folder / "run", quiet=True, figures=False), config


def test_run_records_protocol_seed_and_fingerprints(static_run):
    run_dir, config = static_run
    record = json.loads((run_dir / "data.json").read_text())
    assert record["binarize"]["protocol"] == "static" and record["binarize"]["seed"] == 7
    assert record["binarize"]["algorithm"] == "splitmix64-v1"
    assert set(record["binarize"]["fingerprints"]) == {"train", "validation"}
    assert record["standardization"] is None and record["read_on_demand"] is False
    assert json.loads((run_dir / "config.json").read_text())["binarize"] == "static"


def test_evaluation_uses_the_runs_protocol_by_default(static_run, capsys):
    run_dir, config = static_run
    chosen = select_split(config, "validation", run_dir=run_dir)
    assert torch.equal(chosen.x, run_splits(config)["validation"].x)
    assert set(chosen.x.unique().tolist()) == {0.0, 1.0}
    default = cli(capsys, "evaluate", run_dir, "--json")
    explicit = cli(capsys, "evaluate", run_dir, "--json", "--binarize", "static")
    grey = cli(capsys, "evaluate", run_dir, "--json", "--binarize", "none")
    assert default[0] == explicit[0] == grey[0] == 0, default[2]
    assert json.loads(default[1]) == json.loads(explicit[1])
    assert json.loads(grey[1])["elbo"] != json.loads(default[1])["elbo"]


def test_changed_data_cannot_pass_for_the_recorded_draw(static_run, capsys):
    run_dir, config = static_run
    path = config.data
    original = np.load(path)
    try:
        np.save(path, np.clip(original + 0.3, 0, 1))
        status, _, err = cli(capsys, "evaluate", run_dir, "--split", "validation")
        assert status == 2
        assert "differs from the one this run recorded" in err
    finally:
        np.save(path, original)


def test_runs_without_a_data_record_still_load(tmp_path):
    assert read_run_data(tmp_path) == {}
    (tmp_path / "data.json").write_text("[1, 2]")
    with pytest.raises(VaekitError, match="not a vaekit data record"):
        read_run_data(tmp_path)


def test_validation_can_be_the_official_test_split(fake_mnist):
    config = Config(data="mnist", validation_split="test", binarize="dynamic")
    splits = run_splits(config, quiet=True)
    assert len(splits["train"]) == 12 and splits["validation"] is splits["test"]
    assert len(splits["test"]) == 5
    with pytest.raises(VaekitError, match="has no official test split"):
        run_splits(Config(data="digits", validation_split="test"))


def test_other_data_gets_the_runs_treatment(static_run, tmp_path):
    run_dir, config = static_run
    other = tmp_path / "other.npy"
    np.save(other, np.full((3, 12), 0.5, np.float32))
    chosen = select_split(config, "all", str(other), run_dir=run_dir)
    assert chosen.x.shape == (3, 12) and set(chosen.x.unique().tolist()) <= {0.0, 1.0}


def test_options_that_do_not_apply_are_refused(tmp_path):
    with pytest.raises(VaekitError, match="label_column applies to CSV/Parquet"):
        load_data("digits", label_column="y")
    with pytest.raises(VaekitError, match="image_size applies to folders of images"):
        load_data("digits", image_size=8)
    with pytest.raises(VaekitError, match=r"unknown data 'nope.txt'.*mnist, fashion-mnist, kmnist"):
        load_data("nope.txt")


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"image_mode": "colour"}, "image_mode must be one of auto, grey, rgb"),
        ({"validation_split": "tests"}, "did you mean 'test'"),
        ({"image_size": -1}, "image_size must be non-negative"),
        ({"mirror": "ftp://x"}, "mirror must be http://, https:// or file: URLs"),
        ({"standardize": True, "binarize": "static"}, "cannot be combined with binarize"),
        ({"label_column": ""}, "label_column must name a column"),
    ],
)
def test_config_checks_data_options(settings, message):
    with pytest.raises(VaekitError, match=message):
        Config().override(settings)
