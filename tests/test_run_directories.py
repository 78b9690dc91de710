"""Run directories under stress (issue 12): a replaced run is never lost, one writer at a
time, folders that are not runs are left alone, every file goes through the atomic path,
runs received from someone else cannot hang, exhaust memory or reach a server of their
author's choosing, and what killed writers leave behind is cleaned up.

Where an item is about processes or signals, real ``vaekit`` processes are started and
killed (SIGKILL); the instants are chosen by a small driver that wraps a few functions
before calling the CLI, so vaekit itself carries no test hooks.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

import vaekit
from conftest import SRC, full_disk_for, run_cli
from vaekit import rundir
from vaekit.app.cli import main
from vaekit.app.config import Config
from vaekit.app.runs import build_model
from vaekit.errors import VaekitError

TINY = ["--hidden", "16", "--latent-dim", "2", "--batch-size", "32", "--binarize", "dynamic",
        "--threads", "1", "--quiet", "--no-figures"]

DRIVER = r'''
import os, signal, sys, time
import vaekit.training

point, _, arg = os.environ.get("KILL_AT", "").partition(":")


def die():
    os.kill(os.getpid(), signal.SIGKILL)


if point == "fsync":  # killed while writing a file whose temporary name holds ARG (half of it written)
    real_fsync = os.fsync

    def fsync(fd):
        if arg in os.readlink(f"/proc/self/fd/{fd}"):
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            die()
        real_fsync(fd)

    os.fsync = fsync
elif point == "pause":  # after ARG training steps, wait (until killed): time for a test to act
    real_loss = vaekit.training._call_objective
    steps = [0]

    def training_loss(*a, **k):
        steps[0] += 1
        while steps[0] > int(arg):
            time.sleep(1)
        return real_loss(*a, **k)

    vaekit.training._call_objective = training_loss

from vaekit.app.cli import main

sys.exit(main(sys.argv[1:]))
'''

LOCK, CURVE = ".vaekit-lock", "likelihood_curve.png"  # the writer's lock file; evaluate --curve's figure
MEMORY_CAP = 8 * 1024**3  # address space of a CLI process a test expects to stay small


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("driver") / "driver.py"
    path.write_text(DRIVER)
    return path


def launch(driver: Path, *args, kill_at: str = "", wait: bool = True, cwd: Path | None = None,
           env: dict | None = None, timeout: float = 300):
    """``vaekit ARGS`` in a real process (through the driver), its address space capped so
    that a regression cannot take the machine's memory with it."""
    environment = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", KILL_AT=kill_at, **(env or {}))
    command = [sys.executable, str(driver), *map(str, args)]

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    if not wait:
        return subprocess.Popen(command, env=environment, cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=cap)
    return subprocess.run(command, env=environment, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=cap)


def fails(capsys, *args) -> str:
    """Run the CLI in-process, expect exit status 2 and one ``error:`` line; return it."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def one_line_error(done) -> str:
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` but vaekit's lock file (which a killed writer leaves behind)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != LOCK}


def siblings(run: Path) -> list[str]:
    """Hidden folders a replacement left next to ``run``."""
    return sorted(p.name for p in run.parent.iterdir() if p.name.startswith(f".{run.name}.vaekit-"))


def wait_for(condition, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def background():
    """Processes a test starts and does not wait for: killed when it ends, whatever happened."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


@pytest.fixture
def old_run(trained, tmp_path) -> Path:
    """A private copy of a finished run, with what a user adds later: an evaluation, the
    likelihood curve, a figure and notes of their own."""
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    (run / "evaluation-test.json").write_text('{"log_likelihood": -1.0}\n')
    (run / CURVE).write_bytes(b"old curve")
    (run / "samples.png").write_bytes(b"old figure")
    (run / "notes.txt").write_text("mine")
    return run


# ---------------------------------------------------------------------- 1. --overwrite never loses the old run
def test_overwrite_failing_before_training_starts_keeps_the_old_run(capsys, old_run, grey, monkeypatch):
    before = snapshot(old_run)
    real_fsync = os.fsync

    def full_disk_at_data_json(fd):  # the new run's data record cannot be written
        if ".data.json." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk_at_data_json)
    err = fails(capsys, "train", "--data", grey, "--out", old_run, "--overwrite", "--epochs", "1", *TINY)
    assert "No space left on device" in err
    assert snapshot(old_run) == before
    assert siblings(old_run) == []


def test_overwrite_killed_before_training_starts_keeps_the_old_run(driver, old_run, grey):
    before = snapshot(old_run)
    # the last write before the swap: the new run's empty metrics file
    killed = launch(driver, "train", "--data", grey, "--out", old_run, "--overwrite", "--epochs", "1", *TINY,
                    kill_at="fsync:.metrics.jsonl.")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert snapshot(old_run) == before
    done = run_cli("train", "--data", grey, "--out", old_run, "--overwrite", "--epochs", "1", *TINY)
    assert done.returncode == 0, done.stderr
    assert siblings(old_run) == []  # the killed attempt's folder is gone too
    assert len(rundir.read_metrics(old_run)) == 1


def test_library_overwrite_with_a_model_that_does_not_fit_keeps_the_old_run(old_run):
    before = snapshot(old_run)
    model = build_model(Config(hidden=[16], latent_dim=2), (10,))  # the data have 12 features
    with pytest.raises(RuntimeError):
        vaekit.fit(model, torch.rand(64, 12), epochs=1, batch_size=32, device="cpu", out=old_run, overwrite=True)
    assert snapshot(old_run) == before
    assert siblings(old_run) == []


def test_one_owner_ends_a_run_fit_ends_what_it_opened_the_caller_what_it_prepared(tmp_path, old_run):
    x = torch.rand(64, 12)
    fitting = build_model(Config(hidden=[16], latent_dim=2), (12,))
    vaekit.fit(fitting, x, epochs=1, batch_size=32, device="cpu", out=tmp_path / "fits")
    assert not (tmp_path / "fits" / LOCK).exists()  # fit prepared it, so fit released it
    before = snapshot(old_run)
    with pytest.raises(RuntimeError), rundir.RunDirectory(old_run).prepare(overwrite=True) as run:
        with pytest.raises(RuntimeError):  # a model that does not fit the data: fit fails before training
            vaekit.fit(build_model(Config(hidden=[16]), (10,)), x, epochs=1, device="cpu", out=run)
        assert run.locked and not run.committed  # fit left the caller's run alone: not discarded, still held
        raise RuntimeError("the caller gives up")
    assert snapshot(old_run) == before and not run.locked  # the caller's `with` discarded it and let go
    with rundir.RunDirectory(tmp_path / "mine").prepare() as run:
        vaekit.fit(fitting, x, epochs=1, batch_size=32, device="cpu", out=run)
        assert run.locked  # still the caller's
    assert not run.locked and run.is_run()


def test_library_overwrite_replaces_a_fit_run_as_one_step(tmp_path):
    out = tmp_path / "fitted"
    x = torch.rand(64, 12)
    vaekit.fit(build_model(Config(hidden=[16], latent_dim=2), (12,)), x, epochs=1, batch_size=32,
               device="cpu", out=out)
    assert not (out / rundir.CONFIG).exists()  # a library run: no config, recognised by run.json
    with pytest.raises(VaekitError, match="already holds a run"):
        vaekit.fit(build_model(Config(hidden=[16], latent_dim=2), (12,)), x, epochs=1, out=out)
    (out / "evaluation-test.json").write_text("{}")
    (out / "mine.txt").write_text("kept")
    vaekit.fit(build_model(Config(hidden=[16], latent_dim=3), (12,)), x, epochs=2, batch_size=32,
               device="cpu", out=out, overwrite=True)
    assert len(rundir.read_metrics(out)) == 2 and (out / "mine.txt").read_text() == "kept"
    assert not (out / "evaluation-test.json").exists() and siblings(out) == []
    assert not (out / LOCK).exists()  # released when fit returned


# ---------------------------------------------------------------------- 2. every writer is atomic
# (command, output file name, where it goes: "out" = the test's folder, "run" = into the run);
# --overwrite because the old file is there on purpose (without it the command refuses first)
WRITERS = [
    (["evaluate", "{run}", "--samples", "5", "--per-example", "{out}/scores.csv", "--overwrite"], "scores.csv", "out"),
    (["evaluate", "{run}", "--samples", "5", "--per-example", "{out}/scores.npy", "--overwrite"], "scores.npy", "out"),
    (["sample", "{run}", "-n", "4", "-o", "{out}/s.png", "--overwrite"], "s.png", "out"),
    (["sample", "{run}", "-n", "4", "-o", "{out}/s.npy", "--overwrite"], "s.npy", "out"),
    (["reconstruct", "{run}", "-n", "4", "-o", "{out}/r.png", "--overwrite"], "r.png", "out"),
    (["reconstruct", "{run}", "-n", "4", "-o", "{out}/r.npy", "--overwrite"], "r.npy", "out"),
    (["encode", "{run}", "-o", "{out}/z.npy", "--overwrite"], "z.npy", "out"),
    (["encode", "{run}", "-o", "{out}/z.npy", "--overwrite"], "z.logvar.npy", "out"),
    (["encode", "{run}", "-o", "{out}/z.npz", "--overwrite"], "z.npz", "out"),
    (["encode", "{run}", "-o", "{out}/z.csv", "--overwrite"], "z.csv", "out"),
    (["report", "{run}", "-o", "{out}/report.html"], "report.html", "out"),
    (["plot", "{run}"], "latent.png", "run"),
]


@pytest.mark.parametrize("command, name, where", WRITERS, ids=[f"{c[0]}-{n}" for c, n, _ in WRITERS])
def test_every_writer_keeps_the_old_file_when_the_disk_is_full(capsys, received, tmp_path, monkeypatch,
                                                                command, name, where):
    if command[0] == "report":
        pytest.importorskip("plotly")
    folder = received if where == "run" else tmp_path / "out"
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(b"the previous file")
    full_disk_for(monkeypatch, name)
    args = [a.format(run=received, out=tmp_path / "out") for a in command]
    err = fails(capsys, *args)
    assert f"could not write {folder / name}: No space left on device" in err  # the file is named
    assert (folder / name).read_bytes() == b"the previous file"
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("name, flags", [("evaluation-validation.json", []),
                                         (CURVE, ["--curve", "--no-save"])])
def test_evaluate_keeps_its_stored_files_when_the_disk_is_full(capsys, old_run, monkeypatch, name, flags):
    (old_run / name).write_bytes(b"the previous file")
    full_disk_for(monkeypatch, name)
    assert main(["evaluate", str(old_run), "--samples", "5", *flags]) == 0  # the printed result counts
    out = capsys.readouterr()
    assert "log_likelihood" in out.out
    assert f"warning: could not store the {'curve' if flags else 'result'} in the run" in out.err
    assert str(old_run / name) in out.err
    assert (old_run / name).read_bytes() == b"the previous file"


def test_config_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.json"
    path.write_text("previous")
    full_disk_for(monkeypatch, "c.json")
    with pytest.raises(VaekitError, match="No space left on device"):
        Config().save(path)
    assert path.read_text() == "previous"


def test_per_example_scores_killed_mid_write_leave_the_previous_file(driver, old_run, tmp_path):
    scores = tmp_path / "scores.csv"
    scores.write_text("previous scores\n")
    killed = launch(driver, "evaluate", old_run, "--samples", "5", "--per-example", scores, "--overwrite",
                    kill_at="fsync:.scores.csv.")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert scores.read_text() == "previous scores\n"


WRITE_METHODS = {"save", "savez", "savez_compressed", "savetxt", "savefig", "write_text", "write_bytes", "tofile"}
BUFFERS = {"f", "buffer"}  # what rundir.write_output hands a writer, or an in-memory buffer
# Writers that do not go through rundir.atomic_write, and why that is safe.
DIRECT_WRITERS = {
    ("rundir.py", "append_metrics"),  # appends one line; a failed write is truncated back
    ("rundir.py", "atomic_write"),  # the atomic path itself
    ("app/data/download.py", "_download"),  # a locked .part file, verified, then renamed
}


def _writes_a_file(call: ast.Call) -> bool:
    func, args = call.func, call.args
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    if name in ("open", "fdopen"):
        mode = args[1] if len(args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
        return isinstance(mode, ast.Constant) and any(c in str(mode.value) for c in "wax+")
    if not (isinstance(func, ast.Attribute) and func.attr in WRITE_METHODS and args):
        return False
    if isinstance(args[0], ast.Name) and args[0].id in BUFFERS:
        return False
    # vaekit.checkpoint.save writes through rundir.atomic_write
    return not (func.attr == "save" and isinstance(func.value, ast.Name) and func.value.id == "checkpoint")


def test_every_file_writer_in_vaekit_goes_through_the_atomic_path():
    """Lists every place in vaekit's source that writes a file: each writes into a buffer
    handed to ``rundir.write_output`` (``lambda f: np.save(f, ...)``), or is one of the few
    reviewed direct writers above."""
    root = SRC / "vaekit"
    found = set()
    for path in root.rglob("*.py"):
        for function in ast.walk(ast.parse(path.read_text())):
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef) and any(
                isinstance(call, ast.Call) and _writes_a_file(call) for call in ast.walk(function)
            ):
                found.add((path.relative_to(root).as_posix(), function.name))
    assert found == DIRECT_WRITERS


# ---------------------------------------------------------------------- 3. and 5. folders that are not runs
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_folder_with_a_users_figure_is_not_a_run_and_is_refused(capsys, grey, tmp_path, overwrite):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "samples.png").write_bytes(b"my holiday")
    err = fails(capsys, "train", "--data", grey, "--out", folder, *overwrite, *TINY)
    assert "is not empty and holds no vaekit run (it holds samples.png)" in err
    assert snapshot(folder) == {"samples.png": b"my holiday"}


@pytest.mark.parametrize("run_json", [None, '{"name": "my project"}\n'])
def test_a_users_config_json_is_not_replaced_by_overwrite(capsys, grey, tmp_path, run_json):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / rundir.CONFIG).write_text('{"my": "settings"}\n')
    (folder / rundir.METRICS).write_text("my metrics\n")
    if run_json:
        (folder / rundir.INFO).write_text(run_json)  # a run.json that is not a run record
    before = snapshot(folder)
    err = fails(capsys, "train", "--data", grey, "--out", folder, "--overwrite", *TINY)
    assert "holds no vaekit run" in err
    assert snapshot(folder) == before


def test_an_empty_folder_and_one_with_only_a_stale_lock_take_a_new_run(grey, tmp_path):
    for folder in (tmp_path / "empty", tmp_path / "stale"):
        folder.mkdir()
    (tmp_path / "stale" / LOCK).write_text("12345\n")  # what a SIGKILL'ed writer leaves
    for folder in (tmp_path / "empty", tmp_path / "stale"):
        assert main(["train", "--data", str(grey), "--out", str(folder), "--epochs", "1", *TINY]) == 0
        assert len(rundir.read_metrics(folder)) == 1 and not (folder / LOCK).exists()


def test_out_naming_the_current_home_or_root_folder_is_refused(grey, tmp_path, monkeypatch):
    here = tmp_path / "work"
    here.mkdir()
    (here / "thesis.tex").write_text("mine")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    cases = [(".", "the current folder"), (home, "your home folder"), ("/", "the file system root")]
    for out, place in cases:
        done = run_cli("train", "--data", grey, "--out", out, "--overwrite", *TINY, cwd=here)
        err = one_line_error(done)
        assert f"({place}) is not empty and holds no vaekit run" in err
    assert snapshot(here) == {"thesis.tex": b"mine"} and snapshot(home) == {".bashrc": b"mine"}
    assert not Path("/run.json").exists()


def test_replacing_the_run_one_is_inside_is_refused(capsys, old_run, grey, monkeypatch):
    before = snapshot(old_run)
    monkeypatch.chdir(old_run)
    err = fails(capsys, "train", "--data", grey, "--out", ".", "--overwrite", *TINY)
    assert "from inside it" in err
    assert snapshot(old_run) == before and siblings(old_run) == []


# ---------------------------------------------------------------------- 4. the old run's results go with it
def test_overwrite_leaves_no_result_of_the_old_model(old_run, grey):
    assert main(["train", "--data", str(grey), "--out", str(old_run), "--overwrite", "--epochs", "1", *TINY]) == 0
    for stale in ("evaluation-test.json", CURVE, "samples.png"):
        assert not (old_run / stale).exists(), stale
    assert (old_run / "notes.txt").read_text() == "mine"  # the user's own file stays
    assert len(rundir.read_metrics(old_run)) == 1 and siblings(old_run) == []


# ---------------------------------------------------------------------- 6. one writer at a time
@pytest.mark.slow
def test_two_writers_never_share_a_run_and_a_killed_one_leaves_no_lock(driver, grey, tmp_path, background):
    out = tmp_path / "run"
    epochs = ["--epochs", "6", "--checkpoint-minutes", "0"]
    first = launch(driver, "train", "--data", grey, "--out", out, *epochs, *TINY, kill_at="pause:12", wait=False)
    background.append(first)
    wait_for(lambda: len(rundir.read_metrics(out)) >= 1, first)
    # the writers and the reader that meet the killed ones' locks run in this process
    second = run_cli("train", "--data", grey, "--out", out, "--overwrite", *epochs, *TINY)
    err = one_line_error(second)
    assert f"is in use: vaekit process PID {first.pid} is writing to it" in err
    reader = run_cli("evaluate", out, "--samples", "5")  # readers are not locked out
    assert reader.returncode == 0, reader.stderr
    assert "log_likelihood" in reader.stdout
    first.kill()  # SIGKILL: the kernel drops the lock with the process
    first.wait()
    resumed = launch(driver, "train", "--resume", out, "--quiet", "--no-figures", kill_at="pause:2", wait=False)
    background.append(resumed)
    wait_for(lambda: (out / LOCK).exists() and (out / LOCK).read_text().strip() == str(resumed.pid),
             resumed)
    again = run_cli("train", "--resume", out, "--quiet", "--no-figures")
    assert f"vaekit process PID {resumed.pid} is writing to it" in one_line_error(again)
    resumed.kill()
    resumed.wait()
    done = run_cli("train", "--resume", out, "--quiet", "--no-figures")
    assert done.returncode == 0, done.stderr
    assert [r["epoch"] for r in rundir.read_metrics(out)] == [1, 2, 3, 4, 5, 6]  # no interleaving
    assert not (out / LOCK).exists()


def test_a_second_fit_into_a_run_being_written_is_refused(tmp_path):
    out = tmp_path / "run"
    x = torch.rand(64, 12)
    refused = []

    class SecondWriter(vaekit.Callback):
        def on_epoch_end(self, loop, record):
            with pytest.raises(VaekitError, match="is in use") as err:
                vaekit.fit(build_model(Config(hidden=[8]), (12,)), x, epochs=1, out=out, overwrite=True)
            refused.append(str(err.value))

    vaekit.fit(build_model(Config(hidden=[8]), (12,)), x, epochs=1, batch_size=32, device="cpu", out=out,
               callbacks=[SecondWriter()])
    assert refused and f"PID {os.getpid()}" in refused[0]
    assert len(rundir.read_metrics(out)) == 1


# ---------------------------------------------------------------------- 7. runs received from someone else
@pytest.fixture
def received(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "received"))


@pytest.mark.parametrize("name", [rundir.CONFIG, rundir.INFO])
def test_a_fifo_in_a_received_run_does_not_hang(driver, received, name):
    (received / name).unlink()
    os.mkfifo(received / name)
    err = one_line_error(launch(driver, "evaluate", received, timeout=120))
    assert f"{name} (" in err and "is a FIFO (named pipe), not a regular file" in err


@pytest.mark.parametrize("name", [rundir.CONFIG, rundir.INFO, rundir.WEIGHTS, rundir.METRICS])
def test_a_link_to_dev_zero_in_a_received_run_is_refused(driver, received, name):
    (received / name).unlink()
    (received / name).symlink_to("/dev/zero")
    command = ["plot", received] if name == rundir.METRICS else ["evaluate", received]
    err = one_line_error(launch(driver, *command, timeout=120))
    assert "is a character device, not a regular file" in err


@pytest.mark.parametrize("setting, value", [("hidden", [10**9]), ("latent_dim", 10**9)])
def test_a_config_asking_for_a_huge_model_allocates_nothing(driver, received, setting, value):
    values = json.loads((received / rundir.CONFIG).read_text())
    values[setting] = value
    (received / rundir.CONFIG).write_text(json.dumps(values))
    err = one_line_error(launch(driver, "evaluate", received, timeout=120))
    assert "weights do not match the model" in err and "the model needs" in err


def test_a_config_file_too_large_for_a_config_is_refused(capsys, received):
    (received / rundir.CONFIG).write_bytes(b" " * (1024**2 + 1))
    assert "more than the 1,048,576 such a file may hold" in fails(capsys, "evaluate", received)


def test_a_huge_model_asked_for_in_training_is_one_clear_error(driver, grey, tmp_path):
    done = launch(driver, "train", "--data", grey, "--out", tmp_path / "o", "--hidden", "16", "--latent-dim",
                  str(10**9), *TINY[4:])
    err = one_line_error(done)
    assert "the model's parameters alone take" in err and "GB of memory" in err
    assert not (tmp_path / "o").exists()


class _Recorder(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.server.requests.append(self.path)
        self.send_error(404, "Not Found")

    def log_message(self, *args):
        pass


@pytest.fixture
def authors_server():
    """A server standing for one chosen by a run's author: it records every request."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_received_runs_mirror_is_never_contacted(capsys, received, tmp_path, monkeypatch, authors_server):
    server, url = authors_server
    values = json.loads((received / rundir.CONFIG).read_text())
    values.update(data="mnist", mirror=url, validation_fraction=0.1)
    (received / rundir.CONFIG).write_text(json.dumps(values))
    monkeypatch.setenv("VAEKIT_DATA", str(tmp_path / "cache"))  # nothing cached: it would download
    monkeypatch.setenv("VAEKIT_MIRROR", "http://127.0.0.1:9")  # the user's own (offline) choice
    def offline(*args) -> str:
        assert main([str(a) for a in args]) == 2
        err = capsys.readouterr().err
        assert "error: cannot get the mnist files" in err and "Traceback" not in err
        return err

    for command in (["evaluate", received], ["plot", received], ["sample", received, "--sampler", "gmm",
                                                                  "-o", tmp_path / "s.npy"]):
        assert url not in offline(*command)
    assert server.requests == []
    assert url in offline("evaluate", received, "--mirror", url)  # the user's own flag is used
    assert server.requests


# ---------------------------------------------------------------------- 9. read-only runs
def test_evaluate_on_a_read_only_run_prints_the_result_and_warns(capsys, received, monkeypatch):
    # Tests may run as root, for whom chmod blocks nothing: refuse creation at the OS call.
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(received)) and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    before = snapshot(received)
    assert main(["evaluate", str(received), "--samples", "5", "--curve"]) == 0
    out = capsys.readouterr()
    assert "log_likelihood" in out.out
    assert "warning: could not store the result in the run" in out.err and "Permission denied" in out.err
    assert "warning: could not store the curve in the run" in out.err
    assert snapshot(received) == before


# ---------------------------------------------------------------------- 13. what killed writers leave
def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_temporary_files_of_killed_evaluate_and_sample_are_cleaned_up(driver, received, tmp_path):
    killed = launch(driver, "evaluate", received, "--samples", "5", kill_at="fsync:.evaluation-validation.json.")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _temporaries(received)  # the torn temporary file
    killed = launch(driver, "sample", received, "-n", "4", "-o", received / "s.png", kill_at="fsync:.s.png.")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(_temporaries(received)) == 2
    # one held by a live writer (a lock on it) must stay: it is still being written
    live = received / f".evaluation-test.json.{os.getpid()}.0123abcd.tmp"
    live.write_bytes(b"half")
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'rb'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(600)",
                               str(live)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        done = run_cli("evaluate", received, "--samples", "5")  # the next write to that run, in process
        assert done.returncode == 0, done.stderr
        assert _temporaries(received) == [live.name]
    finally:
        holder.kill()
        holder.wait()
    done = run_cli("plot", received)
    assert done.returncode == 0, done.stderr
    assert _temporaries(received) == []


# ---------------------------------------------------------------------- 14. small ones
def test_a_run_directory_that_is_a_file_says_so(capsys, tmp_path):
    path = tmp_path / "run"
    path.write_text("not a folder")
    for command in (["evaluate", path], ["train", "--resume", path], ["sample", path]):
        assert f"{path} is a file, not a run directory" in fails(capsys, *command)


def test_unreadable_weights_message_reads_as_english(capsys, received):
    (received / rundir.WEIGHTS).write_bytes(b"garbage")
    err = fails(capsys, "evaluate", received)
    assert "model.safetensors (the weights) is not a readable safetensors file" in err
    assert "the weights is" not in err


def test_a_cvae_label_of_ten_to_the_twelve_is_refused_without_allocating(capsys, tmp_path):
    path = tmp_path / "labelled.npz"
    labels = np.arange(60) % 3
    labels[7] = 10**12
    np.savez(path, x=np.random.default_rng(0).random((60, 12)).astype(np.float32), labels=labels)
    err = fails(capsys, "train", "--data", path, "--model", "cvae", "--out", tmp_path / "o", *TINY)
    assert "the labels run up to 1000000000000" in err and "more than 100000 classes are refused" in err
    assert not (tmp_path / "o").exists()
