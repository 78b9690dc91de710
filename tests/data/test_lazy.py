"""Data larger than memory: memory-mapped .npy files and streamed image folders, through
the same API, checked against the in-memory path under a small memory budget."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vaekit.app.config import Config
from vaekit.app.data import load_data, run_splits
from vaekit.app.data.lazy import LazyArray, is_lazy, memmap_reader, memory_limit, value_range
from vaekit.app.runs import train
from vaekit.errors import VaekitError

BUDGET = 100_000  # bytes: the test's memory budget


@pytest.fixture
def big_npy(tmp_path):
    """A [600, 1, 8, 8] grey-level file: 153,600 bytes of float32, over the budget."""
    x = np.random.default_rng(0).random((600, 1, 8, 8)).astype(np.float32)
    path = tmp_path / "big.npy"
    np.save(path, x)
    assert x.nbytes > BUDGET
    return path, x


def test_memory_limit_parsing(monkeypatch):
    assert memory_limit() == 2 * 1024**3
    for text, value in (("12345", 12345), ("2K", 2048), ("1.5M", 1.5 * 1024**2), ("3g", 3 * 1024**3)):
        monkeypatch.setenv("VAEKIT_MEMORY_LIMIT", text)
        assert memory_limit() == value
    monkeypatch.setenv("VAEKIT_MEMORY_LIMIT", "lots")
    with pytest.raises(VaekitError, match="VAEKIT_MEMORY_LIMIT must be a number of bytes"):
        memory_limit()


def test_lazy_array_indexes_like_a_tensor():
    base = np.arange(60, dtype=np.float32).reshape(10, 6)
    t = torch.from_numpy(base)
    lazy = LazyArray(memmap_reader(base), 10, (6,))
    assert len(lazy) == 10 and lazy.shape == t.shape and lazy.dim() == 2
    assert torch.equal(lazy[3], t[3]) and torch.equal(lazy[-1], t[-1])
    assert torch.equal(lazy[2:9:3], t[2:9:3])
    index = torch.tensor([7, 1, 4, 1])
    assert torch.equal(lazy[index], t[index])
    assert torch.equal(lazy[t[:, 0] > 20], t[t[:, 0] > 20])
    sub = lazy.take(torch.tensor([9, 2, 5]))
    assert torch.equal(sub[1:], t[[2, 5]])
    shifted = sub.map(lambda positions, rows: rows + positions[:, None])  # source positions
    assert torch.equal(shifted[0], t[9] + 9)
    assert torch.equal(lazy.to_tensor(), t)
    with pytest.raises(IndexError):
        lazy[torch.tensor([10])]


def test_npy_over_the_budget_is_memory_mapped(big_npy, monkeypatch):
    path, x = big_npy
    monkeypatch.setenv("VAEKIT_MEMORY_LIMIT", str(BUDGET))
    data = load_data(str(path)).train
    assert is_lazy(data.x) and data.x.shape == (600, 1, 8, 8)
    assert torch.equal(data.x[torch.tensor([5, 0, 599])], torch.from_numpy(x[[5, 0, 599]]))
    assert value_range(data.x) == (float(x.min()), float(x.max()), False)
    monkeypatch.setenv("VAEKIT_MEMORY_LIMIT", str(10 * x.nbytes))
    assert not is_lazy(load_data(str(path)).train.x)


def test_bad_values_in_a_mapped_file_are_found_up_front(tmp_path, monkeypatch):
    x = np.zeros((300, 100), np.float32)
    x[217, 3] = np.nan
    np.save(tmp_path / "nan.npy", x)
    monkeypatch.setenv("VAEKIT_MEMORY_LIMIT", "1000")
    with pytest.raises(VaekitError, match=r"NaN or infinite values \(first in row 217\)"):
        load_data(str(tmp_path / "nan.npy"))
    np.save(tmp_path / "flat.npy", np.zeros((300, 0), np.float32))
    with pytest.raises(VaekitError, match="the dataset is empty"):
        load_data(str(tmp_path / "flat.npy"))


def test_training_from_the_memory_map_matches_training_in_memory(big_npy, tmp_path, monkeypatch):
    path, _ = big_npy
    config = Config(data=str(path), binarize="static", hidden=[16], latent_dim=2, epochs=2,
                    batch_size=64, seed=1)
    monkeypatch.setenv("VAEKIT_MEMORY_LIMIT", str(BUDGET))
    lazy_splits = run_splits(config)
    assert all(is_lazy(lazy_splits[k].x) for k in ("train", "validation"))
    lazy_run = train(config, tmp_path / "lazy", quiet=True, figures=False)
    monkeypatch.delenv("VAEKIT_MEMORY_LIMIT")
    eager_splits = run_splits(config)
    for key in ("train", "validation"):  # the same static draw, however the rows are read
        assert torch.equal(lazy_splits[key].x.to_tensor(), eager_splits[key].x)
    eager_run = train(config, tmp_path / "eager", quiet=True, figures=False)
    lazy_metrics = (lazy_run / "metrics.jsonl").read_text().splitlines()
    eager_metrics = (eager_run / "metrics.jsonl").read_text().splitlines()
    drop = lambda line: {k: v for k, v in json.loads(line).items() if k != "seconds"}  # noqa: E731
    assert [drop(m) for m in lazy_metrics] == [drop(m) for m in eager_metrics]
    assert json.loads((lazy_run / "data.json").read_text())["read_on_demand"] is True


def test_dynamic_training_batches_from_the_memory_map(big_npy, tmp_path, monkeypatch):
    path, _ = big_npy
    config = Config(data=str(path), binarize="dynamic", hidden=[8], latent_dim=2, epochs=1,
                    batch_size=100, seed=0)
    eager_validation = run_splits(config)["validation"].x
    monkeypatch.setenv("VAEKIT_MEMORY_LIMIT", str(BUDGET))
    lazy_validation = run_splits(config)["validation"].x
    assert is_lazy(lazy_validation) and torch.equal(lazy_validation.to_tensor(), eager_validation)
    run = train(config, tmp_path / "dyn", quiet=True, figures=True)
    assert (run / "latent.png").is_file()
    metrics = json.loads((run / "metrics.jsonl").read_text())
    assert np.isfinite(metrics["train_elbo"]) and np.isfinite(metrics["validation_elbo"])


def test_a_changed_row_of_data_read_on_demand_is_caught_on_resume(tmp_path, monkeypatch):
    from vaekit.app.runs import resume
    from vaekit.sources import SAMPLED_ROWS

    # more rows than a sampled fingerprint looks at, so some row was never part of it
    n = 5000
    x = np.random.default_rng(0).random((n, 4)).astype(np.float32)
    path = tmp_path / "big.npy"
    np.save(path, x)
    monkeypatch.setenv("VAEKIT_MEMORY_LIMIT", "10000")
    config = Config(data=str(path), likelihood="gaussian", hidden=[8], latent_dim=2, epochs=1, batch_size=500,
                    validation_fraction=0.0, threads=1)
    run = train(config, tmp_path / "run", quiet=True, figures=False)
    assert is_lazy(load_data(str(path)).train.x)
    resume(run, {"epochs": 2}, quiet=True, figures=False)  # the same data resume
    sampled = set(torch.linspace(0, n - 1, SAMPLED_ROWS).long().tolist())
    row = next(i for i in range(n) if i not in sampled)
    x[row, 1] += 0.25
    np.save(path, x)
    with pytest.raises(VaekitError, match="the data are not the data"):
        resume(run, {"epochs": 3}, quiet=True, figures=False)


def test_file_digests_are_remembered_until_the_file_changes(tmp_path, monkeypatch, private_cache):
    import hashlib
    import os
    import time

    from vaekit.app.data import lazy

    path = tmp_path / "a.bin"
    path.write_bytes(b"x" * 1000)
    hour_ago = time.time() - 3600
    os.utime(path, (hour_ago, hour_ago))
    assert lazy.file_digest(path) == hashlib.sha256(b"x" * 1000).hexdigest()
    assert (private_cache / lazy.FINGERPRINTS).is_file()
    with monkeypatch.context() as m:
        m.setattr(lazy, "_stream", lambda p: pytest.fail("read again"))
        assert lazy.file_digest(path) == hashlib.sha256(b"x" * 1000).hexdigest()  # remembered
    path.write_bytes(b"y" * 1000)  # the same size; new modification and change times
    assert lazy.file_digest(path) == hashlib.sha256(b"y" * 1000).hexdigest()
    # a file changed just now is not remembered (a second change in the same clock tick)
    with monkeypatch.context() as m:
        m.setattr(lazy, "_stream", lambda p: "read again")
        assert lazy.file_digest(path) == "read again"
