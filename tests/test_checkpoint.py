"""Checkpoints as the library writes them: every generator state, and the mid-epoch
checkpoint an interruption leaves (fit(..., out=...) on library pieces alone). Resume of the
app's runs, with real kills: test_resume.py; of a user's own modules: test_library.py."""

from __future__ import annotations

import json
import os
import random
import signal

import numpy as np
import pytest
import torch

from conftest import make_vae
from vaekit import checkpoint
from vaekit.errors import Interrupted
from vaekit.training import fit


@pytest.fixture(scope="module")
def rows() -> torch.Tensor:
    """400 grey rows of 12 features in [0, 1]."""
    return torch.from_numpy(np.random.default_rng(0).random((400, 12)).astype(np.float32))


def _fit(x: torch.Tensor, out, epochs: int):
    torch.manual_seed(3)
    model = make_vae((12,), [16], 2)
    fit(model, x[:360], validation=x[360:], epochs=epochs, batch_size=32, lr=3e-3, seed=3,
        dynamic_binarization=True, device="cpu", out=out)
    return model


def test_checkpoint_holds_every_generator_state(rows, tmp_path):
    # Training draws only from torch's generators (the global one, in a forked copy; the data
    # order; dynamic binarisation): numpy's and Python's are never touched, so these are all.
    np.random.seed(5)
    random.seed(5)
    numpy_before, python_before = np.random.get_state()[1].copy(), random.getstate()
    run = tmp_path / "run"
    model = _fit(rows, run, epochs=1)
    assert np.array_equal(np.random.get_state()[1], numpy_before) and random.getstate() == python_before
    ckpt = checkpoint.load(run)
    names = set(ckpt.tensors)
    assert {"rng.torch", "rng.order", "rng.draws"} <= names
    assert any(n.startswith("optimizer.0.exp_avg") for n in names)
    assert ckpt.meta["best"]["epoch"] == 1
    # restoring puts the generators exactly where the run left them
    expected = ckpt.tensors["rng.torch"].clone()
    from vaekit.devices import forked_rng

    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with forked_rng(torch.device("cpu"), seed=123):  # as fit does: the test's own state is kept
        state = checkpoint.restore(ckpt, model, optimizer)
        assert torch.equal(torch.get_rng_state(), expected)
    assert torch.equal(state.order.get_state(), ckpt.tensors["rng.order"])
    assert torch.equal(state.draws.get_state(), ckpt.tensors["rng.draws"])


def test_interrupt_in_process_writes_a_mid_epoch_checkpoint(rows, tmp_path, monkeypatch):
    import vaekit.training as training

    real = training._call_objective
    calls = [0]

    def loss_then_signal(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "_call_objective", loss_then_signal)
    with pytest.raises(Interrupted, match="the checkpoint holds epoch 1, step 3") as stopped:
        _fit(rows, tmp_path / "run", epochs=2)
    assert stopped.value.exit_code == 130
    in_epoch = checkpoint.load(tmp_path / "run").meta["in_epoch"]
    assert in_epoch["step"] == 3
    # the stopped session's time reached its checkpoint (issue 24 item 4)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["sessions_seconds"][0] >= in_epoch["seconds"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_run_json_records_each_sessions_real_time(rows, tmp_path):
    # issue 24 item 4: a session's time (start-up, validation, final evaluation included) is
    # at least its epochs' seconds; a resume appends its own session
    run = tmp_path / "run"
    _fit(rows, run, epochs=2)
    first = json.loads((run / "run.json").read_text())
    epochs = [json.loads(line)["seconds"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(first["sessions_seconds"]) == 1 and first["sessions_seconds"][0] >= sum(epochs)
    assert first["trained_with"] == [{"epoch": 0, "step": 0, "world_size": 1, "backend": None, "precision": "fp32"}]
    torch.manual_seed(3)
    fit(make_vae((12,), [16], 2), rows[:360], validation=rows[360:], epochs=3, batch_size=32, lr=3e-3, seed=3,
        dynamic_binarization=True, device="cpu", out=run, resume=True)
    second = json.loads((run / "run.json").read_text())
    epochs = [json.loads(line)["seconds"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(second["sessions_seconds"]) == 2 and second["sessions_seconds"][0] == first["sessions_seconds"][0]
    assert second["sessions_seconds"][1] >= epochs[2] and sum(second["sessions_seconds"]) >= sum(epochs)
    assert {k: v for k, v in second.items() if k != "sessions_seconds"} == \
        {k: v for k, v in first.items() if k not in ("sessions_seconds", "epochs")} | {"epochs": 3}


def test_resume_of_a_finished_run_with_its_budget_changes_nothing(rows, tmp_path):
    # issue 24 item 9: fit(resume=True) with the budget the run spent returns its History
    run = tmp_path / "run"
    _fit(rows, run, epochs=2)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir() if p.is_file()}
    history = fit(make_vae((12,), [16], 2), rows[:360], validation=rows[360:], epochs=2, batch_size=32, lr=3e-3,
                  seed=3, dynamic_binarization=True, device="cpu", out=run, resume=True)
    assert [r["epoch"] for r in history.epochs] == [1, 2] and history.best["epoch"] in (1, 2)
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir() if p.is_file()} == before
