"""The MNIST family: generated files through the real code path, and the real MNIST where
this machine has it (../shared/data/mnist)."""

from __future__ import annotations

import gzip
import hashlib
import json

import numpy as np
import pytest
import torch

from conftest import MNIST_DIR, needs_mnist, run_cli
from vaekit.app.data import download as dl
from vaekit.app.data import load_data, mnist
from vaekit.errors import VaekitError

from .helpers import cli, sha256


def test_loads_official_layout_scaled_to_unit_interval(fake_mnist):
    splits = load_data("mnist", quiet=True)
    raw = np.frombuffer(fake_mnist["train-images-idx3-ubyte"], np.uint8, offset=16).reshape(12, 28, 28)
    labels = np.frombuffer(fake_mnist["t10k-labels-idx1-ubyte"], np.uint8, offset=8)
    assert splits.train.x.shape == (12, 1, 28, 28) and splits.test.x.shape == (5, 1, 28, 28)
    assert splits.train.x.dtype == torch.float32
    torch.testing.assert_close(splits.train.x[:, 0], torch.from_numpy(raw / 255.0).float())
    assert splits.test.labels.tolist() == labels.tolist()
    assert splits.train.name == "mnist"


def test_labels_must_match_the_images(fake_mnist, monkeypatch, tmp_path):
    from vaekit.app.data.idx import encode

    bad = dict(fake_mnist, **{"t10k-labels-idx1-ubyte": encode(np.zeros(4, np.uint8))})
    for name, body in bad.items():
        (tmp_path / name).write_bytes(body)
    files = tuple(dl.RemoteFile(f"{n}.gz", sha256=sha256(b)) for n, b in bad.items())
    monkeypatch.setitem(mnist.REMOTE, "mnist", dl.RemoteDataset("mnist", files, mirrors=()))
    with pytest.raises(VaekitError, match=r"expected 5 labels \(one per image\), got shape \[4\]"):
        load_data("mnist", str(tmp_path))


def test_every_family_member_pins_a_checksum_per_file():
    for ds in mnist.REMOTE.values():
        assert [f.name for f in ds.files] == list(mnist.FILES)
        for f in ds.files:
            assert (f.sha256 and len(f.sha256) == 64) or (f.md5 and len(f.md5) == 32)
        assert ds.mirrors and all(m.startswith(("http://", "https://")) for m in ds.mirrors)
    assert "emnist" not in " ".join(mnist.REMOTE)  # left out: no per-file checksums published


@needs_mnist
def test_real_mnist_through_data_dir():
    for f in mnist.MNIST.files:  # the pins are the decompressed contents of these files
        assert hashlib.sha256(gzip.decompress((MNIST_DIR / f.name).read_bytes())).hexdigest() == f.sha256
    splits = load_data("mnist", str(MNIST_DIR), quiet=True)
    assert splits.train.x.shape == (60000, 1, 28, 28) and splits.test.x.shape == (10000, 1, 28, 28)
    for part in (splits.train, splits.test):
        assert part.x.dtype == torch.float32
        assert float(part.x.min()) == 0.0 and float(part.x.max()) == 1.0
        assert part.labels.dtype == torch.int64 and part.labels.min() == 0 and part.labels.max() == 9
    assert len(splits.train.labels) == 60000 and len(splits.test.labels) == 10000


@needs_mnist
def test_real_mnist_train_cli_with_data_dir(tmp_path, capsys):
    out = tmp_path / "run"
    status, _, err = cli(capsys, "train", "--data", "mnist", "--data-dir", MNIST_DIR, "--binarize", "static",
                         "--epochs", "0", "--hidden", "8", "--no-figures", "-q", "--out", out)
    assert status == 0, err
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["split"] == "validation" and evaluation["n"] == 6000
    record = json.loads((out / "data.json").read_text())
    assert record["binarize"]["protocol"] == "static"
    assert set(record["binarize"]["fingerprints"]) == {"train", "validation", "test"}


@needs_mnist
def test_real_mnist_fetched_from_a_local_mirror(http_server, private_cache, capsys):
    for f in mnist.FILES:
        http_server.routes[f"/m/{f}"] = ("ok", (MNIST_DIR / f).read_bytes())
    result = run_cli("data", "fetch", "mnist", "--mirror", f"{http_server.url}/m", "-q")  # a real process
    assert result.returncode == 0, result.stderr
    assert "4 files verified" in result.stdout
    assert sorted(p.name for p in (private_cache / "mnist").iterdir()) == sorted(mnist.FILES)
    listing = cli(capsys, "data", "list")[1]
    assert any(line.split()[:2] == ["mnist", "yes"] for line in listing.splitlines())
    # from now on no network is needed (the autouse fixture points mirrors at a dead URL)
    assert len(load_data("mnist", quiet=True).test) == 10000


@pytest.mark.parametrize(("binarize", "standardize"), [("dynamic", False), ("static", False), ("none", True)])
def test_the_test_split_alone_is_the_same_test_split(fake_mnist, tmp_path, binarize, standardize):
    from vaekit.app.config import Config
    from vaekit.app.data import run_splits, write_run_data

    config = Config(data="mnist", binarize=binarize, standardize=standardize, validation_fraction=0.25)
    whole = run_splits(config, quiet=True)
    write_run_data(tmp_path, config, whole)  # what a training run records
    alone = run_splits(config, quiet=True, run_dir=tmp_path, only="test")
    assert alone["train"] is None and alone["validation"] is None  # never built
    assert torch.equal(alone["test"].x, whole["test"].x)
    assert torch.equal(alone["test"].labels, whole["test"].labels)
    if standardize:  # without a recorded standardisation it must be refitted on the training set
        refit = run_splits(config, quiet=True, only="test")
        assert refit["train"] is not None and torch.equal(refit["test"].x, whole["test"].x)
