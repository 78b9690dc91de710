"""Shared test helpers: tiny configs, a trained tiny run, and the CLI as a subprocess."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
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


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m vaekit ARGS`` in a fresh process, with this checkout's sources."""
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


@pytest.fixture(scope="module")
def grey(tmp_path_factory) -> Path:
    """A .npy file of 300 grey rows of 12 features in [0, 1] (one per test module)."""
    import numpy as np

    path = tmp_path_factory.mktemp("data") / "grey.npy"
    np.save(path, np.random.default_rng(0).random((300, 12)).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def trained(grey, tmp_path_factory) -> Path:
    """A small VAE trained on ``grey`` (read-only: copy it to damage it)."""
    from vaekit.app.config import Config
    from vaekit.app.runs import train

    config = Config(data=str(grey), hidden=[16], latent_dim=2, epochs=2, batch_size=32,
                    binarize="dynamic", threads=1)
    return train(config, tmp_path_factory.mktemp("runs") / "run", quiet=True, figures=False)
