"""Binarisation protocols: dynamic (fresh per minibatch), static (one reproducible draw),
threshold (exact), and the counter-based draw underneath."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from vaekit.app.config import Binarization, Config
from vaekit.app.data import Dataset, load_data, run_splits
from vaekit.app.data.binarize import _splitmix64, bernoulli_draw, binarize_once, fingerprint
from vaekit.errors import VaekitError


def test_splitmix64_matches_the_reference_generator():
    # SplitMix64 seeded with 1234567: its first two outputs, the reference values on Rosetta
    # Code ("Pseudo-random numbers/Splitmix64"). The state advances by the golden gamma.
    states = np.array([1234567, 1234567 + 0x9E3779B97F4A7C15], np.uint64)
    assert _splitmix64(states).tolist() == [6457827717110365317, 3203168211198807973]


def test_draw_frequency_matches_probability():
    p = np.linspace(0, 1, 11, dtype=np.float32)[None].repeat(20000, 0)
    draw = bernoulli_draw(p, np.arange(len(p)), seed=5, stream=0)
    assert set(np.unique(draw)) <= {0.0, 1.0}
    freq = draw.mean(0)
    tolerance = 5 * np.sqrt(p[0] * (1 - p[0]) / len(p)) + 1e-6  # 5 standard errors per pixel
    assert np.all(np.abs(freq - p[0]) <= tolerance)
    assert freq[0] == 0.0 and freq[-1] == 1.0  # p = 0 and p = 1 are exact


def test_draw_depends_only_on_seed_stream_and_position():
    p = np.random.default_rng(0).random((50, 7)).astype(np.float32)
    whole = bernoulli_draw(p, np.arange(50), seed=1, stream=0)
    rows = np.array([31, 2, 17])
    np.testing.assert_array_equal(bernoulli_draw(p[rows], rows, seed=1, stream=0), whole[rows])
    assert not np.array_equal(bernoulli_draw(p, np.arange(50), seed=2, stream=0), whole)
    assert not np.array_equal(bernoulli_draw(p, np.arange(50), seed=1, stream=1), whole)


def test_threshold_is_exact():
    config = Config(data="digits", binarize="threshold:0.3", validation_fraction=0.0)
    grey = load_data("digits").train.x
    assert torch.equal(run_splits(config)["train"].x, (grey > 0.3).float())


def test_static_is_one_reproducible_draw_per_example():
    config = Config(data="digits", binarize="static", seed=3)
    a, b = run_splits(config), run_splits(config)
    for split in ("train", "validation"):
        assert torch.equal(a[split].x, b[split].x)
        assert set(a[split].x.unique().tolist()) == {0.0, 1.0}
    other = run_splits(dataclasses.replace(config, seed=4))
    assert not torch.equal(other["train"].x, a["train"].x)
    # drawn before the validation split: an example keeps its binary image in any split
    whole = run_splits(dataclasses.replace(config, validation_fraction=0.0))["train"].x
    from vaekit.app.data import split_validation

    _, val = split_validation(Dataset(torch.arange(len(whole))), 0.1, 3)
    assert torch.equal(a["validation"].x, whole[val.x])
    # an unbiased draw: total ones within 5 standard deviations of the total grey level
    grey = load_data("digits").train.x.double()
    sd = math.sqrt(float((grey * (1 - grey)).sum()))
    assert abs(float(whole.sum()) - float(grey.sum())) < 5 * sd


def test_dynamic_keeps_grey_training_data_and_fixed_evaluation_draws():
    config = Config(data="digits", binarize="dynamic", seed=0)
    a, b = run_splits(config), run_splits(config)
    assert not torch.equal(a["train"].x, a["train"].x.round())  # grey levels, drawn per batch
    assert torch.equal(a["validation"].x, b["validation"].x)
    assert set(a["validation"].x.unique().tolist()) == {0.0, 1.0}


def test_dynamic_draws_fresh_binary_images_every_minibatch():
    from vaekit.app.runs import build_model, objective_for
    from vaekit.training import fit

    seen = []
    config = Config(hidden=[4], latent_dim=2, batch_size=16, binarize="dynamic")
    real_objective = objective_for(config)

    def spy(model, batch):
        seen.append(batch.x.clone())
        return real_objective(model, batch)

    p = torch.linspace(0.05, 0.95, 16).reshape(1, 1, 4, 4)
    x = p.repeat(32, 1, 1, 1)  # every example the same grey image: row order cannot matter
    model = build_model(config, (1, 4, 4))
    fit(model, x, epochs=25, batch_size=config.batch_size, objective=spy, lr=config.lr, device="cpu",
        seed=0, dynamic_binarization=config.binarization.dynamic)
    assert len(seen) == 50
    assert len({batch.numpy().tobytes() for batch in seen}) == 50  # a fresh draw every time
    stack = torch.cat(seen)
    assert set(stack.unique().tolist()) == {0.0, 1.0}
    n = len(stack)
    freq = stack.mean(0)
    assert torch.all((freq - p[0]).abs() <= 5 * torch.sqrt(p[0] * (1 - p[0]) / n))


def test_binarising_values_outside_unit_interval_is_refused():
    data = Dataset(torch.tensor([[0.5, 1.5]]), name="odd")
    with pytest.raises(VaekitError, match=r"odd: Bernoulli binarisation needs values in \[0, 1\]"):
        binarize_once(data, Binarization("static"), 0, "train")
    assert binarize_once(data, Binarization("none"), 0, "train") is data


def test_fingerprint_tells_draws_apart():
    x = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert fingerprint(x) == fingerprint(x.clone())
    assert fingerprint(x) != fingerprint(x.flip(0))
