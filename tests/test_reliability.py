"""Bad input and hostile machines: every entry point answers with one clear message and a
non-zero exit, writes nothing half-way and loses nothing. One test per injected fault.

The CLI is called in-process (``vaekit.app.cli.main``) to keep this fast; an escaping exception
would fail the test, so "no traceback" is checked too. A few cases also run in a real
subprocess.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import vaekit
from conftest import full_disk_for, run_cli_subprocess
from vaekit import checkpoint, rundir
from vaekit.app.cli import main
from vaekit.app.config import Config
from vaekit.app.runs import load, load_config, resume, train
from vaekit.errors import VaekitError

TINY = ["--hidden", "16", "--latent-dim", "2", "--batch-size", "32", "--binarize", "dynamic",
        "--threads", "1", "--quiet", "--no-figures"]


class _Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _malicious_pickle(marker: Path) -> bytes:
    return pickle.dumps(_Payload(marker))


def fails(capsys, *args) -> str:
    """Run the CLI, expect exit status 2 and one ``error:`` line; return it."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: "), err
    assert "\n" not in err and "Traceback" not in err, err
    return err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A private copy of a trained run, free to damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


# ---------------------------------------------------------------------- settings
def test_mistyped_config_key_suggests_the_closest(capsys, grey, tmp_path):
    (tmp_path / "c.toml").write_text("latent_dims = 3\n")
    err = fails(capsys, "train", "--data", grey, "--config", tmp_path / "c.toml", "-o", tmp_path / "o", *TINY)
    assert "unknown setting 'latent_dims'; did you mean 'latent_dim'?" in err
    assert not (tmp_path / "o").exists()


def test_config_value_of_the_wrong_type(capsys, grey, tmp_path):
    (tmp_path / "c.toml").write_text('epochs = "many"\n')
    err = fails(capsys, "train", "--data", grey, "--config", tmp_path / "c.toml", "-o", tmp_path / "o", *TINY)
    assert "'epochs' expects int" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content", [b"epochs = 3\nlr = \n", b"\xff\xfe\x00garbage"])
def test_truncated_or_binary_config_file(capsys, grey, tmp_path, content):
    (tmp_path / "c.toml").write_bytes(content)
    err = fails(capsys, "train", "--data", grey, "--config", tmp_path / "c.toml", "-o", tmp_path / "o", *TINY)
    assert "is not valid TOML" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--latent-dim", "-1", "latent_dim must be positive"),
    ("--hidden", "0", "hidden must be positive"),
    ("--batch-size", "0", "batch_size must be positive"),
    ("--lr", "0", "lr must be positive"),
    ("--lr", "-0.1", "lr must be positive"),
    ("--samples", "0", "samples must be positive"),
    ("--epochs", "-1", "epochs must be non-negative"),
    ("--validation-fraction", "1", "validation_fraction must be in [0, 1)"),
    ("--checkpoint-every", "-1", "checkpoint_every must be non-negative"),
    ("--max-bad-steps", "0", "max_bad_steps must be positive"),
    ("--seed", "-1", "seed must be an integer in [0, 2^32)"),
    ("--sigma", "fixed:-1", "needs a positive number"),
])
def test_out_of_range_values(capsys, grey, tmp_path, flag, value, message):
    err = fails(capsys, "train", "--data", grey, "--out", tmp_path / "o", *TINY, flag, value)
    assert message in err
    assert not (tmp_path / "o").exists()


def test_python_api_config_of_the_wrong_type(grey, tmp_path):
    with pytest.raises(VaekitError, match="setting 'latent_dim' expects int, got '2'"):
        train(Config(data=str(grey), latent_dim="2"), tmp_path / "o", quiet=True)
    assert not (tmp_path / "o").exists()


def test_evaluation_samples_below_one(capsys, run):
    assert "--samples must be at least 1" in fails(capsys, "evaluate", run, "--samples", "0")


# ---------------------------------------------------------------------- data
def _data_case(capsys, tmp_path, name: str, array, *extra: str) -> str:
    path = tmp_path / name
    if name.endswith(".npz"):
        np.savez(path, x=array)
    else:
        np.save(path, array, allow_pickle=True)
    err = fails(capsys, "train", "--data", path, "--out", tmp_path / "o", *TINY, *extra)
    assert not (tmp_path / "o").exists()
    return err


def test_data_with_nan(capsys, tmp_path):
    x = np.random.default_rng(0).random((50, 4)).astype(np.float32)
    x[7, 2] = np.nan
    assert "1 value(s) are NaN or infinite (first in row 7)" in _data_case(capsys, tmp_path, "d.npy", x)


def test_data_with_inf(capsys, tmp_path):
    x = np.random.default_rng(0).random((50, 4))
    x[3, 0] = np.inf
    assert "NaN or infinite" in _data_case(capsys, tmp_path, "d.npz", x)


def test_data_of_the_wrong_shape(capsys, tmp_path):
    assert "must be shaped [N, D]" in _data_case(capsys, tmp_path, "d.npy", np.zeros(10, np.float32))


def test_data_of_the_wrong_dtype(capsys, tmp_path):
    assert "must be numeric" in _data_case(capsys, tmp_path, "d.npy", np.array([["a", "b"]] * 5))


def test_empty_dataset(capsys, tmp_path):
    assert "empty" in _data_case(capsys, tmp_path, "d.npy", np.zeros((0, 4), np.float32))


def test_bernoulli_data_outside_unit_interval(capsys, tmp_path):
    x = np.random.default_rng(0).random((50, 4)).astype(np.float32) * 255
    err = _data_case(capsys, tmp_path, "d.npy", x, "--binarize", "none", "--likelihood", "bernoulli")
    assert "the bernoulli likelihood needs data in [0, 1]" in err and "--likelihood gaussian" in err


def test_truncated_data_file(capsys, tmp_path):
    path = tmp_path / "d.npy"
    np.save(path, np.random.default_rng(0).random((50, 4)).astype(np.float32))
    path.write_bytes(path.read_bytes()[:100])
    err = fails(capsys, "train", "--data", path, "--out", tmp_path / "o", *TINY)
    assert "not a readable numpy file" in err
    assert not (tmp_path / "o").exists()


def test_object_array_with_a_malicious_pickle_is_never_unpickled(capsys, tmp_path):
    marker = tmp_path / "pwned"
    array = np.empty((2, 2), dtype=object)
    array[0, 0] = _Payload(marker)
    err = _data_case(capsys, tmp_path, "d.npy", array)
    assert "pickled data" in err
    assert not marker.exists()


# ---------------------------------------------------------------------- run directories
def test_truncated_weights(capsys, run, tmp_path):
    (run / rundir.WEIGHTS).write_bytes((run / rundir.WEIGHTS).read_bytes()[:-40])
    err = fails(capsys, "sample", run, "-o", tmp_path / "s.npy")
    assert "model.safetensors (the weights) is not a readable safetensors file" in err
    assert not (tmp_path / "s.npy").exists()


def test_edited_weights_fail_their_checksum(capsys, run, tmp_path):
    data = bytearray((run / rundir.WEIGHTS).read_bytes())
    data[-5] ^= 0x01  # one bit of one weight
    (run / rundir.WEIGHTS).write_bytes(bytes(data))
    err = fails(capsys, "sample", run, "-o", tmp_path / "s.npy")
    assert "does not match its checksum: the file was damaged or edited" in err
    assert not (tmp_path / "s.npy").exists()


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_crafted_weights_file_runs_no_code(capsys, run, tmp_path, kind):
    marker = tmp_path / "pwned"
    if kind == "pickle":
        (run / rundir.WEIGHTS).write_bytes(_malicious_pickle(marker))
    else:
        torch.save({"x": _Payload(marker)}, run / rundir.WEIGHTS)
    for command in (["sample", run, "-o", tmp_path / "s.npy"], ["evaluate", run], ["plot", run]):
        err = fails(capsys, *command)
        assert "not a readable safetensors file" in err
    assert not marker.exists()


def test_crafted_weights_file_in_a_real_process(run, tmp_path):
    marker = tmp_path / "pwned"
    (run / rundir.WEIGHTS).write_bytes(_malicious_pickle(marker))
    done = run_cli_subprocess("evaluate", run)  # a real process: no code runs there either
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert not marker.exists()


def test_truncated_config_json(capsys, run):
    (run / rundir.CONFIG).write_text((run / rundir.CONFIG).read_text()[:50])
    assert "the run's config is not valid JSON" in fails(capsys, "evaluate", run)


def test_edited_config_json_unknown_key(capsys, run):
    values = json.loads((run / rundir.CONFIG).read_text())
    values["__class__"] = "os.system"
    (run / rundir.CONFIG).write_text(json.dumps(values))
    assert "unknown setting '__class__'" in fails(capsys, "evaluate", run)


def test_config_edited_to_another_architecture(capsys, run):
    values = json.loads((run / rundir.CONFIG).read_text())
    values["hidden"] = [32]
    (run / rundir.CONFIG).write_text(json.dumps(values))
    err = fails(capsys, "evaluate", run)
    assert "weights do not match the model" in err and "the model needs (32, 12)" in err


def test_run_from_an_incompatible_format(capsys, run):
    info = json.loads((run / rundir.INFO).read_text())
    info["format"] = 99
    (run / rundir.INFO).write_text(json.dumps(info))
    assert "run format 99 is not one this vaekit reads (1)" in fails(capsys, "sample", run)


def test_edited_metrics_file(capsys, run):
    with open(run / rundir.METRICS, "a") as f:
        f.write('{"epoch": 3, "train_elb\n')
    assert "metrics.jsonl: line 3 is not valid JSON" in fails(capsys, "plot", run)


def test_missing_run_directory(capsys, tmp_path):
    assert "run directory not found" in fails(capsys, "evaluate", tmp_path / "nowhere")
    assert "run directory not found" in fails(capsys, "train", "--resume", tmp_path / "nowhere")


# ---------------------------------------------------------------------- checkpoints
def _rewrite_checkpoint(run: Path, edit) -> None:
    ckpt = checkpoint.load(run)
    tensors, meta = dict(ckpt.tensors), json.loads(json.dumps(ckpt.meta))
    edit(tensors, meta)
    (run / rundir.CHECKPOINT).write_bytes(rundir.encode_tensors(tensors, meta))


def test_truncated_checkpoint(capsys, run):
    (run / rundir.CHECKPOINT).write_bytes((run / rundir.CHECKPOINT).read_bytes()[:1000])
    before = _snapshot(run)
    err = fails(capsys, "train", "--resume", run, "--epochs", "3", "--quiet")
    assert "checkpoint.safetensors (the checkpoint) is not a readable safetensors file" in err
    assert _snapshot(run) == before


def test_edited_checkpoint_fails_its_checksum(capsys, run):
    data = bytearray((run / rundir.CHECKPOINT).read_bytes())
    data[-100] ^= 0x10
    (run / rundir.CHECKPOINT).write_bytes(bytes(data))
    before = _snapshot(run)
    assert "does not match its checksum" in fails(capsys, "train", "--resume", run, "--epochs", "3")
    assert _snapshot(run) == before


def test_checkpoint_from_an_incompatible_version(capsys, run):
    _rewrite_checkpoint(run, lambda t, m: m.update(format=2, vaekit_version="9.0"))
    before = _snapshot(run)
    err = fails(capsys, "train", "--resume", run, "--epochs", "3")
    assert "checkpoint format 2 (written by vaekit 9.0) is not the one this vaekit" in err
    assert _snapshot(run) == before


def test_checkpoint_of_another_architecture(capsys, run):
    def widen(tensors, meta):
        meta["config"]["hidden"] = [8]

    _rewrite_checkpoint(run, widen)
    before = _snapshot(run)
    err = fails(capsys, "train", "--resume", run, "--epochs", "3")
    assert "settings differ from the ones its checkpoint was trained with (hidden: [8] -> [16])" in err
    assert _snapshot(run) == before


def test_checkpoint_tensors_that_do_not_fit(capsys, run):
    def shrink(tensors, meta):
        tensors["model.encoder.0.weight"] = tensors["model.encoder.0.weight"][:, :3].contiguous()

    _rewrite_checkpoint(run, shrink)
    before = _snapshot(run)
    err = fails(capsys, "train", "--resume", run, "--epochs", "3")
    assert "weights do not match the model" in err and "has shape (16, 3), the model needs (16, 12)" in err
    assert _snapshot(run) == before


def test_crafted_checkpoint_runs_no_code(capsys, run, tmp_path):
    marker = tmp_path / "pwned"
    (run / rundir.CHECKPOINT).write_bytes(_malicious_pickle(marker))
    assert "not a readable safetensors file" in fails(capsys, "train", "--resume", run, "--epochs", "3")
    assert not marker.exists()


def test_resume_without_a_checkpoint(capsys, run):
    (run / rundir.CHECKPOINT).unlink()
    assert "has no checkpoint.safetensors to resume from" in fails(capsys, "train", "--resume", run)


# ---------------------------------------------------------------------- output directories
def test_output_directory_holding_a_run_is_refused(capsys, run, grey):
    before = _snapshot(run)
    err = fails(capsys, "train", "--data", grey, "--out", run, *TINY)
    assert "already holds a run" in err and "--overwrite" in err and "--resume" in err
    assert _snapshot(run) == before


def test_overwrite_replaces_only_the_runs_files(capsys, run, grey):
    (run / "notes.txt").write_text("mine")
    (run / "latent.png").write_bytes(b"old figure")
    assert main(["train", "--data", str(grey), "--out", str(run), "--overwrite", "--epochs", "1", *TINY]) == 0
    assert (run / "notes.txt").read_text() == "mine"
    assert not (run / "latent.png").exists()  # a stale figure of the old run would mislead
    assert len(rundir.read_metrics(run)) == 1


def test_output_under_a_file(capsys, grey, tmp_path):
    (tmp_path / "file").write_text("x")
    err = fails(capsys, "train", "--data", grey, "--out", tmp_path / "file" / "run", *TINY)
    assert "cannot create" in err and "Not a directory" in err


def test_unwritable_output_directory(capsys, grey, tmp_path, monkeypatch):
    # Tests may run as root, for whom chmod blocks nothing: refuse creation at the OS call.
    real_open = os.open

    def no_permission(path, flags, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "locked")) and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_permission)
    (tmp_path / "locked").mkdir()
    err = fails(capsys, "train", "--data", grey, "--out", tmp_path / "locked", *TINY)
    assert "cannot write to" in err and "Permission denied" in err
    assert list((tmp_path / "locked").iterdir()) == []


def _resume_on_a_full_disk(run, monkeypatch, name: str) -> str:
    """The one-line error of resuming ``run`` while writing ``name`` finds the disk full."""
    full_disk_for(monkeypatch, name)
    with pytest.raises(VaekitError) as failed:
        resume(run, {"epochs": 3}, quiet=True, figures=False)
    return str(failed.value)


def test_full_disk_during_a_checkpoint_keeps_the_last_one(run, grey, tmp_path, monkeypatch):
    before = (run / rundir.CHECKPOINT).read_bytes()
    message = _resume_on_a_full_disk(run, monkeypatch, rundir.CHECKPOINT)
    assert "No space left on device" in message and "is unchanged" in message
    assert f"vaekit train --resume {run}" in message
    assert (run / rundir.CHECKPOINT).read_bytes() == before
    assert not list(run.glob(".*.tmp"))
    monkeypatch.undo()  # space freed: the run carries on and loses nothing
    resume(run, {"epochs": 3}, quiet=True, figures=False)
    config = load_config(run)
    straight = train(config, tmp_path / "straight", quiet=True, figures=False)
    assert (run / rundir.WEIGHTS).read_bytes() == (straight / rundir.WEIGHTS).read_bytes()


def test_full_disk_for_the_weights_says_how_to_continue(run, monkeypatch):
    """Issue 24 item 19: the weights' write failing on a full disk says the old file is unchanged
    and how to go on once there is room."""
    message = _resume_on_a_full_disk(run, monkeypatch, rundir.WEIGHTS)
    assert "No space left on device" in message and "model.safetensors" in message
    assert f"vaekit train --resume {run}" in message


# The files a run writes before its first step (the weights come at the end of an epoch).
@pytest.mark.parametrize("name", [rundir.CONFIG, rundir.DATA, rundir.INFO, rundir.METRICS])
def test_full_disk_when_training_starts_leaves_no_half_run(capsys, grey, tmp_path, monkeypatch, name):
    full_disk_for(monkeypatch, name)
    err = fails(capsys, "train", "--data", grey, "--out", tmp_path / "o", *TINY)
    assert "No space left on device" in err
    assert list((tmp_path / "o").iterdir()) == []


def test_full_disk_mid_write_leaves_no_half_written_output(capsys, run, tmp_path, monkeypatch):
    real_fdopen = os.fdopen

    class HalfThenFull:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: HalfThenFull(real_fdopen(fd, *a, **k)))
    err = fails(capsys, "sample", run, "-o", tmp_path / "s.npy")
    assert "No space left on device" in err
    assert list(tmp_path.glob("*s.npy*")) == []


# ---------------------------------------------------------------------- numerical faults
def _config(grey, **extra) -> Config:
    return Config(data=str(grey), hidden=[16], latent_dim=2, batch_size=32, binarize="dynamic",
                  threads=1, **extra).validate()


def _one_epoch(model, x, config: Config, optimizer=None):
    """One training epoch of ``model`` on ``x`` with the config's objective and settings;
    the epoch's metrics record (``train_skipped_steps``, ``train_logvar_clamped``, ...)."""
    from vaekit.app.runs import objective_for
    from vaekit.training import fit

    history = fit(model, x, epochs=1, batch_size=config.batch_size, objective=objective_for(config),
                  optimizer=optimizer, lr=config.lr, device="cpu", seed=config.seed,
                  dynamic_binarization=config.binarization.dynamic,
                  guards=vaekit.Guards(max_bad_steps=config.max_bad_steps))
    return history[0]


def _optimizer(model, config: Config):
    """The optimiser training builds for ``config`` (Adam, the config's lr and weight decay)."""
    from vaekit.start import make_optimizer

    return make_optimizer(model, None, config.lr, config.weight_decay, torch.device("cpu"))


def test_non_finite_steps_are_skipped_and_counted(grey, tmp_path, monkeypatch):
    import vaekit.training as training

    real = training._call_objective
    calls = [0]

    def sometimes_nan(objective, model, batch):
        calls[0] += 1
        loss, terms = real(objective, model, batch)
        return (loss * float("nan"), terms) if calls[0] in (2, 3, 11) else (loss, terms)

    monkeypatch.setattr(training, "_call_objective", sometimes_nan)
    run = train(_config(grey, epochs=2), tmp_path / "run", quiet=True, figures=False)
    rows = rundir.read_metrics(run)
    assert [r["train_skipped_steps"] for r in rows] == [2, 1]  # 9 steps per epoch
    assert all(np.isfinite(r["train_elbo"]) for r in rows)
    model = load(run)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_skipped_step_leaves_weights_and_optimiser_untouched(grey):
    config = _config(grey, epochs=1)
    from vaekit.app.data import run_splits
    from vaekit.app.runs import build_model

    x = run_splits(config)["train"].x[:32]
    model = build_model(config, x.shape[1:])
    optimizer = _optimizer(model, config)
    with torch.no_grad():
        model.decoder[0].weight[0, 0] = float("inf")  # every loss now non-finite
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # the only step is skipped; a run that made no update at all then ends in an error
    with pytest.raises(VaekitError, match="made no update: all 1 steps had a non-finite"):
        _one_epoch(model, x, config, optimizer)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert optimizer.state_dict()["state"] == {}


def test_too_many_bad_steps_stop_with_advice_and_keep_the_checkpoint(capsys, grey, tmp_path):
    # Gaussian data on a scale of 1e30: the squared error overflows float32 at once.
    huge = tmp_path / "huge.npy"
    np.save(huge, np.random.default_rng(0).random((300, 12)).astype(np.float32) * 1e30)
    out = tmp_path / "o"
    err = fails(capsys, "train", "--data", huge, "--likelihood", "gaussian", "--binarize", "none",
                "--out", out, "--max-bad-steps", "5", "--hidden", "16", "--batch-size", "32", "--quiet",
                "--no-figures")
    assert "5 steps in a row had a non-finite loss or gradient" in err
    assert "learning rate too high (lr = 0.001)" in err and "σ_G floor too small (sigma_min = 0.001)" in err
    assert "outside [0, 1]" in err
    assert "No checkpoint had been written yet" in err
    assert rundir.read_metrics(out) == []


def test_bad_steps_keep_the_last_good_checkpoint(run, monkeypatch):
    import vaekit.training as training

    before = (run / rundir.CHECKPOINT).read_bytes()
    def nan_loss(objective, model, batch):
        return sum(p.sum() for p in model.parameters()) * float("nan"), {}

    monkeypatch.setattr(training, "_call_objective", nan_loss)
    with pytest.raises(VaekitError, match="The last good checkpoint is kept in"):
        resume(run, {"epochs": 3, "max_bad_steps": 4}, quiet=True, figures=False)
    assert (run / rundir.CHECKPOINT).read_bytes() == before


def test_clamped_log_variances_are_counted(grey, tmp_path):
    config = _config(grey, epochs=1)
    from vaekit.app.data import run_splits
    from vaekit.app.runs import build_model
    from vaekit.model import LOGVAR_MAX

    x = run_splits(config)["train"].x
    model = build_model(config, x.shape[1:])
    with torch.no_grad():  # the log-variance half of the encoder's output starts far above 20
        model.encoder[-1].bias[config.latent_dim :] = 10 * LOGVAR_MAX
    stats = _one_epoch(model, x, config, _optimizer(model, config))
    # the clamp passes no gradient, so every entry stays clamped: all N x latent_dim of them
    assert stats["train_logvar_clamped"] == len(x) * config.latent_dim
    assert model.encode(x).variance.max() <= np.exp(LOGVAR_MAX) * (1 + 1e-6)


def test_a_run_whose_every_step_was_skipped_is_an_error_not_a_nan_result(capsys, tmp_path):
    # fewer steps in the whole run than --max-bad-steps: the old loop exited 0 with NaNs
    huge = tmp_path / "huge.npy"
    np.save(huge, np.random.default_rng(0).random((60, 12)).astype(np.float32) * 1e30)
    out = tmp_path / "o"
    err = fails(capsys, "train", "--data", huge, "--likelihood", "gaussian", "--binarize", "none", "--out", out,
                "--max-bad-steps", "50", "--epochs", "2", "--batch-size", "32", "--hidden", "8", "-q", "--no-figures")
    assert "training made no update: all 4 steps had a non-finite loss or gradient" in err
    assert "learning rate too high" in err
    assert not (out / "evaluation.json").exists()
