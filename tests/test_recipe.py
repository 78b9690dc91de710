"""The training recipe in the app: config keys and flags for initialisation, optimiser,
schedule, budgets and early stopping; presets (`vaekit train --preset`, `vaekit presets`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from vaekit import schedules
from vaekit.app import presets
from vaekit.app.config import Config
from vaekit.app.runs import build_model, initialise, load_config, optimizer_for
from vaekit.errors import VaekitError


# ---------------------------------------------------------------------- config keys
def test_lr_schedule_mini_language_with_defaults():
    assert Config(lr_schedule="step").schedule.args == (10.0, 0.5)
    assert Config(lr_schedule="step:3").schedule.args == (3.0, 0.5)
    assert Config(lr_schedule="geometric:0.1:0.01").validate().schedule == ("geometric", (0.1, 0.01))
    assert isinstance(schedules_from("burda"), schedules.Burda)
    assert isinstance(schedules_from("plateau:2:0.3"), schedules.Plateau)
    assert schedules_from("constant") is None


def schedules_from(text: str):
    from vaekit.app.factories import schedule_from_spec

    return schedule_from_spec(Config(lr_schedule=text).validate().schedule)


@pytest.mark.parametrize(("values", "message"), [
    ({"lr_schedule": "cosin"}, "did you mean 'cosine'"),
    ({"lr_schedule": "step:1:2:3"}, "too many parts"),
    ({"lr_schedule": "exponential:x"}, "must be numbers"),
    ({"lr_schedule": "exponential:1.5"}, "gamma must be in"),
    ({"lr_schedule": "plateau:2.5"}, "whole number"),
    ({"time_budget": "an hour"}, "a duration must be"),
    ({"steps": 100, "time_budget": "5m"}, "give one of them"),
    ({"patience": 3, "validation_fraction": 0.0}, "needs validation data"),
    ({"adam_betas": [0.9]}, "two numbers"),
    ({"adam_betas": "0.9,1.0"}, "two numbers"),
    ({"optimizer": "adamax"}, "optimizer must be one of"),
    ({"init": "xavier"}, "init must be default, glorot or normal:SD"),
    ({"init": "normal:-1"}, "positive standard deviation"),
    ({"output_bias": "mean"}, "output_bias must be one of"),
])
def test_recipe_settings_refuse_nonsense_with_one_line(values, message):
    with pytest.raises(VaekitError, match=message) as err:
        Config().override(values)
    assert "\n" not in str(err.value)


def test_adam_betas_from_a_flag_string_or_a_toml_list():
    assert Config().override({"adam_betas": "0.5,0.99"}).adam_betas == [0.5, 0.99]
    assert Config.from_dict({"adam_betas": [0.9, 0.999]}).adam_betas == [0.9, 0.999]


def test_stored_configs_without_the_new_keys_read_as_what_trained_them():
    values = Config().to_dict()
    for key in ("init", "output_bias"):
        del values[key]
    old = Config.from_stored(values)
    assert (old.init, old.output_bias) == ("default", "zero")  # what vaekit did before these keys
    assert Config.from_dict(values).output_bias == Config().output_bias  # a TOML file gets today's default


def test_optimizers_are_the_named_torch_classes_with_the_settings():
    params = [torch.nn.Parameter(torch.zeros(3))]
    cpu = torch.device("cpu")
    adam = optimizer_for(Config(adam_betas=[0.8, 0.99], adam_eps=1e-4, lr=2e-3).validate(), cpu)(params)
    assert type(adam) is torch.optim.Adam
    group = adam.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["fused"]) == (2e-3, (0.8, 0.99), 1e-4, True)
    for name, cls in (("adamw", torch.optim.AdamW), ("adagrad", torch.optim.Adagrad), ("sgd", torch.optim.SGD)):
        opt = optimizer_for(Config(optimizer=name, lr=0.02, weight_decay=1e-5).validate(), cpu)(params)
        assert type(opt) is cls and opt.param_groups[0]["lr"] == 0.02 and opt.param_groups[0]["weight_decay"] == 1e-5


def test_initialise_glorot_and_the_data_output_bias():
    config = Config(hidden=[20], activation="tanh", latent_dim=3, init="glorot", output_bias="data").validate()
    x = torch.rand(50, 1, 4, 4)
    x[:, :, 0, 0] = 0.0  # a pixel that is always 0: its logit is clipped, not -inf
    model = build_model(config, (1, 4, 4))
    initialise(model, config, x)
    last = model.decoder[-1]
    mean = x.double().mean(0).flatten().clamp(1e-3, 1 - 1e-3)
    torch.testing.assert_close(last.bias.double(), torch.log(mean / (1 - mean)), atol=1e-5, rtol=0)
    first = model.encoder[0]
    bound = math.sqrt(6 / (16 + 20))
    assert float(first.weight.detach().abs().max()) <= bound and float(first.bias.detach().abs().max()) == 0
    plain = build_model(Config(hidden=[20], latent_dim=3, output_bias="zero").validate(), (1, 4, 4))
    bias = plain.decoder[-1].bias.detach().clone()
    initialise(plain, Config(hidden=[20], latent_dim=3, output_bias="zero").validate(), x)
    assert torch.equal(plain.decoder[-1].bias, bias)  # zero: torch's own initialisation is left alone


# ---------------------------------------------------------------------- presets
def test_every_preset_is_a_valid_config_that_builds_its_model():
    listed = presets.names()
    for name in ("pytorch-examples", "kingma2013-mnist", "burda2016-vae-1l", "burda2016-iwae-1l-k5",
                 "burda2016-iwae-1l-k50", "burda2016-vae-2l", "burda2016-iwae-2l-k50"):
        assert name in listed
        if name.startswith("burda"):
            assert f"{name}-cpu60" in listed
    for name in listed:
        preset = presets.load(name)
        config = preset.config()
        assert config.preset == name and {"paper", "model", "protocol", "metric"} <= set(preset.meta)
        model = build_model(config, (1, 28, 28))
        assert model.event_shape == (1, 28, 28)


def test_burda_presets_are_the_published_protocol():
    c = presets.load("burda2016-vae-1l").config()
    assert (c.hidden, c.activation, c.latent_dim, c.batch_size, c.epochs) == ([200, 200], "tanh", 50, 20, 3280)
    assert (c.lr, c.lr_schedule, c.adam_eps, c.init, c.output_bias) == (1e-3, "burda", 1e-4, "glorot", "data")
    assert round(60000 * c.validation_fraction) == 400 and c.binarize == "dynamic"
    two = presets.load("burda2016-iwae-2l-k50").config()
    assert (two.model, two.latent_dim, two.latent_dim2, two.hidden2, two.objective, two.k) == \
        ("hvae", 100, 50, [100, 100], "iwae", 50)
    quick = presets.load("burda2016-vae-1l-cpu60").config()
    assert quick.time_budget_seconds == 3600 and quick.lr_schedule.startswith("geometric")
    published = {n: presets.load(n).published for n in presets.names() if n.startswith("burda") and "cpu60" not in n}
    assert published == {"burda2016-vae-1l": 86.76, "burda2016-iwae-1l-k5": 85.54, "burda2016-iwae-1l-k50": 84.78,
                         "burda2016-vae-2l": 85.33, "burda2016-iwae-2l-k50": 82.90}


def test_a_budget_named_on_top_replaces_the_other_budget_from_below():
    hour = presets.load("burda2016-vae-1l-cpu60").config()
    trial = hour.override({"steps": 300})
    assert (trial.steps, trial.time_budget) == (300, None)
    again = trial.override({"time_budget": "30m"})
    assert (again.steps, again.time_budget_seconds) == (0, 1800)
    assert hour.override({"lr": 1e-3}).time_budget_seconds == 3600  # other settings leave the budget alone
    with pytest.raises(VaekitError, match="give one of them"):
        hour.override({"steps": 300, "time_budget": "5m"})


def test_steps_on_the_command_line_replace_a_presets_time_budget(tmp_path):
    done = run_cli("train", "--preset", "burda2016-vae-1l-cpu60", "--data", "digits", "--hidden", "8",
                   "--latent-dim", "2", "--steps", "3", "--threads", "1", "-q", "--no-figures", "--out", tmp_path / "r")
    assert done.returncode == 0, done.stderr
    stored = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (stored["steps"], stored["time_budget"]) == (3, None)


def test_unknown_preset_is_one_clear_line():
    with pytest.raises(VaekitError, match="did you mean 'pytorch-examples'"):
        presets.load("pytorch-example")
    with pytest.raises(VaekitError, match="unknown preset"):
        presets.load("../config")


def test_presets_command_lists_published_and_measured(tmp_path):
    done = run_cli("presets")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:2] == ["name", "paper"] and "measured" in lines[0]
    assert sum(line.startswith("burda2016-") for line in lines) == 10
    records = Path(presets.__file__).parent / "records"
    recorded = {path.stem: json.loads(path.read_text()) for path in records.glob("*.json")}
    for line in lines:
        name = line.split()[0]
        if name.startswith("burda2016-"):  # the package's record where a run was published, else "not yet run"
            assert (f"{recorded[name]['measured']:.2f}" in line) if name in recorded else ("not yet run" in line), line
    (tmp_path / "burda2016-vae-1l-cpu60.json").write_text(json.dumps(
        {"measured": 86.51, "measured_se": 0.04, "training_seconds": 3600, "date": "2026-12-01"}))
    done = run_cli("presets", "--records", tmp_path, "--json")
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    assert rows["burda2016-vae-1l-cpu60"]["measured"] == "86.51 ± 0.04 (1 h 00 min, 2026-12-01)"
    assert rows["burda2016-vae-1l"]["measured"] == "not yet run" and rows["burda2016-vae-1l"]["published"] == 86.76
    assert run_cli("presets", "--help").returncode == 0
    shown = run_cli("presets", "burda2016-vae-2l")
    assert shown.returncode == 0 and 'model = "hvae"' in shown.stdout and "published: 85.33" in shown.stdout


def test_train_with_a_preset_and_overrides(tmp_path):
    done = run_cli("train", "--preset", "burda2016-vae-1l", "--data", "digits", "--epochs", "2", "--batch-size", "100",
                   "--out", tmp_path / "run", "--quiet", "--no-figures")
    assert done.returncode == 0, done.stderr
    config = load_config(tmp_path / "run")
    assert config.preset == "burda2016-vae-1l" and config.epochs == 2 and config.batch_size == 100  # flags win
    assert (config.hidden, config.adam_eps, config.lr_schedule) == ([200, 200], 1e-4, "burda")  # the preset's
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([1e-3, 7.2e-4])  # Burda's first two stages
    bad = run_cli("train", "--preset", "nope", "--out", tmp_path / "x")
    assert bad.returncode == 2 and "unknown preset 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    both = run_cli("train", "--preset", "pytorch-examples", "--resume", tmp_path / "run")
    assert both.returncode == 2 and "--preset starts a new run" in both.stderr


# ---------------------------------------------------------------------- budgets and early stopping
def test_a_run_of_few_epochs_on_little_data_warns_with_its_step_count(tmp_path):
    """200 images, batch 128, 20 epochs = 40 steps: said, with the arithmetic, not silent."""
    from vaekit.app.config import Config
    from vaekit.app.runs import short_run

    said = short_run(Config(epochs=20, batch_size=128), 200)
    assert said == "20 epochs of 2 steps (200 examples, batch 128) = 40 steps"
    assert short_run(Config(epochs=300, batch_size=128), 128) is None  # 300 steps: enough
    assert short_run(Config(epochs=299, batch_size=128), 128) is not None
    assert short_run(Config(steps=299), 60000) == "299 steps" and short_run(Config(steps=300), 10) is None
    assert short_run(Config(time_budget="1m", epochs=1), 10) is None  # planned while training
    done = run_cli("train", "--data", "digits", "--hidden", "16", "--epochs", "2", "--out", tmp_path / "run",
                   "--no-figures")
    assert done.returncode == 0, done.stderr
    assert "warning: 2 epochs of 13 steps (1617 examples, batch 128) = 26 steps is a very short run" in done.stderr
    quiet = run_cli("train", "--data", "digits", "--hidden", "16", "--epochs", "2", "--out", tmp_path / "q",
                    "--no-figures", "-q")
    assert quiet.returncode == 0 and "very short run" not in quiet.stderr


def test_steps_budget_warns_when_short_and_resumes_with_more(tmp_path):
    out = tmp_path / "run"
    done = run_cli("train", "--data", "digits", "--hidden", "16", "--steps", "30", "--batch-size", "64",
                   "--out", out, "--no-figures")
    assert done.returncode == 0, done.stderr
    assert "warning: 30 steps is a very short run" in done.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["steps"] for r in rows] == [26, 30]  # 1617 training images: 26 steps an epoch
    from vaekit.app.catalog import runs_table

    row = runs_table(tmp_path)[0]
    assert (row["status"], row["epochs_done"], row["epochs_planned"]) == ("finished", 2, None)
    more = run_cli("train", "--resume", out, "--steps", "40", "-q", "--no-figures")
    assert more.returncode == 0, more.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["steps"] for r in rows] == [26, 30, 40]
    other = run_cli("train", "--resume", out, "--lr-schedule", "cosine", "-q")
    assert other.returncode == 2 and "lr_schedule" in other.stderr


def test_time_budget_flag_reaches_the_plan(tmp_path):
    out = tmp_path / "run"
    done = run_cli("train", "--data", "digits", "--hidden", "16", "--time-budget", "2s", "--lr-schedule", "cosine",
                   "--out", out, "-q", "--no-figures")
    assert done.returncode == 0, done.stderr
    from vaekit.checkpoint import load

    meta = load(out).meta
    assert meta["plan"]["budget"] == 2.0 and meta["settings"]["schedule"] == "Cosine(final=0.0)"
    assert meta["steps"] == meta["plan"]["total_steps"] or meta["seconds"] >= 2.0


def test_patience_stops_early_and_keeps_the_best_weights(tmp_path):
    from vaekit.rundir import RunDirectory

    out = tmp_path / "run"
    done = run_cli("train", "--data", "digits", "--hidden", "16", "--epochs", "300", "--patience", "1",
                   "--lr", "0.03", "--out", out, "-q", "--no-figures")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda r: r["validation_elbo"])
    assert len(rows) < 300 and rows[-1]["epoch"] == best["epoch"] + 1  # one epoch without improvement
    run = RunDirectory(out)
    last, kept = build_model(load_config(out), (1, 8, 8)), build_model(load_config(out), (1, 8, 8))
    run.load_weights(last, "last")
    run.load_weights(kept, "best")
    for a, b in zip(last.state_dict().values(), kept.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # model.safetensors holds the best epoch's weights
