"""One source of truth: defaults < TOML file < command-line flags, each checked."""

from __future__ import annotations

import json

import pytest

from vaekit.app.config import Config, parse_binarize, parse_hidden, parse_sigma
from vaekit.errors import VaekitError


def test_precedence_defaults_then_file_then_flags(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('latent_dim = 5\nepochs = 7\nhidden = [32, 16]\nlikelihood = "gaussian"\n')
    from_file = Config.from_file(path)
    assert (from_file.latent_dim, from_file.epochs, from_file.hidden) == (5, 7, [32, 16])
    assert from_file.lr == Config().lr  # untouched keys keep their defaults
    final = from_file.override({"epochs": 2, "lr": None, "hidden": "8"})
    assert (final.latent_dim, final.epochs, final.hidden) == (5, 2, [8])
    assert final.lr == Config().lr  # None means "flag not given"


def test_json_round_trip(tmp_path):
    config = Config(latent_dim=3, hidden=[10, 5], sigma="fixed:0.2")
    config.save(tmp_path / "config.json")
    assert Config.from_file(tmp_path / "config.json") == config
    assert json.loads((tmp_path / "config.json").read_text())["hidden"] == [10, 5]


def test_unknown_key_suggests_the_closest(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("latent_dims = 3\n")
    with pytest.raises(VaekitError, match="unknown setting 'latent_dims'.*latent_dim"):
        Config.from_file(path)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lr": 0}, "lr must be positive"),
        ({"lr": -1e-3}, "lr must be positive"),
        ({"batch_size": -4}, "batch_size must be positive"),
        ({"latent_dim": 0}, "latent_dim must be positive"),
        ({"samples": 0}, "samples must be positive"),
        ({"hidden": [400, -2]}, "hidden must be positive"),
        ({"likelihood": "bernouli"}, "did you mean 'bernoulli'"),
        ({"model": "gan"}, "model must be one of vae, ae"),
        ({"sigma": "fixed:-1"}, "positive number"),
        ({"sigma": "learned"}, "sigma must be"),
        ({"binarize": "threshold:1.5"}, "LEVEL in"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"epochs": "ten"}, "expects int"),
        ({"latent_dim": True}, "expects int"),
        ({"hidden": "4x"}, "hidden must be layer sizes"),
        ({"device": "gpu"}, "device must be auto, cpu"),
        ({"precision": "fp16"}, "precision must be one of fp32, bf16"),
    ],
)
def test_bad_values_are_refused_with_a_message(values, message):
    with pytest.raises(VaekitError, match=message):
        Config().override(values)


def test_invalid_toml_is_reported(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("latent_dim = = 3\n")
    with pytest.raises(VaekitError, match="not valid"):
        Config.from_file(path)
    with pytest.raises(VaekitError, match="not found"):
        Config.from_file(tmp_path / "missing.toml")


def test_parsers():
    assert parse_hidden("400,200") == [400, 200]
    assert parse_hidden("400 200") == [400, 200]
    assert parse_sigma("fixed:0.5") == ("fixed", 0.5)
    assert parse_sigma("per-dim") == ("per-dim", None)
    assert parse_binarize("threshold:0.3") == ("threshold", 0.3)
    assert parse_binarize("threshold") == ("threshold", 0.5)


def test_string_settings_have_typed_values():
    config = Config(binarize="threshold:0.3", sigma="fixed:0.2")
    assert config.binarization == ("threshold", 0.3) and not config.binarization.dynamic
    assert config.sigma_value == 0.2  # what the likelihood takes: a number means fixed
    assert Config(binarize="dynamic").binarization.dynamic
    assert Config(sigma="per-dim").sigma_value == "per-dim"
    assert (Config().device, Config().precision) == ("auto", "fp32")
    config.binarize = "dynamic"  # set after the first parse: validate() parses afresh
    assert config.validate().binarization.dynamic


def test_diff_lists_each_change():
    a, b = Config(), Config(latent_dim=9, lr=0.1)
    assert a.diff(b) == ["latent_dim: 2 -> 9", "lr: 0.001 -> 0.1"]
