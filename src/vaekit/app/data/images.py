"""A folder of images (PNG/JPEG) as a dataset.

Either images directly in the folder (no labels), or one sub-folder per class (labels are
the sub-folders' positions in sorted order; their names are kept as class names). Images
are resized to ``image_size`` x ``image_size`` when one is given, otherwise they must all
share one size. ``image_mode``: ``grey``, ``rgb``, or ``auto`` (grey when every image is
greyscale). Values are grey levels scaled to [0, 1], shaped ``[N, C, H, W]``.

Above the memory limit (:mod:`vaekit.app.data.lazy`) the images are decoded when a batch
needs them instead of all at once.

An alpha channel (transparency) is dropped, with a note on stderr. Images larger than
PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, ~89 megapixels) are refused
like damaged ones: a small file must not be able to claim gigabytes of memory.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vaekit.app.data import Dataset, DataSplits
from vaekit.app.data.lazy import LazyArray, UnreadableRows, files_digest, memory_limit
from vaekit.app.data.progress import progress, say
from vaekit.errors import VaekitError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_MODES = ("auto", "grey", "rgb")
_GREY = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_WIDE = {"I", "I;16", "I;16B", "I;16L", "I;16N"}  # 16-bit grey: scaled by 65535, not 255
_ALPHA = {"RGBA", "RGBa", "LA", "La", "PA"}


def load_folder(folder: Path, image_size: int = 0, image_mode: str = "auto",
                quiet: bool = False) -> DataSplits:
    files, labels, classes = _list(folder)
    sizes, modes, alpha = _headers(folder, files)
    if alpha:
        more = f" and {len(alpha) - 1} more" if len(alpha) > 1 else ""
        say(f"note: {folder}: alpha channel (transparency) dropped from {len(alpha)} image(s) "
            f"({_rel(folder, alpha[0])}{more}); their pixels keep the colour stored under it", quiet)
    size = (image_size, image_size) if image_size else _common_size(folder, files, sizes)
    channels = 3 if image_mode == "rgb" or (image_mode == "auto" and not modes <= _GREY) else 1
    shape = (channels, size[1], size[0])
    label_tensor = None if labels is None else torch.tensor(labels, dtype=torch.int64)

    def read(positions: np.ndarray) -> np.ndarray:
        out = np.empty((len(positions), *shape), np.float32)
        bad = {}  # every file of the batch that fails, each once, named in folder order
        for k, i in enumerate(positions):
            try:
                out[k] = read_image(files[i], size, channels)
            except _errors() as err:
                bad[int(i)] = f"{_rel(folder, files[i])} ({_problem(err, files[i])})"
        _report_unreadable(folder, [bad[i] for i in sorted(bad)])
        return out

    if len(files) * int(np.prod(shape)) * 4 > memory_limit():
        x = LazyArray(read, len(files), shape, name=folder.name, digest=lambda: files_digest(folder, files))
    else:
        x = torch.from_numpy(_read_all(folder, files, size, channels, shape, quiet))
    return DataSplits(train=Dataset(x, label_tensor, folder.name or "images", classes=classes,
                                    files=[_rel(folder, f) for f in files]))


def read_image(path: Path, size: tuple[int, int], channels: int) -> np.ndarray:
    """One image as float32 ``[C, H, W]`` in [0, 1], resized to ``size`` (width, height)."""
    from PIL import Image

    with _open(path) as img:
        if channels == 1 and img.mode in _WIDE:
            img = Image.fromarray(np.asarray(img, dtype=np.float32) / 65535.0, mode="F")
            scale = 1.0
        else:
            img = img.convert("L" if channels == 1 else "RGB")
            scale = 255.0
        if img.size != size:
            img = img.resize(size, Image.Resampling.LANCZOS)
        array = np.asarray(img, dtype=np.float32) / scale
    array = np.clip(array, 0.0, 1.0)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _list(folder: Path) -> tuple[list[Path], list[int] | None, list[str] | None]:
    if not folder.is_dir():
        raise VaekitError(f"image folder not found: {folder}")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    top = [p for p in entries if p.is_file() and p.suffix.lower() in SUFFIXES]
    class_dirs = [d for d in entries if d.is_dir() and _images_in(d)]
    if top and class_dirs:
        raise VaekitError(
            f"{folder} mixes images ({top[0].name}, ...) with class sub-folders "
            f"({class_dirs[0].name}/, ...): put every image in a class folder, or none"
        )
    if top:
        return top, None, None
    if not class_dirs:
        raise VaekitError(
            f"{folder} holds no {'/'.join(s[1:].upper() for s in SUFFIXES)} images "
            "(looked in it and in its immediate sub-folders)"
        )
    files, labels = [], []
    for label, d in enumerate(class_dirs):
        found = _images_in(d)
        files += found
        labels += [label] * len(found)
    return files, labels, [d.name for d in class_dirs]


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SUFFIXES)


def _headers(folder: Path, files: list[Path]) -> tuple[list[tuple[int, int]], set[str], list[Path]]:
    """Every image's (width, height), the set of modes, and the images with an alpha
    channel, from headers only."""
    sizes, modes, alpha, bad = [], set(), [], []
    for path in files:
        try:
            with _open(path) as img:
                sizes.append(img.size)
                modes.add(img.mode)
                if img.mode in _ALPHA or "transparency" in img.info:
                    alpha.append(path)
        except _errors() as err:
            bad.append(f"{_rel(folder, path)} ({_problem(err, path)})")
            sizes.append((0, 0))
    _report_unreadable(folder, bad)
    return sizes, modes, alpha


@contextmanager
def _open(path: Path) -> Iterator[PILImage]:
    """``PIL.Image.open``, with its decompression-bomb warning (between PIL's limit and twice
    it, where PIL would still decode the whole image) raised as an error like the bomb itself."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(path)
    with img:
        yield img


def _errors() -> tuple[type[BaseException], ...]:
    """What PIL raises for a file it cannot or will not decode: OSError mostly, but a few
    damaged PNG headers give ValueError or SyntaxError, and too many pixels a bomb error."""
    from PIL import Image

    return (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning)


def _common_size(folder: Path, files: list[Path], sizes: list[tuple[int, int]]) -> tuple[int, int]:
    first = sizes[0]
    for path, size in zip(files, sizes, strict=True):
        if size != first:
            raise VaekitError(
                f"images differ in size: {_rel(folder, files[0])} is {first[0]}x{first[1]} but "
                f"{_rel(folder, path)} is {size[0]}x{size[1]} (width x height); "
                "pass --image-size N to resize all to N x N"
            )
    return first


def _read_all(folder, files, size, channels, shape, quiet) -> np.ndarray:
    out = np.empty((len(files), *shape), np.float32)
    bad = []
    with progress(f"reading {len(files)} images", len(files), quiet) as advance:
        for i, path in enumerate(files):
            try:
                out[i] = read_image(path, size, channels)
            except _errors() as err:
                bad.append(f"{_rel(folder, path)} ({_problem(err, path)})")
            advance(1)
    _report_unreadable(folder, bad)
    return out


def _report_unreadable(folder: Path, bad: list[str]) -> None:
    if bad:
        raise UnreadableRows(str(folder), bad, "image(s)")


def _rel(folder: Path, path: Path) -> str:
    return str(path.relative_to(folder))


def _problem(err: BaseException, path: Path) -> str:
    """Why an image cannot be used, in a few words."""
    from PIL import Image

    if isinstance(err, Image.DecompressionBombError | Image.DecompressionBombWarning):
        found = re.search(r"\((\d+) pixels\)", str(err))  # PIL's message: "Image size (N pixels) exceeds ..."
        pixels = f"{int(found[1]):,} pixels" if found else "too many pixels"
        return (f"{pixels}, more than the {Image.MAX_IMAGE_PIXELS:,} allowed (PIL.Image.MAX_IMAGE_PIXELS): "
                "refused as a possible decompression bomb")
    return _short(err, path)


def _short(err: BaseException, path: Path) -> str:
    """The error without the (long) path the message names anyway."""
    text = str(err).split("\n")[0].replace(f"'{path}'", "").replace(str(path), "").strip()
    return text or type(err).__name__
