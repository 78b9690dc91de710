"""User arrays: .npy/.npz loading, used as given, with clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vaekit.app.config import Config
from vaekit.app.data import load_data, select_split, split_validation
from vaekit.errors import VaekitError


def test_digits_are_built_in():
    splits = load_data("digits")
    assert splits.train.x.shape == (1797, 1, 8, 8)
    assert splits.train.x.dtype == torch.float32
    assert float(splits.train.x.min()) >= 0 and float(splits.train.x.max()) <= 1
    from sklearn.datasets import load_digits

    assert splits.train.labels.bincount().tolist() == np.bincount(load_digits().target).tolist()
    assert splits.test is None


def test_npy_values_are_used_as_given(tmp_path):
    array = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float64) * 50
    np.save(tmp_path / "a.npy", array)
    x = load_data(str(tmp_path / "a.npy")).train.x
    np.testing.assert_allclose(x.numpy(), array.astype(np.float32))


def test_npz_with_labels_and_images(tmp_path):
    x = np.random.default_rng(0).random((12, 1, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, labels=np.arange(12) % 3)
    data = load_data(str(tmp_path / "d.npz")).train
    assert data.event_shape == (1, 4, 4)
    assert data.labels.tolist() == (np.arange(12) % 3).tolist()


def test_three_dimensional_arrays_are_greyscale_images(tmp_path):
    np.save(tmp_path / "g.npy", np.zeros((5, 6, 7), dtype=np.float32))
    assert load_data(str(tmp_path / "g.npy")).train.event_shape == (1, 6, 7)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros(5), "shaped"),
        (np.zeros((2, 3, 4, 5, 6)), "shaped"),
        (np.zeros((0, 4)), "empty"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN or infinite.*row 0"),
        (np.array([[1.0, 2.0], [0.0, np.inf]]), "NaN or infinite.*row 1"),
        (np.array([["a", "b"]]), "numeric"),
    ],
)
def test_bad_arrays_are_refused(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(VaekitError, match=message):
        load_data(str(tmp_path / "bad.npy"))


@pytest.mark.parametrize("streamed", [False, True], ids=["in-memory", "memory-mapped"])
def test_float64_values_beyond_float32_are_refused_not_made_infinite(tmp_path, monkeypatch, streamed):
    if streamed:
        monkeypatch.setenv("VAEKIT_MEMORY_LIMIT", "100")  # the .npy is read in batches from disk
    array = np.zeros((40, 3))
    array[17, 2] = -1e39
    array[30, 0] = 1e300
    np.save(tmp_path / "big.npy", array)
    with pytest.raises(VaekitError) as err:
        load_data(str(tmp_path / "big.npy"))
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'big.npy'}: ") and "beyond float32's range" in message
    assert "-1e+39 in row 17, column 2" in message
    assert "NaN or infinite" not in message and "\n" not in message


def test_float64_images_beyond_float32_in_an_npz_name_the_row(tmp_path):
    images = np.zeros((4, 1, 2, 2))
    images[2, 0, 1, 0] = 5e38
    np.savez(tmp_path / "big.npz", x=images)
    with pytest.raises(VaekitError, match=r"big.npz: 1 value\(s\) are beyond float32's range .*5e\+38 in row 2\)"):
        load_data(str(tmp_path / "big.npz"))
    within = np.full((2, 2), 3e38)  # the largest float32 is 3.4e38: this fits
    np.save(tmp_path / "fits.npy", within)
    assert load_data(str(tmp_path / "fits.npy")).train.x.numpy().tolist() == within.astype(np.float32).tolist()


def test_pickled_objects_are_never_loaded(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(VaekitError, match="pickled"):
        load_data(str(tmp_path / "obj.npy"))


def test_npz_without_x_and_bad_labels(tmp_path):
    np.savez(tmp_path / "nox.npz", data=np.zeros((3, 2)))
    with pytest.raises(VaekitError, match="named 'x'"):
        load_data(str(tmp_path / "nox.npz"))
    np.savez(tmp_path / "lab.npz", x=np.zeros((3, 2)), labels=np.zeros(4))
    with pytest.raises(VaekitError, match="length 3"):
        load_data(str(tmp_path / "lab.npz"))


def test_missing_file_and_unknown_spec(tmp_path):
    with pytest.raises(VaekitError, match="not found"):
        load_data(str(tmp_path / "nothing.npy"))
    with pytest.raises(VaekitError, match="unknown data"):
        load_data("imagenet")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(VaekitError, match="not a readable numpy file"):
        load_data(str(tmp_path / "junk.npy"))


def test_validation_split_is_seeded_and_disjoint():
    data = load_data("digits").train
    train_a, val_a = split_validation(data, 0.2, seed=1)
    train_b, val_b = split_validation(data, 0.2, seed=1)
    _, val_c = split_validation(data, 0.2, seed=2)
    assert torch.equal(val_a.x, val_b.x)
    assert not torch.equal(val_a.x, val_c.x)
    assert len(train_a) + len(val_a) == len(data) and len(val_a) == round(0.2 * len(data))


def test_splits_of_a_run(tmp_path):
    config = Config(data="digits", validation_fraction=0.1)
    assert len(select_split(config, "all")) == 1797
    assert len(select_split(config, "validation")) == 180
    with pytest.raises(VaekitError, match="no official test split"):
        select_split(config, "test")
    with pytest.raises(VaekitError, match="split must be one of"):
        select_split(config, "dev")
