"""Helpers for the data tests: generated IDX files and checksums."""

from __future__ import annotations

import gzip
import hashlib
import socket

import numpy as np


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run the CLI in this process (fast: torch is already imported); (status, out, err)."""
    from vaekit.app.cli import main

    capsys.readouterr()
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def dead_url() -> str:
    """A 127.0.0.1 URL nobody listens on (connection refused): an offline machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def idx_bytes(array: np.ndarray) -> bytes:
    from vaekit.app.data.idx import encode

    return encode(array)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def toy_mnist(n_train: int = 12, n_test: int = 5, seed: int = 0) -> dict[str, bytes]:
    """Decompressed IDX contents in MNIST's layout (official file names without .gz)."""
    rng = np.random.default_rng(seed)
    parts = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        parts[f"{prefix}-images-idx3-ubyte"] = idx_bytes(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        parts[f"{prefix}-labels-idx1-ubyte"] = idx_bytes(rng.integers(0, 10, n, dtype=np.uint8))
    return parts


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)
