"""The CPU hour's levers in the library (issue 26): a compiled objective, bf16 where the CPU
lacks it, and a run that changes precision when it is resumed on another machine."""

from __future__ import annotations

import functools
import json
import warnings

import numpy as np
import pytest
import torch

from conftest import make_vae
from vaekit import devices, noise
from vaekit.devices import CompiledObjective, auto_compile, warn_emulated_bf16
from vaekit.model import KeyedNormal
from vaekit.objectives import Batch, elbo_objective, kl_weight
from vaekit.start import describe
from vaekit.training import fit


@pytest.fixture(scope="module")
def rows() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(1).random((300, 12)).astype(np.float32))


def test_kl_weight_takes_a_tensor_position_and_gives_the_float_rule():
    for t in (0.0, 0.3, 2.5, 10.0, 14.0):
        as_tensor = kl_weight(2.0, 10.0, torch.tensor(t, dtype=torch.float64))
        assert torch.is_tensor(as_tensor) and as_tensor.dim() == 0
        assert float(as_tensor) == pytest.approx(kl_weight(2.0, 10.0, t), abs=1e-12)
    assert kl_weight(2.0, 0.0, torch.tensor(3.0)) == 2.0  # no warm-up: beta, as a float


def test_a_compiled_objective_computes_the_eager_one_and_compiles_once_under_warm_up(rows):
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = make_vae((12,), [16], 3, activation="tanh")
    eager = functools.partial(elbo_objective, warmup=5.0)
    compiled = CompiledObjective(eager)
    x = rows[:40].round()
    before = counters["stats"]["unique_graphs"]
    for step in range(4):  # epochs_done changes every step: a float would recompile each time
        batch = Batch(x, None, 0.37 * step)
        torch.manual_seed(step)
        loss_e, terms_e = eager(model, batch)
        torch.manual_seed(step)
        loss_c, terms_c = compiled(model, batch)
        assert torch.allclose(loss_c, loss_e, rtol=1e-5, atol=1e-5)
        for key in ("reconstruction", "kl", "elbo"):
            assert torch.allclose(terms_c[key], terms_e[key], rtol=1e-5, atol=1e-4)
    assert compiled.failed is None
    assert counters["stats"]["unique_graphs"] - before == 1
    assert not counters["graph_break"]
    # the run record and a resume see the objective it compiles
    assert describe(compiled) == describe(eager)


def test_the_elbo_compiles_to_one_graph_inside_a_training_steps_keyed_noise(rows):
    """Fresh KL types and the keyed stream active, as in the training loop: each of them broke
    the graph (torch.distributions' KL lookup; the keyed draw from a torch.Generator), and a
    split graph ran no faster than the eager objective."""
    from torch._dynamo.utils import counters

    class Dim12Normal(KeyedNormal):  # a KL pair torch has not looked up yet, drawing keyed noise
        pass

    model = make_vae((12,), [16], 3)
    encode = model.encode

    def fresh_encode(x, *args):
        q = encode(x, *args)
        return torch.distributions.Independent(Dim12Normal(q.base_dist.loc, q.base_dist.scale), 1)

    model.encode = fresh_encode
    compiled = CompiledObjective(elbo_objective)
    x = rows[:40].round()
    stream = noise.Stream(0, torch.device("cpu"))
    counters.clear()
    losses = []
    for step in range(4):
        with stream.step(step, 40, slice(None)):
            loss, _ = compiled(model, Batch(x, None, float(step)))
        losses.append(float(loss))
    assert compiled.failed is None and all(np.isfinite(losses))
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1


def test_a_failing_compile_warns_once_and_trains_on_eagerly(rows, monkeypatch):
    def broken(fn, **kwargs):
        def call(*args, **kw):
            raise torch._dynamo.exc.BackendCompilerFailed(lambda *a: None, RuntimeError("no C++ compiler"), None)
        return call

    monkeypatch.setattr(torch, "compile", broken)
    objective = CompiledObjective(elbo_objective)
    model = make_vae((12,), [16], 2)
    batch = Batch(rows[:20].round(), None, 0.0)
    objective(model, batch)  # the first call runs eagerly
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        loss, _ = objective(model, batch)
    assert torch.isfinite(loss) and objective.failed.startswith("BackendCompilerFailed")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: no second warning
        objective(model, batch)


def test_a_users_error_inside_a_compiled_objective_is_not_hidden(rows):
    def wrong(model, batch):
        raise ValueError("my objective is wrong")

    with pytest.raises(ValueError, match="my objective is wrong"):
        CompiledObjective(wrong)(make_vae((12,), [16], 2), Batch(rows[:8], None, 0.0))


def test_auto_compile_is_on_for_bf16_on_a_cpu_with_bf16_units_and_a_compiler_only(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "cpu_compiler", lambda: "g++")
    monkeypatch.setattr(devices, "cpu_bf16_features", lambda: ["amx_bf16", "avx512_bf16"])
    assert auto_compile(cpu, "bf16")[0] is True
    monkeypatch.setattr(devices, "cpu_bf16_features", lambda: ["avx512_bf16"])
    on, why = auto_compile(cpu, "bf16")
    assert on is True and "avx512_bf16" in why
    monkeypatch.setattr(devices, "cpu_bf16_features", lambda: [])  # bf16 asked for on a CPU that emulates it
    on, why = auto_compile(cpu, "bf16")
    assert on is False and "bf16 units" in why
    monkeypatch.setattr(devices, "cpu_bf16_features", lambda: ["amx_bf16"])
    on, why = auto_compile(cpu, "fp32")
    assert on is False and "fp32" in why
    assert auto_compile(torch.device("cuda"), "bf16")[0] is False
    monkeypatch.setattr(devices, "cpu_compiler", lambda: None)
    on, why = auto_compile(cpu, "bf16")
    assert on is False and "compiler" in why


def test_bf16_on_a_cpu_without_bf16_units_warns(monkeypatch):
    monkeypatch.setattr(devices, "cpu_bf16_features", lambda: [])
    with pytest.warns(RuntimeWarning, match="emulated"):
        warn_emulated_bf16(torch.device("cpu"), "bf16")
    monkeypatch.setattr(devices, "cpu_bf16_features", lambda: ["avx512_bf16"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_emulated_bf16(torch.device("cpu"), "bf16")
        warn_emulated_bf16(torch.device("cpu"), "fp32")


def test_a_bf16_run_resumes_in_fp32_and_run_json_says_so(rows, tmp_path, monkeypatch):
    # a run started in bf16 on a CPU with bf16 units goes on in fp32 on one without
    monkeypatch.setattr(devices, "cpu_bf16_features", lambda: ["amx_bf16"])
    out = tmp_path / "run"

    def train(epochs: int, precision: str):
        torch.manual_seed(3)
        model = make_vae((12,), [16], 2)
        return fit(model, rows[:270], validation=rows[270:], epochs=epochs, batch_size=30, seed=3,
                   dynamic_binarization=True, device="cpu", precision=precision, out=out, resume=epochs > 2)

    train(2, "bf16")
    history = train(4, "fp32")
    assert [m["epoch"] for m in history.epochs][-1] == 4
    info = json.loads((out / "run.json").read_text())
    assert info["precision"] == "fp32"
    assert [(s["epoch"], s["precision"]) for s in info["trained_with"]] == [(0, "bf16"), (2, "fp32")]
