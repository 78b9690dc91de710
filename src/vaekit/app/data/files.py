"""Arrays the user already has: ``.npy`` (``[N, D]`` or ``[N, C, H, W]``) and ``.npz``
(array ``x``, optionally ``labels``). Values are used as given: no hidden rescaling.

A ``.npy`` file whose float32 size exceeds the memory limit (:mod:`vaekit.app.data.lazy`) is
memory-mapped and read in batches instead of loaded; a ``.npz`` is always loaded."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from vaekit.app.data import Dataset, DataSplits
from vaekit.app.data.lazy import LazyArray, file_digest, memmap_reader, memory_limit, scan, to_float32
from vaekit.errors import VaekitError


def load_file(path: Path, quiet: bool = False) -> DataSplits:
    if not path.is_file():
        raise VaekitError(f"data file not found: {path}")
    return LOADERS[path.suffix.lower()](path, quiet)


def _load_npy(path: Path, quiet: bool = False) -> DataSplits:
    _check_magic(path, b"\x93NUMPY", "a .npy file")
    mapped = _read(path, lambda f: np.load(f, mmap_mode="r", allow_pickle=False))
    if mapped.size * 4 <= memory_limit():
        x = as_features(np.array(mapped), str(path))  # a copy: never a view of the map
    else:
        x = lazy_features(mapped, str(path), path.stem, quiet, digest=lambda: file_digest(path))
    return DataSplits(train=Dataset(x, None, path.stem))


def lazy_features(array: np.ndarray, source: str, name: str, quiet: bool = False,
                  digest=None) -> LazyArray:
    """Like :func:`as_features`, but rows stay on disk until indexed (checked once here);
    ``digest``: the file's content digest, for the run's data fingerprint."""
    _check_array(array, source)
    shape = array.shape[1:] if array.ndim != 3 else (1, *array.shape[1:])
    x = LazyArray(memmap_reader(array, source), len(array), shape, name=name, digest=digest)
    scan(x, source, quiet)
    return x


def _load_npz(path: Path, quiet: bool = False) -> DataSplits:
    def read(f):
        with np.load(f, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}

    _check_magic(path, b"PK", "a .npz (zip) archive")
    arrays = _read(path, read)
    if "x" not in arrays:
        names = ", ".join(sorted(arrays)) or "nothing"
        raise VaekitError(f"{path}: a .npz file must hold an array named 'x' (it holds {names})")
    x = as_features(arrays["x"], str(path))
    labels = None
    if "labels" in arrays:
        labels = as_labels(arrays["labels"], len(x), str(path))
    return DataSplits(train=Dataset(x, labels, path.stem))


def _check_magic(path: Path, magic: bytes, what: str) -> None:
    with open(path, "rb") as f:
        head = f.read(len(magic))
    if head != magic:
        raise VaekitError(f"{path}: not a readable numpy file (it does not start like {what})")


def _read(path: Path, reader):
    try:
        return reader(path)
    except ValueError as err:
        if "pickle" in str(err).lower() or "python objects" in str(err).lower():
            raise VaekitError(
                f"{path}: holds Python objects (pickled data), which vaekit never loads; "
                "save a numeric array instead"
            ) from None
        raise VaekitError(f"{path}: not a readable numpy file ({err})") from None
    except (OSError, EOFError) as err:
        raise VaekitError(f"{path}: not a readable numpy file ({err})") from None


def as_features(array: np.ndarray, source: str) -> torch.Tensor:
    """Check and convert user data to float32 ``[N, D]`` or ``[N, C, H, W]``."""
    _check_array(array, source)
    if array.ndim == 3:  # [N, H, W]: greyscale images without a channel axis
        array = array[:, None]
    x = torch.from_numpy(to_float32(array, source))
    bad = ~torch.isfinite(x)
    if bad.any():
        row = int(bad.reshape(len(x), -1).any(1).nonzero()[0])
        count = int(bad.sum())
        raise VaekitError(f"{source}: {count} value(s) are NaN or infinite (first in row {row})")
    return x


def _check_array(array: np.ndarray, source: str) -> None:
    if array.dtype.kind not in "biuf":
        raise VaekitError(f"{source}: data must be numeric, got dtype {array.dtype}")
    if array.ndim not in (2, 3, 4):
        raise VaekitError(
            f"{source}: data must be shaped [N, D] or [N, C, H, W] (or [N, H, W]), "
            f"got shape {tuple(array.shape)}"
        )
    if array.shape[0] == 0 or math.prod(array.shape[1:]) == 0:
        raise VaekitError(f"{source}: the dataset is empty (shape {tuple(array.shape)})")


def as_labels(array: np.ndarray, n: int, source: str) -> torch.Tensor:
    if array.ndim != 1 or len(array) != n:
        raise VaekitError(f"{source}: labels must be a 1-D array of length {n}, got {array.shape}")
    if array.dtype.kind not in "biu" and not (
        array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array))
    ):
        raise VaekitError(f"{source}: labels must be integers, got dtype {array.dtype}")
    return torch.from_numpy(array.astype(np.int64))


LOADERS = {".npy": _load_npy, ".npz": _load_npz}
