"""Exact resume of the app's runs (`vaekit train --resume`, vaekit.app.runs.resume).

The resume checks really kill a training process (SIGKILL, at chosen instants: inside a
step, half-way through writing a checkpoint, between a complete temporary file and its
rename, during the final evaluation, and from outside at an arbitrary moment), resume it,
and compare the final weights byte for byte with a run never interrupted. The instants are
chosen by a small driver that wraps a few functions before calling the CLI, so vaekit itself
carries no test hooks. What a resume may change is the app's policy, tested in process.
(The checkpoint's content and the library's fit(..., resume=True): test_checkpoint.py.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from vaekit import checkpoint, rundir
from vaekit.app.config import Config
from vaekit.app.runs import load_config, resume, train
from vaekit.errors import VaekitError

SRC = Path(__file__).resolve().parents[1] / "src"

DRIVER = r'''
import os, signal, sys, time
import vaekit.evaluation
import vaekit.training

point, _, arg = os.environ.get("KILL_AT", "").partition(":")
calls = [0]


def nth(n):
    calls[0] += 1
    return calls[0] == int(n)


def die():
    os.kill(os.getpid(), signal.SIGKILL)


if point == "step":  # inside training step N, before its update
    real_loss = vaekit.training._call_objective

    def training_loss(*a, **k):
        if nth(arg):
            die()
        return real_loss(*a, **k)

    vaekit.training._call_objective = training_loss
elif point == "write":  # checkpoint write N: half its bytes in the temporary file, no rename
    real_fsync = os.fsync

    def fsync(fd):
        if ".checkpoint.safetensors." in os.readlink(f"/proc/self/fd/{fd}") and nth(arg):
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            die()
        real_fsync(fd)

    os.fsync = fsync
elif point == "rename":  # checkpoint write N complete and fsynced, not yet renamed
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith("checkpoint.safetensors") and nth(arg):
            die()
        real_replace(src, dst)

    os.replace = replace
elif point == "final":  # after the last epoch, during the final evaluation
    vaekit.evaluation.evaluate = lambda *a, **k: die()
elif point in ("SIGTERM", "SIGINT"):  # the signal arrives during step N
    real_loss = vaekit.training._call_objective

    def training_loss(*a, **k):
        if nth(arg):
            os.kill(os.getpid(), getattr(signal, point))
        return real_loss(*a, **k)

    vaekit.training._call_objective = training_loss
elif point == "slow":  # every step sleeps, so the test can kill from outside at leisure
    real_loss = vaekit.training._call_objective

    def training_loss(*a, **k):
        time.sleep(float(arg))
        return real_loss(*a, **k)

    vaekit.training._call_objective = training_loss

from vaekit.app.cli import main

sys.exit(main(sys.argv[1:]))
'''

SETTINGS = dict(hidden="16", latent_dim=2, epochs=4, batch_size=32, binarize="dynamic",
                lr=3e-3, threads=1, seed=3)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "grey.npy"
    np.save(path, np.random.default_rng(0).random((400, 12)).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("driver") / "driver.py"
    path.write_text(DRIVER)
    return path


def _args(settings: dict) -> list[str]:
    out = []
    for key, value in settings.items():
        out += [f"--{key.replace('_', '-')}", str(value)]
    return out


def _launch(driver: Path, args: list[str], kill_at: str = "", wait: bool = True):
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", KILL_AT=kill_at)
    command = [sys.executable, str(driver), *map(str, args)]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _train_cli(driver, data_file, out, kill_at="", **extra):
    settings = {**SETTINGS, **extra}
    args = ["train", "--data", data_file, "--out", out, "--quiet", "--no-figures", *_args(settings)]
    return _launch(driver, args, kill_at)


def _resume_cli(driver, out, kill_at="", *more):
    return _launch(driver, ["train", "--resume", out, "--quiet", "--no-figures", *more], kill_at)


def _finish(out):
    """The last resume, never killed: in this process."""
    return run_cli("train", "--resume", out, "--quiet", "--no-figures")


@pytest.fixture(scope="module")
def reference(driver, data_file, tmp_path_factory) -> Path:
    """The run never interrupted (checkpoints at epoch ends only)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    settings = {**SETTINGS, "checkpoint_minutes": 0}
    done = run_cli("train", "--data", data_file, "--out", out, "--quiet", "--no-figures", *_args(settings))
    assert done.returncode == 0, done.stderr
    return out


def _assert_same_run(run: Path, reference: Path) -> None:
    for name in (rundir.WEIGHTS, rundir.BEST, rundir.EVALUATION):
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name

    def rows(path):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rundir.read_metrics(path)]

    assert rows(run) == rows(reference)
    assert len(rows(run)) == SETTINGS["epochs"]
    assert not list(run.glob(".*.tmp")), "temporary files left behind"


@pytest.mark.slow
def test_sigkill_at_many_instants_then_resume_is_bit_identical(driver, data_file, reference, tmp_path):
    out = tmp_path / "run"  # 4 epochs of 12 steps
    # Epoch-end checkpoints only: killed at the rename of the second, metrics.jsonl is one
    # epoch ahead of the checkpoint; resuming must redo that epoch exactly once.
    first = _train_cli(driver, data_file, out, "rename:2", checkpoint_minutes=0)
    assert first.returncode == -signal.SIGKILL
    assert len(rundir.read_metrics(out)) == 2 and checkpoint.load(out).meta["epoch"] == 1
    # From here a checkpoint after every step (a budget setting, so it may change), so the
    # kills land mid-epoch: inside step 5 of epoch 2 ...
    inside = _resume_cli(driver, out, "step:5", "--checkpoint-minutes", "1e-9")
    assert inside.returncode == -signal.SIGKILL
    assert checkpoint.load(out).meta["in_epoch"]["step"] == 4
    # ... half-way through writing a checkpoint (the previous one must survive intact) ...
    torn = _resume_cli(driver, out, "write:3")
    assert torn.returncode == -signal.SIGKILL
    assert list(out.glob(".checkpoint.safetensors.*.tmp")), "the kill should leave a torn temporary"
    assert checkpoint.load(out).meta["in_epoch"]["step"] == 6
    # ... between a complete temporary file and its rename, and during the final evaluation.
    for kill_at in ("rename:5", "final"):
        killed = _resume_cli(driver, out, kill_at)
        assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr)
    assert checkpoint.load(out).meta["epoch"] == 4
    done = _finish(out)
    assert done.returncode == 0, done.stderr
    _assert_same_run(out, reference)


@pytest.mark.slow
def test_sigkill_from_outside_then_resume(driver, data_file, reference, tmp_path):
    out = tmp_path / "run"
    settings = {**SETTINGS, "checkpoint_minutes": 1e-9}
    args = ["train", "--data", data_file, "--out", out, "--quiet", "--no-figures", *_args(settings)]
    process = _launch(driver, args, "slow:0.02", wait=False)
    deadline = time.monotonic() + 120
    while len(rundir.read_metrics(out)) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.kill()
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    done = _finish(out)
    assert done.returncode == 0, done.stderr
    _assert_same_run(out, reference)


@pytest.mark.slow
def test_sigterm_finishes_the_step_checkpoints_and_exits_nonzero(driver, data_file, reference, tmp_path):
    out = tmp_path / "run"
    stopped = _train_cli(driver, data_file, out, "SIGTERM:20", checkpoint_minutes=0)
    assert stopped.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM; the checkpoint holds epoch 2, step 8." in stopped.stderr
    assert f"vaekit train --resume {out}" in stopped.stderr
    assert checkpoint.load(out).meta["in_epoch"]["step"] == 8  # step 20 finished, then saved
    done = _finish(out)
    assert done.returncode == 0, done.stderr
    _assert_same_run(out, reference)


# ---------------------------------------------------------------------- in-process checks
def _config(data_file, **extra) -> Config:
    values = {**SETTINGS, "hidden": [16], "data": str(data_file), **extra}
    return Config(**values).validate()


def test_more_epochs_on_resume_equals_the_longer_run(data_file, tmp_path):
    long = train(_config(data_file, epochs=4), tmp_path / "long", quiet=True, figures=False)
    short = train(_config(data_file, epochs=2), tmp_path / "short", quiet=True, figures=False)
    resume(short, {"epochs": 4}, quiet=True, figures=False)
    assert (short / rundir.WEIGHTS).read_bytes() == (long / rundir.WEIGHTS).read_bytes()
    assert load_config(short).epochs == 4


def test_resume_refuses_other_settings_and_lists_them(data_file, tmp_path):
    run = train(_config(data_file, epochs=1), tmp_path / "run", quiet=True, figures=False)
    before = (run / rundir.CHECKPOINT).read_bytes()
    with pytest.raises(VaekitError, match=r"\(latent_dim: 2 -> 3; seed: 3 -> 4\); only .*epochs"):
        resume(run, {"lr": 0.01, "latent_dim": 3, "seed": 4, "epochs": 2}, quiet=True, figures=False)
    assert (run / rundir.CHECKPOINT).read_bytes() == before
    assert load_config(run).epochs == 1


def test_a_new_learning_rate_on_resume_is_applied_and_recorded(data_file, tmp_path):
    """The one resume policy lets the rate change: the resumed epochs train at it (the
    metrics show it), the checkpoint's settings and the run's config record it."""
    run = train(_config(data_file, epochs=1), tmp_path / "run", quiet=True, figures=False)
    resume(run, {"lr": 0.01, "epochs": 2}, quiet=True, figures=False)
    assert [r["lr"] for r in rundir.read_metrics(run)] == [0.003, 0.01]
    assert checkpoint.load(run).settings["lr"] == 0.01 and load_config(run).lr == 0.01


def test_resume_refuses_fewer_epochs_than_done(data_file, tmp_path):
    run = train(_config(data_file, epochs=2), tmp_path / "run", quiet=True, figures=False)
    with pytest.raises(VaekitError, match="already trained 2 epochs"):
        resume(run, {"epochs": 1}, quiet=True, figures=False)


def test_resume_refuses_changed_data(data_file, tmp_path):
    run = train(_config(data_file, epochs=1), tmp_path / "run", quiet=True, figures=False)
    other = tmp_path / "other.npy"
    np.save(other, np.random.default_rng(1).random((400, 12)).astype(np.float32))
    config = json.loads((run / rundir.CONFIG).read_text())
    config["data"] = str(other)
    (run / rundir.CONFIG).write_text(json.dumps(config))
    with pytest.raises(VaekitError, match="data"):
        resume(run, {"data": str(other)}, quiet=True, figures=False)


def _snapshot(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()}


def test_resume_of_a_finished_run_says_so_and_changes_nothing(data_file, tmp_path):
    # issue 24 item 9
    run = train(_config(data_file, epochs=2), tmp_path / "run", quiet=True, figures=False)
    before = _snapshot(run)
    result = run_cli("train", "--resume", str(run))
    said = result.stdout + result.stderr
    assert result.returncode == 0, said
    assert f"{run} is finished: it trained 2 of 2 epochs" in said
    assert f"vaekit train --resume {run} --epochs 4" in said and "resuming" not in said
    assert _snapshot(run) == before
    resume(run, {"epochs": 3}, quiet=True, figures=False)  # a larger budget trains on
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2, 3]
