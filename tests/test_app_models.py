"""The app's side of models and objectives: a config's model, objective and classes
(app/runs factories) against the library's own pieces, the checks a config and its data get,
and the progress lines the app prints. The library itself is tested without the app."""

from __future__ import annotations

import functools

import pytest
import torch

from conftest import make_vae
from vaekit import schedules
from vaekit.app.config import Config
from vaekit.app.runs import build_model, check_data, objective_for, with_classes
from vaekit.errors import VaekitError
from vaekit.objectives import Batch, elbo_objective, iwae_objective


@pytest.mark.parametrize("settings", [
    dict(hidden=[16, 8], latent_dim=3),
    dict(architecture="linear", latent_dim=2, likelihood="gaussian", sigma="fixed:0.5"),
    dict(architecture="conv", channels=[8, 16], latent_dim=3, likelihood="logistic", levels=17),
    dict(model="ae", hidden=[8], latent_dim=2),
    dict(model="cvae", classes=3, hidden=[8], latent_dim=3, activation="tanh"),
    dict(model="hvae", kl="mc", hidden=[32], latent_dim=6, latent_dim2=3, hidden2=[16]),
    dict(likelihood="gaussian", sigma="per-dim", sigma_min=0.01, hidden=[4]),
])
def test_a_configs_model_is_the_library_model_it_names(settings):
    """build_model(Config) and the library's pieces (tests' make_vae) give the same module,
    parameter for parameter, from the same seed."""
    shape = (1, 8, 8)
    torch.manual_seed(0)
    ours = build_model(Config(**settings), shape)
    kwargs = {k: v for k, v in settings.items() if k not in ("model", "classes", "kl", "sigma")}
    if settings.get("model") in ("ae", "hvae"):
        kwargs["model"] = settings["model"]
    if settings.get("model") == "cvae":
        kwargs["num_classes"] = settings["classes"]
    if "sigma" in settings:
        kwargs["sigma"] = Config(**settings).sigma_value  # "fixed:0.5" is the library's 0.5
    torch.manual_seed(0)
    theirs = make_vae(shape, **kwargs)
    assert type(ours) is type(theirs)
    assert repr(ours) == repr(theirs)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_configs_objective_is_the_library_objective_with_its_settings():
    torch.manual_seed(0)
    model = make_vae((6,), [8], 2)
    x = torch.rand(5, 6).round()
    for config, objective in [
        (Config(beta=3.0, kl_warmup=10, samples=2),
         functools.partial(elbo_objective, beta=3.0, warmup=10.0, samples=2)),
        (Config(free_bits=0.5, kl="mc"), functools.partial(elbo_objective, free_bits=0.5, kl="mc")),
        (Config(objective="iwae", k=7, beta=2.0), functools.partial(iwae_objective, k=7, beta=2.0)),
    ]:
        batch = Batch(x, None, 2.5)
        torch.manual_seed(1)
        loss, terms = objective_for(config)(model, batch)
        torch.manual_seed(1)
        expected, expected_terms = objective(model, batch)
        torch.testing.assert_close(loss, expected)
        for key in expected_terms:
            torch.testing.assert_close(terms[key], expected_terms[key])


def test_a_configs_conv_model_refuses_shapes_the_strides_do_not_divide():
    with pytest.raises(VaekitError, match="divisible by 4"):
        build_model(Config(architecture="conv", channels=[8, 16]), (1, 10, 8))
    with pytest.raises(VaekitError, match=r"\[C, H, W\]"):
        build_model(Config(architecture="conv"), (64,))


def test_config_rejects_meaningless_combinations():
    with pytest.raises(VaekitError, match="--kl mc"):
        Config(model="hvae", kl="analytic").validate()
    Config(model="hvae").validate()  # kl auto: Monte Carlo where no closed form exists
    with pytest.raises(VaekitError, match="free_bits"):
        Config(objective="iwae", free_bits=0.5).validate()
    with pytest.raises(VaekitError, match="autoencoder"):
        Config(model="ae", objective="iwae").validate()
    with pytest.raises(VaekitError, match="k must be positive"):
        Config(k=0).validate()
    with pytest.raises(VaekitError, match="free_bits must be non-negative"):
        Config(free_bits=-1.0).validate()


def test_with_classes_reads_the_number_of_classes_from_the_labels():
    config = Config(model="cvae")
    assert with_classes(config, torch.tensor([0, 4, 2])).classes == 5
    assert with_classes(Config(), torch.tensor([0, 4])).classes == 0
    with pytest.raises(VaekitError, match="has none"):
        with_classes(config, None)
    with pytest.raises(VaekitError, match="run up to 4"):
        with_classes(Config(model="cvae", classes=3), torch.tensor([0, 4]))


def test_check_data_refuses_data_off_the_support():
    from vaekit.app.data import Dataset

    grid = Dataset((torch.arange(17.0) / 16)[:, None])
    check_data(grid, Config(likelihood="logistic", levels=17))
    with pytest.raises(VaekitError, match="--levels"):
        check_data(grid, Config(likelihood="logistic", levels=256))
    with pytest.raises(VaekitError, match=r"\[0, 1\]"):
        check_data(Dataset(torch.tensor([[0.0], [1.5]])), Config(likelihood="continuous-bernoulli"))
    check_data(Dataset(torch.tensor([[-4.0], [9.0]])), Config(likelihood="laplace"))


def test_progress_lines_count_down_a_time_budget_on_its_clock(capsys):
    """The time left under a time budget is the budget minus the training time, even when the
    plan's step count, made at another pace, says otherwise."""
    from types import SimpleNamespace

    from vaekit.app.runs import ProgressLines

    budget = schedules.TimeBudget(3600.0)
    budget.plan = {"budget": 3600.0, "total_steps": 10**9, "anchor_step": 0, "anchor_progress": 0.0, "replans": []}
    loop = SimpleNamespace(epochs=None, steps_done=0, total_steps=10**9, budget=budget, seconds=0.0,
                           history=SimpleNamespace(epochs=[]), stop_requested=False)
    lines = ProgressLines(every=0.0)
    lines.on_fit_start(loop)
    loop.steps_done, loop.seconds = 1000, 600.0
    lines.on_epoch_end(loop, {"epoch": 1, "train_elbo": -100.0})
    assert "about 50m 00s left" in capsys.readouterr().err
    # with epochs as a further limit, the earlier end is the one shown
    loop.epochs = 100
    lines.on_epoch_end(loop, {"epoch": 99, "train_elbo": -100.0})
    err = capsys.readouterr().err
    assert "left" in err and "50m 00s" not in err
