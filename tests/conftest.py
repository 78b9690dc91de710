"""Shared test helpers: tiny configs, a trained tiny run, the CLI in this process (run_cli)
or in a fresh one (run_cli_subprocess), and digits as plain tensors for the library tests."""

from __future__ import annotations

import errno
import io
import json
import math
import os
import shutil
import subprocess
import sys
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

SRC = Path(__file__).resolve().parents[1] / "src"
# ../shared/data/mnist from the checkout; $VAEKIT_TEST_MNIST points elsewhere (a worktree).
MNIST_DIR = Path(os.environ.get("VAEKIT_TEST_MNIST")
                 or Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist")


def _has_mnist() -> bool:
    from vaekit.app.data import mnist

    return all((MNIST_DIR / name).is_file() for name in mnist.FILES)


needs_mnist = pytest.mark.skipif(
    not _has_mnist(),
    reason=f"no MNIST files in {MNIST_DIR}: set VAEKIT_TEST_MNIST to a folder holding the four official files",
)

# Two test processes on two cores spin against each other; one thread each is faster. The
# environment variable also caps vaekit's automatic thread count (vaekit.app.threads).
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


def full_disk_for(monkeypatch, name: str) -> None:
    """Make fsync of a temporary file for ``name`` fail as on a full disk."""
    real_fsync = os.fsync

    def fsync(fd):
        if f".{name}." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@dataclass
class CliResult:
    """What a finished ``vaekit`` command left: the attributes of a CompletedProcess that tests read."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


@contextmanager
def _process_state_kept() -> Iterator[None]:
    """Everything a CLI command may change for its whole process, put back afterwards: the
    working directory, the environment, torch's thread count and global generators, numpy's
    and Python's generators, signal handlers, logging, the warning filters, matplotlib's
    backend and glibc's allocator (a command tunes it; the test process keeps its own)."""
    import logging
    import random
    import signal

    import numpy as np

    from vaekit.app import threads

    cwd, environ = os.getcwd(), dict(os.environ)
    num_threads = torch.get_num_threads()
    torch_rng, np_rng, py_rng = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    root = logging.getLogger()
    logged = (list(root.handlers), root.level)
    backend = sys.modules["matplotlib"].get_backend() if "matplotlib" in sys.modules else None
    tuned, mallopt = getattr(threads, "_tuned", None), getattr(threads, "_mallopt", None)
    if mallopt is not None:
        threads._mallopt = lambda: True  # the command sees a tuned allocator; no mallopt in the test process
    try:
        with warnings.catch_warnings():
            warnings.resetwarnings()  # as a fresh interpreter: each warning once, printed on stderr
            warnings.simplefilter("default")
            warnings.showwarning = _warning_to_stderr
            yield
    finally:
        if mallopt is not None:
            threads._tuned, threads._mallopt = tuned, mallopt
        if backend is not None:
            sys.modules["matplotlib"].use(backend)
        root.handlers[:], root.level = logged
        for s, handler in handlers.items():
            signal.signal(s, handler)
        random.setstate(py_rng)
        np.random.set_state(np_rng)
        torch.random.set_rng_state(torch_rng)
        torch.set_num_threads(num_threads)
        os.environ.clear()
        os.environ.update(environ)
        os.chdir(cwd)


def _warning_to_stderr(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def run_cli(*args: str, cwd: Path | None = None, timeout: float | None = None) -> CliResult:
    """Run ``vaekit ARGS`` in this process through the CLI's entry point (what ``python -m
    vaekit ARGS`` runs), capturing its output and exit status; process-wide state is restored
    afterwards. ``timeout`` is accepted for run_cli_subprocess's signature and not enforced.
    Use :func:`run_cli_subprocess` where a fresh process is what is being tested."""
    from vaekit.app.cli import main

    argv = [str(a) for a in args]
    return run_in_process(lambda: main(argv), argv, cwd)


def run_in_process(entry, argv: list[str], cwd: Path | None = None) -> CliResult:
    """Call ``entry()`` (a command's main function) as a process would run it: its output
    and exit status captured (its return value, or the code it exits with; an uncaught error
    is status 1 with the traceback on stderr), and process-wide state put back afterwards."""
    out, err = io.StringIO(), io.StringIO()
    with _process_state_kept():
        if cwd is not None:
            os.chdir(cwd)
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = entry()
            except SystemExit as done:  # as the interpreter would turn it into a status
                code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
            except Exception:  # as in a process (a Ctrl-C still stops pytest)
                traceback.print_exc()
                code = 1
    return CliResult(argv, code or 0, out.getvalue(), err.getvalue())


def run_cli_subprocess(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m vaekit ARGS`` in a fresh process, with this checkout's sources: for what
    only a fresh process shows (its thread count, allocator, import time, signals)."""
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "vaekit", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout,
    )


@pytest.fixture
def tiny_config():
    from vaekit.app.config import Config

    return Config(data="digits", hidden=[32], latent_dim=2, epochs=2, batch_size=64,
                  binarize="dynamic", seed=0)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A small VAE trained on digits once per test session (read-only for tests)."""
    from vaekit.app.config import Config
    from vaekit.app.runs import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    config = Config(data="digits", hidden=[64], latent_dim=2, epochs=5, batch_size=64,
                    binarize="dynamic", seed=0)
    return train(config, out, quiet=True)


@pytest.fixture(scope="session")
def grey(tmp_path_factory) -> Path:
    """A .npy file of 300 grey rows of 12 features in [0, 1] (read-only)."""
    import numpy as np

    path = tmp_path_factory.mktemp("data") / "grey.npy"
    np.save(path, np.random.default_rng(0).random((300, 12)).astype(np.float32))
    return path


@pytest.fixture(scope="session")
def trained(grey, tmp_path_factory) -> Path:
    """A small VAE trained on ``grey`` (read-only: copy it to damage it)."""
    from vaekit.app.config import Config
    from vaekit.app.runs import train

    config = Config(data=str(grey), hidden=[16], latent_dim=2, epochs=2, batch_size=32,
                    binarize="dynamic", threads=1)
    return train(config, tmp_path_factory.mktemp("runs") / "run", quiet=True, figures=False)


# ---------------------------------------------------------------------- the library's side
# Library tests (tests of src/vaekit/*.py) build what they need from these, never from the app
# (tests/test_layers.py checks that they do not import it).


def make_vae(event_shape: tuple[int, ...], hidden: list[int] | tuple[int, ...] = (400,), latent_dim: int = 2, *,
             model: str = "vae", architecture: str = "mlp", likelihood: str = "bernoulli",
             activation: str = "relu", num_classes: int = 0, channels: list[int] | tuple[int, ...] = (32, 64),
             latent_dim2: int = 0, hidden2: list[int] | tuple[int, ...] = (100, 100),
             sigma: float | str = "shared", sigma_min: float = 1e-3, levels: int = 256):
    """A VAE (``model`` "vae"), AE ("ae") or TwoLayerVAE ("hvae") from the library's own
    pieces: ``vaekit.nets`` bodies of the ``architecture`` ("mlp", "linear", "conv") and a
    ``vaekit.likelihoods`` family. Parameters are created in a fixed order (likelihood,
    encoder, decoder, then the second layer's networks), so a seeded build is reproducible."""
    import math

    from vaekit import likelihoods, nets
    from vaekit.model import AE, VAE, TwoLayerVAE

    event_shape = tuple(event_shape)
    hidden = [] if architecture == "linear" else list(hidden)
    p = likelihoods.make_likelihood(likelihood, event_shape, sigma, sigma_min, levels)
    params = p.params_per_dim
    out_shape = ((params,) if params > 1 else ()) + event_shape
    enc_out = latent_dim if model == "ae" else 2 * latent_dim
    if architecture == "conv":
        encoder = nets.ConvEncoder(event_shape, enc_out, list(channels), activation, num_classes)
        decoder = nets.ConvDecoder(latent_dim, event_shape, list(channels), activation, params, num_classes)
    else:
        encoder = nets.MLP(math.prod(event_shape), hidden, enc_out, activation, num_classes)
        decoder = nets.MLP(latent_dim, hidden[::-1], out_shape, activation, num_classes)
    if model == "hvae":
        z2 = latent_dim2 or max(1, latent_dim // 2)
        up = nets.MLP(latent_dim, list(hidden2), 2 * z2, activation)
        down = nets.MLP(z2, list(hidden2)[::-1], 2 * latent_dim, activation)
        return TwoLayerVAE(encoder, decoder, p, latent_dim, z2, up, down, event_shape=event_shape)
    cls = AE if model == "ae" else VAE
    return cls(encoder, decoder, p, latent_dim, num_classes=num_classes, event_shape=event_shape)


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 8×8 digits as grey levels in [0, 1], shaped [N, 1, 8, 8], and
    their labels (read-only: clone before changing)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(bunch.target, dtype=torch.int64)


def old_run_resumes_as_recorded(tmp_path: Path, name: str, expected_file: str, validation_rel: float = 1e-5) -> None:
    """A run directory an earlier vaekit wrote (tests/fixtures/NAME) loads, evaluates and resumes
    to the metrics it recorded (``expected_file``): bit for bit on the CPU that wrote them; rel
    1e-5 allows another CPU's rounding (2e-7 on an AMD EPYC for 0.1's CVAE) while a wrong random,
    optimiser or schedule state would move them by far more. ``validation_rel`` for validation
    keys (vaekit 0.1 summed them in float32, now float64)."""
    import vaekit

    fixtures = Path(__file__).parent / "fixtures"
    run = tmp_path / name
    shutil.copytree(fixtures / name, run)
    expected = json.loads((fixtures / expected_file).read_text())[name]
    assert vaekit.load(run).event_shape == (1, 8, 8)
    done = run_cli("evaluate", run, "--importance-samples", "5", "--json", "-q", "--no-save")
    assert done.returncode == 0, done.stderr
    assert math.isfinite(json.loads(done.stdout)["log_likelihood"])
    done = run_cli("train", "--resume", run, "--epochs", str(expected["resume_epochs"]), "--threads", "1",
                   "-q", "--no-figures")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == len(expected["metrics_after_resume"])
    for got, want in zip(rows, expected["metrics_after_resume"], strict=True):
        for key, value in want.items():
            rel = validation_rel if key.startswith("validation_") else 1e-5
            assert got[key] == pytest.approx(value, rel=rel, abs=1e-9), key
