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


# ---------------------------------------------------------------------- declared once (issue 22)
def test_docs_settings_md_is_generated_from_the_declarations():
    from pathlib import Path

    from vaekit.app.config import settings_reference

    docs = Path(__file__).resolve().parents[1] / "docs" / "settings.md"
    assert docs.read_text() == settings_reference(), "regenerate docs/settings.md from settings_reference()"


def test_every_setting_is_declared_once_with_help_a_section_and_a_generated_flag():
    import dataclasses

    from vaekit.app.commands.options import setting_options
    from vaekit.app.config import SECTIONS, help_text, section_of

    names = [f.name for f in dataclasses.fields(Config)]
    assert len(names) == len(set(names)) == sum(len(dataclasses.fields(cls)) for cls in SECTIONS.values())
    assert all(help_text(name) for name in names)
    assert all(section_of(name) in SECTIONS for name in names)
    assert [p.name for p in setting_options()] == names


def test_toml_sections_are_an_alternative_to_flat_keys(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "ae"\n[optimisation]\nlr = 0.01\nbatch_size = 32\n[data]\ndata = "digits"\n'
                    'validation_fraction = 0.2\n')
    config = Config.from_file(path)
    assert (config.model, config.lr, config.batch_size, config.validation_fraction) == ("ae", 0.01, 32, 0.2)
    assert config.section("optimisation").lr == 0.01
    path.write_text("[optimisation]\nlatent_dim = 3\n")
    with pytest.raises(VaekitError, match=r"\[optimisation\] has no setting 'latent_dim' \(it is in \[model\]\)"):
        Config.from_file(path)


def test_component_names_come_from_one_registry_per_kind():
    from vaekit import likelihoods, nets, registry
    from vaekit.app import config

    assert config.LIKELIHOODS is registry.LIKELIHOODS and registry.LIKELIHOODS.names == likelihoods.NAMES
    assert nets.ACTIVATIONS is registry.ACTIVATIONS
    for kind in (registry.MODELS, registry.LIKELIHOODS, registry.SCHEDULES, registry.OPTIMIZERS,
                 registry.OBJECTIVES, config.ARCHITECTURES):
        for entry in kind.values():  # every name's factory exists
            assert entry.factory is None or callable(entry.load()), entry.name
    with pytest.raises(VaekitError, match="did you mean 'gaussian'"):
        Config(likelihood="gausian").validate()


def test_the_schedule_mini_language_is_parsed_once_into_typed_numbers():
    from vaekit.registry import SCHEDULES, Spec

    assert SCHEDULES.parse("step:3") == Spec("step", (3.0, 0.5))
    assert Config(lr_schedule="plateau:4:0.1").validate().schedule == Spec("plateau", (4.0, 0.1))
    with pytest.raises(VaekitError, match="finite"):
        SCHEDULES.parse("step:inf")


# ---------------------------------------------------------------------- hostile --config files (issue 25 item 4)
HOSTILE = {
    "deep.json": ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "nests tables or lists too deeply"),
    "deep.toml": ("a = " + "[" * 100_000 + "]" * 100_000 + "\n", "nests tables or lists too deeply"),
    "digits.toml": ("epochs = " + "9" * 5000 + "\n", "holds a number too long"),
    "digits.json": ('{"epochs": ' + "9" * 5000 + "}", "holds a number too long"),
    "list.json": ("[1, 2]", "expected a table of settings, got list"),
    "hidden.toml": ("hidden = [" + ",".join(["4"] * 20_000) + "]\n", "hidden lists 20,000 layers; at most 64"),
    "int64.toml": ("epochs = " + "9" * 4000 + "\n", "epochs must fit in 64 bits"),
    "channels.json": ('{"channels": [' + ",".join(["8"] * 17) + "]}", "channels lists 17 layers; at most 16"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_config_file_gets_a_one_line_error(tmp_path, capsys, name):
    from vaekit.app.cli import main

    text, message = HOSTILE[name]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(VaekitError, match=message):
        Config.from_file(path)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message.split(";")[0] in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_the_app_resume_policy_contains_the_library_one():
    """One resume policy: what fit lets a resume change is declared on_resume in the config
    (the app adds its own settings, such as threads and log)."""
    from vaekit.app.config import LIBRARY_MAY_CHANGE, MAY_CHANGE_ON_RESUME

    assert set(LIBRARY_MAY_CHANGE) <= set(MAY_CHANGE_ON_RESUME)
    assert {"lr", "epochs", "threads", "log"} <= set(MAY_CHANGE_ON_RESUME)
    assert "latent_dim" not in MAY_CHANGE_ON_RESUME
