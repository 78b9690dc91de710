"""MNIST and its drop-in relatives, from their official gzipped IDX files.

Each set has 60,000 training and 10,000 test images of 28x28 grey levels (scaled to
[0, 1]) with labels 0-9. Checksums are pinned here and every file is verified on every
read; where only a checksum of the published ``.gz`` file exists, that is what is checked.

Left out: EMNIST. Its per-file checksums are not published (only the md5 of the 560 MB
``gzip.zip`` archive that bundles all splits), so its files cannot be verified one by one.
"""

from __future__ import annotations

import numpy as np
import torch

from vaekit.app.data import Dataset, DataSplits
from vaekit.app.data import download as dl
from vaekit.app.data.idx import parse
from vaekit.errors import VaekitError

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# Decompressed sizes, fixed by the IDX layout every member of the family shares (a 16-byte
# header + 28x28 bytes per image; an 8-byte header + a byte per label). They cap downloads
# and decompression, so a hostile mirror (the official hosts are plain http) cannot fill
# the disk or memory.
SIZES = (16 + 60000 * 28 * 28, 8 + 60000, 16 + 10000 * 28 * 28, 8 + 10000)

# sha256 of the *decompressed* files, computed from the official files (the copies in
# ../shared/data/mnist; three of their .gz files also match torchvision's published md5s,
# the fourth is a recompressed copy whose contents are identical). A mirror may recompress
# the files; the contents must still match.
MNIST = dl.RemoteDataset(
    name="mnist",
    files=(
        dl.RemoteFile(FILES[0], size=SIZES[0],
                      sha256="ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        dl.RemoteFile(FILES[1], size=SIZES[1],
                      sha256="65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        dl.RemoteFile(FILES[2], size=SIZES[2],
                      sha256="0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        dl.RemoteFile(FILES[3], size=SIZES[3],
                      sha256="ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    ),
    mirrors=(
        "http://yann.lecun.com/exdb/mnist",  # the official host
        "https://ossci-datasets.s3.amazonaws.com/mnist",  # PyTorch's mirror (torchvision)
        "https://storage.googleapis.com/cvdf-datasets/mnist",  # CVDF's mirror (TensorFlow/Keras)
    ),
    download_size="~12 MB",
    verified_by="sha256 of the decompressed files",
)

# md5 of the published .gz files, from the "Get the Data" table of the official README,
# https://github.com/zalandoresearch/fashion-mnist (the same values are in torchvision's
# torchvision/datasets/mnist.py, FashionMNIST.resources).
FASHION_MNIST = dl.RemoteDataset(
    name="fashion-mnist",
    files=(
        dl.RemoteFile(FILES[0], md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d", size=SIZES[0]),
        dl.RemoteFile(FILES[1], md5="25c81989df183df01b3e8a0aad5dffbe", size=SIZES[1]),
        dl.RemoteFile(FILES[2], md5="bef4ecab320f06d8554ea6380940ec79", size=SIZES[2]),
        dl.RemoteFile(FILES[3], md5="bb300cfdad3c16e7a12a480ee83cd310", size=SIZES[3]),
    ),
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",  # the official host
        # the official repository's own copies (its README: "the dataset appears under data/fashion")
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion",
    ),
    download_size="~30 MB",
    verified_by="md5 of the published .gz files",
)

# md5 of the published .gz files, from torchvision's torchvision/datasets/mnist.py
# (KMNIST.resources; https://github.com/pytorch/vision). The KMNIST authors' repository
# (https://github.com/rois-codh/kmnist) links the files but publishes no checksums.
KMNIST = dl.RemoteDataset(
    name="kmnist",
    files=(
        dl.RemoteFile(FILES[0], md5="bdb82020997e1d708af4cf47b453dcf7", size=SIZES[0]),
        dl.RemoteFile(FILES[1], md5="e144d726b3acfaa3e44228e80efcd344", size=SIZES[1]),
        dl.RemoteFile(FILES[2], md5="5c965bf0a639b31b8f53240b1b52f4d7", size=SIZES[2]),
        dl.RemoteFile(FILES[3], md5="7320c461ea6c1c855c0b718fb2a4b134", size=SIZES[3]),
    ),
    mirrors=(
        "http://codh.rois.ac.jp/kmnist/dataset/kmnist",  # the official host
        # where the authors' README now links; a recompressed copy fails the md5 and is refused
        "https://storage.googleapis.com/kuzushiji-mnist",
    ),
    download_size="~21 MB",
    verified_by="md5 of the published .gz files",
)

REMOTE = {d.name: d for d in (MNIST, FASHION_MNIST, KMNIST)}


def load(name: str, data_dir: str | None = None, mirror: str | None = None,
         quiet: bool = False, splits: tuple[str, ...] = ("train", "test")) -> DataSplits:
    """The official train/test splits of ``name``: images ``[N, 1, 28, 28]`` in [0, 1].
    Splits not named in ``splits`` are None (every file is still verified)."""
    files = dl.contents(REMOTE[name], data_dir, mirror, quiet)
    train = _split(files, FILES[0], FILES[1], name) if "train" in splits else None
    test = _split(files, FILES[2], FILES[3], name) if "test" in splits else None
    return DataSplits(train=train, test=test)


def _split(files: dict[str, bytes], images_name: str, labels_name: str, name: str) -> Dataset:
    images = parse(files[images_name], f"{name}/{images_name}")
    labels = parse(files[labels_name], f"{name}/{labels_name}")
    if images.ndim != 3 or images.dtype != np.uint8:
        raise VaekitError(
            f"{name}/{images_name}: expected uint8 images shaped [N, H, W], "
            f"got {images.dtype} shaped {list(images.shape)}"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise VaekitError(
            f"{name}/{labels_name}: expected {len(images)} labels (one per image), "
            f"got shape {list(labels.shape)}"
        )
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0).unsqueeze(1)
    return Dataset(x, torch.from_numpy(labels.astype(np.int64)), name)
