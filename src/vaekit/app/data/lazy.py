"""Data larger than memory: rows read on demand, through the same API as a tensor.

In-memory tensors are the fast default. A dataset whose float32 size exceeds the memory
limit (``DEFAULT_MEMORY_LIMIT`` = 2 GiB, or ``$VAEKIT_MEMORY_LIMIT`` in bytes, ``K``/``M``/``G``
suffixes allowed) becomes a :class:`LazyArray` instead: a memory-mapped ``.npy`` file or a
folder of image files whose rows are read when indexed. Indexing a ``LazyArray`` (an int, a
slice, an index tensor) returns an ordinary float32 tensor, so training batches by index
and evaluation slices in chunks exactly as with a tensor.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from vaekit.errors import VaekitError

ENV_MEMORY_LIMIT = "VAEKIT_MEMORY_LIMIT"
DEFAULT_MEMORY_LIMIT = 2 * 1024**3
SCAN_ROWS_BYTES = 64 * 1024**2  # rows per chunk when scanning: about this many bytes

Reader = Callable[[np.ndarray], np.ndarray]  # source positions -> float32 rows
Transform = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (positions, rows) -> rows


class UnreadableRows(VaekitError):
    """Rows whose source cannot be read (damaged image files). ``items`` names each one
    (the message shows a few), so a scan can carry on and report them all at once."""

    SHOWN = 5

    def __init__(self, where: str, items: list[str], what: str = "row(s)"):
        self.where, self.items, self.what = where, items, what
        more = f", and {len(items) - self.SHOWN} more" if len(items) > self.SHOWN else ""
        super().__init__(f"{where}: {len(items)} {what} cannot be read: {', '.join(items[: self.SHOWN])}{more}")


def memory_limit() -> int:
    """Bytes of float32 data kept in memory; above this, data are read on demand."""
    text = os.environ.get(ENV_MEMORY_LIMIT, "").strip()
    if not text:
        return DEFAULT_MEMORY_LIMIT
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1].upper(), 1)
    number = text[:-1] if scale > 1 else text
    try:
        value = float(number) * scale
    except ValueError:
        value = -1.0
    if not value >= 0 or math.isinf(value):
        raise VaekitError(f"{ENV_MEMORY_LIMIT} must be a number of bytes like 2G or 500M, got '{text}'")
    return int(value)


class LazyArray:
    """Rows of a source (``read(positions)``) shaped ``[N, *event_shape]``, read when indexed.

    ``take`` selects rows and ``map`` adds a per-batch transform without reading anything;
    transforms get the rows' positions in the source, so a seeded per-example transform
    gives the same values however the rows are batched.
    """

    def __init__(
        self, read: Reader, length: int, event_shape: tuple[int, ...],
        index: np.ndarray | None = None, transforms: tuple[Transform, ...] = (),
        name: str = "data", digest: Callable[[], str] | None = None,
    ):
        self._read = read
        self._digest = digest  # SHA-256 of the whole source (files), computed when first asked
        self._length = length
        self.event_shape = tuple(event_shape)
        self._index = index
        self._transforms = transforms
        self.name = name
        self.value_range: tuple[float, float, bool] | None = None  # filled by a scan

    # ---- tensor-like surface
    def __len__(self) -> int:
        return self._length if self._index is None else len(self._index)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.event_shape))

    def dim(self) -> int:
        return 1 + len(self.event_shape)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, int | np.integer):
            return self[np.array([int(key)])][0]
        positions = self._positions(key)
        rows = self._read(positions).reshape(len(positions), *self.event_shape)
        for transform in self._transforms:
            rows = transform(positions, rows)
        return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))

    # ---- lazy operations
    def take(self, index) -> LazyArray:
        """The rows ``index`` (positions in this array), still unread."""
        return self._replace(index=self._positions(index))

    def map(self, transform: Transform) -> LazyArray:
        return self._replace(transforms=self._transforms + (transform,))

    def chunks(self, rows: int | None = None) -> Iterator[torch.Tensor]:
        """Consecutive row blocks as tensors (about ``SCAN_ROWS_BYTES`` each by default)."""
        for block in self.blocks(rows):
            yield self[block]

    def blocks(self, rows: int | None = None) -> Iterator[slice]:
        """The slices :meth:`chunks` reads."""
        rows = rows or max(1, SCAN_ROWS_BYTES // max(1, 4 * math.prod(self.event_shape)))
        for start in range(0, len(self), rows):
            yield slice(start, start + rows)

    def content_fingerprint(self) -> str | None:
        """A digest of every value these rows can hold: the whole source's streamed hash and
        which rows are taken (the transforms follow from the run's settings, which resume
        compares). None where the source has no digest."""
        if self._digest is None:
            return None
        h = hashlib.sha256(f"{self._digest()}:{self._length}:{list(self.event_shape)}".encode())
        h.update(b"all" if self._index is None else np.ascontiguousarray(self._index, np.int64).tobytes())
        return h.hexdigest()

    def to_tensor(self) -> torch.Tensor:
        return torch.cat(list(self.chunks())) if len(self) else torch.empty(self.shape)

    def _replace(self, **changes) -> LazyArray:
        values = {"read": self._read, "length": self._length, "event_shape": self.event_shape,
                  "index": self._index, "transforms": self._transforms, "name": self.name,
                  "digest": self._digest}
        values.update(changes)
        out = LazyArray(**values)
        if "transforms" not in changes:
            out.value_range = self.value_range if "index" not in changes else None
        return out

    def _positions(self, key) -> np.ndarray:
        n = len(self)
        if isinstance(key, slice):
            local = np.arange(n)[key]
        else:
            if isinstance(key, torch.Tensor):
                key = key.numpy()
            local = np.asarray(key)
            if local.dtype == bool:
                local = np.flatnonzero(local)
            local = local.astype(np.int64).reshape(-1)
            if local.size and (local.min() < -n or local.max() >= n):
                raise IndexError(f"index out of range for {n} rows")
            local = np.where(local < 0, local + n, local)
        return local if self._index is None else self._index[local]


def is_lazy(x) -> bool:
    return isinstance(x, LazyArray)


def value_range(x: torch.Tensor | LazyArray) -> tuple[float, float, bool]:
    """(min, max, all values 0 or 1) of a tensor, or of a lazy array in chunks."""
    if not is_lazy(x):
        binary = bool(((x == 0) | (x == 1)).all())
        return float(x.min()), float(x.max()), binary
    if x.value_range is None:
        scan(x, x.name)
    return x.value_range


def scan(x: LazyArray, source: str, quiet: bool = False) -> None:
    """Read ``x`` once in chunks: refuse NaN/infinite values (naming the first bad row)
    and remember its value range, so later checks need not read it again. Under torchrun
    each process reads every W-th chunk and the processes pool what they found."""
    from vaekit import distributed
    from vaekit.app.data.progress import progress

    group = distributed.current()
    blocks = list(x.blocks())
    if group is not None:
        blocks = blocks[group.rank :: group.world]
    lo, hi, binary = math.inf, -math.inf, True
    unreadable: UnreadableRows | None = None
    bad_row: int | None = None
    with progress(f"checking {source}", sum(min(b.stop, len(x)) - b.start for b in blocks), quiet) as advance:
        for block in blocks:
            try:
                chunk = x[block]
            except UnreadableRows as err:  # go on, so that one message names every bad file
                items = err.items if unreadable is None else unreadable.items + err.items
                unreadable = UnreadableRows(err.where, items, err.what)
                advance(min(block.stop, len(x)) - block.start)
                continue
            flat = chunk.reshape(len(chunk), -1)
            bad = ~torch.isfinite(flat).all(1)
            if bad.any():
                bad_row = block.start + int(bad.nonzero()[0])
                break
            lo, hi = min(lo, float(flat.min())), max(hi, float(flat.max()))
            binary = binary and bool(((flat == 0) | (flat == 1)).all())
            advance(len(chunk))
    if group is not None:
        lo, hi, binary, bad_row, unreadable = _pooled(group, lo, hi, binary, bad_row, unreadable)
    if bad_row is not None:
        raise VaekitError(f"{source}: NaN or infinite values (first in row {bad_row})")
    if unreadable is not None:
        raise unreadable
    x.value_range = (lo, hi, binary)


def _pooled(group, lo: float, hi: float, binary: bool, bad_row: int | None, unreadable: UnreadableRows | None):
    """Every process's findings of :func:`scan`, combined on every process."""
    import json

    from vaekit.distributed import exchange

    mine = {"lo": lo, "hi": hi, "binary": binary, "bad": bad_row,
            "unreadable": None if unreadable is None else [unreadable.where, unreadable.items, unreadable.what]}
    found = [json.loads(text) for text in exchange(json.dumps(mine).encode(), group)]
    bad = [f["bad"] for f in found if f["bad"] is not None]
    parts = [f["unreadable"] for f in found if f["unreadable"] is not None]
    pooled = None
    if parts:
        pooled = UnreadableRows(parts[0][0], [item for part in parts for item in part[1]], parts[0][2])
    return (min(f["lo"] for f in found), max(f["hi"] for f in found), all(f["binary"] for f in found),
            min(bad) if bad else None, pooled)


def memmap_reader(array: np.ndarray, source: str = "data") -> Reader:
    """Rows of a (memory-mapped) array as float32; positions are read in sorted order,
    which is what a memory map serves fastest, and returned in the order asked."""

    def read(positions: np.ndarray) -> np.ndarray:
        if positions.size > 1 and np.any(positions[1:] < positions[:-1]):
            order = np.argsort(positions, kind="stable")
            rows = np.empty((len(positions), *array.shape[1:]), np.float32)
            rows[order] = to_float32(array[positions[order]], source, positions[order])
            return rows
        return to_float32(array[positions], source, positions)

    return read


FLOAT32_MAX = float(np.finfo(np.float32).max)


def to_float32(array: np.ndarray, source: str, rows: np.ndarray | None = None) -> np.ndarray:
    """``array`` as float32. A finite value beyond float32's range (float64 data) is refused,
    naming its row (``rows``: the source rows of ``array``'s rows), instead of becoming inf."""
    with np.errstate(over="ignore"):  # overflow is found and named below
        out = np.ascontiguousarray(array, dtype=np.float32)
    if array.dtype.kind != "f" or array.dtype.itemsize <= 4:
        return out
    lost = np.isinf(out)
    if lost.any():
        lost &= np.isfinite(array)
    if lost.any():
        first = np.unravel_index(int(lost.argmax()), lost.shape)
        row = int(first[0]) if rows is None else int(rows[first[0]])
        column = f", column {int(first[1])}" if array.ndim == 2 else ""
        raise VaekitError(
            f"{source}: {int(lost.sum())} value(s) are beyond float32's range (±{FLOAT32_MAX:.3g}), "
            f"the precision vaekit computes in (first: {float(array[first]):g} in row {row}{column}); "
            "rescale the data"
        )
    return out


# ---------------------------------------------------------------------- fingerprints of sources
FINGERPRINTS = "fingerprints.json"  # in the data cache: digests by path, size, mtime and ctime
MAX_REMEMBERED = 1000


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, streamed (memory stays small whatever its size); remembered
    in the data cache by the file's path, size, modification and change times, so a large
    file is read once until it changes."""
    path = Path(path)
    return _remembered(path, [("", path)], lambda: _stream(path))


def files_digest(folder: Path, files: list[Path]) -> str:
    """SHA-256 over the names and contents of ``files`` (a folder of images), remembered like
    :func:`file_digest` by every file's signature."""
    def compute() -> str:
        h = hashlib.sha256()
        for path in files:
            h.update(f"{path.relative_to(folder)}:{_stream(path)}\n".encode())
        return h.hexdigest()

    return _remembered(Path(folder), [(str(p.relative_to(folder)), p) for p in files], compute)


RECENT_NS = 2 * 10**9  # a file changed this recently may change again within its mtime's resolution


def _stream(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as err:
        raise VaekitError(f"cannot read {path}: {err.strerror or err}") from None


def _remembered(key_path: Path, files: list[tuple[str, Path]], compute: Callable[[], str]) -> str:
    from vaekit.app.data.download import cache_dir
    from vaekit.rundir import read_json, write_json

    try:
        stats = [(name, path.stat()) for name, path in files]
    except OSError as err:
        raise VaekitError(f"cannot read {key_path}: {err.strerror or err}") from None
    signature = [f"{n}:{s.st_size}:{s.st_mtime_ns}:{s.st_ctime_ns}:{s.st_ino}" for n, s in stats]
    stamp = hashlib.sha256(json.dumps(signature).encode()).hexdigest()
    key = os.path.realpath(key_path)
    store = cache_dir() / FINGERPRINTS
    try:
        known = read_json(store, "remembered data fingerprints")
        known = known if isinstance(known, dict) else {}
    except VaekitError:
        known = {}
    entry = known.get(key)
    if isinstance(entry, list) and len(entry) == 2 and entry[0] == stamp and isinstance(entry[1], str):
        return entry[1]
    digest = compute()
    newest = max((s.st_mtime_ns for _, s in stats), default=0)
    if time.time_ns() - newest < RECENT_NS:
        return digest  # too fresh to remember: a change in the same clock tick would go unseen
    known.pop(key, None)
    known[key] = [stamp, digest]
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        write_json(store, dict(list(known.items())[-MAX_REMEMBERED:]))
    except (OSError, VaekitError):
        pass  # a cache that cannot be written only costs a re-read next time
    return digest
