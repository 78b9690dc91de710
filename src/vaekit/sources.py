"""Data as the library takes it: a tensor [N, ...] (or an array read on demand that indexes
like one), an ``(x, labels)`` pair, a ``torch.utils.data.Dataset`` whose items are ``x`` or
``(x, y)``, or a ``DataLoader``, used as given.

Tensors are the fast path: minibatches are gathered by index from one tensor. For tensors
and Datasets vaekit draws the order itself (from a generator it checkpoints), so an
interrupted epoch resumes bit for bit; a DataLoader brings its own order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from vaekit.errors import VaekitError

FULL_HASH_BYTES = 512 * 1024**2  # earlier versions hashed only sampled rows above this (and for data read on demand)
SAMPLED_ROWS = 4096
SAMPLED_ITEMS = 64  # items of a Dataset hashed for its fingerprint


class Source:
    """One of the accepted kinds of data, with the few operations training needs."""

    def __init__(self, data, labels=None, what: str = "data"):
        self.what = what
        self.loader: DataLoader | None = None
        self.dataset: Dataset | None = None
        self.x = self.labels = None
        self.pinned = False
        if isinstance(data, DataLoader):
            self.kind, self.loader = "loader", data
        elif isinstance(data, Dataset) and not _is_tensor_like(data):
            self.kind, self.dataset = "dataset", data
        else:
            self.kind = "tensor"
            self.x, self.labels = _tensor_pair(data, labels, what)
        if labels is not None and self.kind != "tensor":
            raise VaekitError(f"{what}: labels go inside a Dataset's or DataLoader's items, as (x, y)")

    def pin(self) -> None:
        """Page-locked host memory, for asynchronous copies to a CUDA device: a tensor is
        pinned once, a Dataset's batches as they are collated (a DataLoader is used as given)."""
        self.pinned = True
        if self.kind == "tensor" and torch.is_tensor(self.x):
            self.x = self.x.pin_memory()

    def __len__(self) -> int:
        if self.kind == "tensor":
            return len(self.x)
        if self.kind == "dataset":
            return len(self.dataset)
        return len(self.loader.dataset)

    def steps(self, batch_size: int) -> int:
        """Minibatches in one pass."""
        if self.kind == "loader":
            return len(self.loader)
        return -(-len(self) // batch_size)

    def batches(self, batch_size: int, order: torch.Tensor, start_step: int = 0,
                rank: int = 0, world: int = 1) -> Iterator[tuple]:
        """``(x, y, size)`` for each minibatch in the order of the permutation ``order``,
        from ``start_step`` (tensors and Datasets); a DataLoader yields its own batches from
        the start. ``size`` counts the whole minibatch; with ``world`` ranks, ``x`` and ``y``
        are rank ``rank``'s share of it (every ``world``-th example, the only rows read),
        and None for a rank whose share is empty (a last minibatch smaller than ``world``)."""
        if self.kind == "loader":
            for item in self.loader:
                x, y = split_item(item)
                yield x, y, len(x)
            return
        steps = [order[s : s + batch_size] for s in range(start_step * batch_size, len(self), batch_size)]
        parts = [rows[rank::world] for rows in steps]
        if self.kind == "tensor":
            for rows, index in zip(steps, parts, strict=True):
                if not len(index):
                    yield None, None, len(rows)
                    continue
                # index_select, not x[index]: the same rows, gathered several times faster on a CPU
                # (docs/performance.md)
                x = self.x.index_select(0, index) if torch.is_tensor(self.x) else self.x[index]  # or read on demand
                yield x, None if self.labels is None else self.labels[index], len(rows)
            return
        # an empty share can only be the last one (batch_size >= world): read the others
        sampler = [index.tolist() for index in parts if len(index)]
        items = iter(DataLoader(self.dataset, batch_sampler=sampler, collate_fn=default_collate,
                                generator=_quiet_generator(), pin_memory=self.pinned))
        for rows, index in zip(steps, parts, strict=True):
            if not len(index):
                yield None, None, len(rows)
                continue
            yield (*split_item(next(items)), len(rows))

    def in_order(self, batch_size: int) -> Iterator[tuple]:
        """(x, y) minibatches over every example once, in the data's order."""
        if self.kind == "tensor":
            for s in range(0, len(self), batch_size):
                yield self.x[s : s + batch_size], None if self.labels is None else self.labels[s : s + batch_size]
        elif self.kind == "dataset":
            for item in DataLoader(self.dataset, batch_size=batch_size, collate_fn=default_collate,
                                   generator=_quiet_generator()):
                yield split_item(item)
        else:
            yield from (split_item(item) for item in self.loader)

    def part_in_order(self, batch_size: int, rank: int, world: int) -> Iterator[tuple]:
        """``(x, y, size)`` for every minibatch of :meth:`in_order`, read only when it is
        rank ``rank``'s (every ``world``-th from ``rank``), else ``(None, None, size)``; a
        DataLoader yields its own batches on every rank."""
        if self.kind == "loader":
            for x, y in self.in_order(batch_size):
                yield x, y, len(x)
            return
        starts = range(0, len(self), batch_size)
        mine = [s for i, s in enumerate(starts) if i % world == rank]
        if self.kind == "tensor":
            read = ((self.x[s : s + batch_size], None if self.labels is None else self.labels[s : s + batch_size])
                    for s in mine)
        else:
            sampler = [list(range(s, min(s + batch_size, len(self)))) for s in mine]
            read = (split_item(item) for item in DataLoader(self.dataset, batch_sampler=sampler,
                                                            collate_fn=default_collate, generator=_quiet_generator()))
        for i, s in enumerate(starts):
            size = min(batch_size, len(self) - s)
            yield (*next(read), size) if i % world == rank else (None, None, size)

    def first_batch(self, batch_size: int) -> tuple:
        return next(iter(self.in_order(batch_size)))

    def fingerprint(self) -> str:
        """A SHA-256 of the data (resuming on other data is refused): every value of
        in-memory tensors up to ``FULL_HASH_BYTES``, else the shape and evenly spaced rows;
        for a Dataset its length and ``SAMPLED_ITEMS`` evenly spaced items."""
        if self.kind == "tensor":
            return fingerprint(self.x)
        dataset = self.dataset if self.kind == "dataset" else self.loader.dataset
        h = hashlib.sha256(f"{self.kind}:{len(dataset)}".encode())
        if hasattr(dataset, "__getitem__"):
            for i in np.linspace(0, len(dataset) - 1, min(len(dataset), SAMPLED_ITEMS)).astype(int):
                for t in split_item(dataset[int(i)]):
                    if t is not None:
                        h.update(torch.as_tensor(t).contiguous().reshape(-1).view(torch.uint8).numpy())
        return h.hexdigest()


def training_fingerprint(train: Source, validation: Source | None, sampled: bool = False) -> str:
    """The fingerprint a checkpoint records of its training and validation data (for tensors
    the same as vaekit 0.1 wrote, so its runs resume). ``sampled``: the weaker fingerprint
    earlier versions recorded for large or on-demand data (accepted on resume)."""
    if train.kind == "tensor" and (validation is None or validation.kind == "tensor"):
        return fingerprint(train.x, None if validation is None else validation.x, sampled=sampled)
    parts = [train.fingerprint(), "" if validation is None else validation.fingerprint()]
    return hashlib.sha256(":".join(parts).encode()).hexdigest()


def as_tensors(data, labels=None, what: str = "data") -> tuple:
    """(x, labels) tensors of any accepted kind of data; a Dataset or DataLoader is read
    once, in order (x may stay an array read on demand)."""
    source = data if isinstance(data, Source) else Source(data, labels, what)
    if source.kind == "tensor":
        return source.x, source.labels
    xs, ys = [], []
    for x, y in source.in_order(1000):
        xs.append(x)
        ys.append(y)
    if not xs:
        raise VaekitError(f"{what} is empty")
    has_labels = all(y is not None for y in ys)
    return torch.cat(xs), torch.cat(ys).long() if has_labels else None


def binarize(x: torch.Tensor | None, generator: torch.Generator, shape: tuple | None = None,
             rows: slice = slice(None), dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """x ~ Bernoulli(x) (dynamic binarisation), drawn as ``u < x`` for u uniform: exactly the
    numbers and the use of ``generator`` of ``torch.bernoulli``, and faster. The draw is made
    for ``shape`` (a whole minibatch; default ``x``'s, of ``dtype``) and taken at ``rows``, so
    every process draws the same numbers and keeps its own examples'; without ``x`` (a rank
    with no examples in this minibatch) the draw is still made, keeping the generator in step."""
    dtype = dtype or x.dtype
    u = torch.rand(shape or x.shape, generator=generator, dtype=dtype if dtype.is_floating_point else torch.float32)
    return None if x is None else (u[rows] < x).to(x.dtype)


def split_item(item) -> tuple:
    """(x, y) of a Dataset item or a DataLoader batch: a tensor x, or a pair (x, y)."""
    if isinstance(item, (tuple, list)):
        if len(item) == 1:
            return item[0], None
        if len(item) >= 2:
            return item[0], item[1]
    if isinstance(item, dict) and "x" in item:
        return item["x"], item.get("y")
    if torch.is_tensor(item):
        return item, None
    raise VaekitError(f"a data item must be a tensor x or a pair (x, y); got {type(item).__name__}")


def fingerprint(*arrays, sampled: bool = False) -> str:
    """SHA-256 of the given arrays, covering every value: of in-memory tensors directly; of
    an array read on demand through its ``content_fingerprint()`` (a digest of its whole
    source, e.g. a streamed hash of the file, and of which rows it takes). Arrays without
    one (and everything above ``FULL_HASH_BYTES`` with ``sampled``, as earlier versions did)
    are hashed by their shape and ``SAMPLED_ROWS`` evenly spaced rows."""
    h = hashlib.sha256()
    for x in arrays:
        if x is None:
            continue
        h.update(json.dumps(list(x.shape)).encode())
        content = None if sampled else getattr(x, "content_fingerprint", lambda: None)()
        if content is not None:
            h.update(content.encode())
            continue
        if not (torch.is_tensor(x) and (not sampled or x.numel() * x.element_size() <= FULL_HASH_BYTES)):
            x = x[torch.linspace(0, len(x) - 1, min(len(x), SAMPLED_ROWS)).long()]
        h.update(x.contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _quiet_generator() -> torch.Generator:
    # A DataLoader draws a seed for its workers each time it is iterated, from the global
    # generator unless given one: that draw would shift the run's reparameterisation stream
    # on a mid-epoch resume. vaekit's own loaders need no randomness, so they get a fixed one.
    return torch.Generator().manual_seed(0)


def _is_tensor_like(data) -> bool:
    return hasattr(data, "shape") and hasattr(data, "__getitem__") and hasattr(data, "__len__")


def _tensor_pair(data, labels, what: str) -> tuple:
    if isinstance(data, (tuple, list)):
        if len(data) != 2 or labels is not None:
            raise VaekitError(f"{what}: give a tensor x, or a pair (x, labels)")
        data, labels = data
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    if not _is_tensor_like(data):
        raise VaekitError(
            f"{what} must be a tensor, an (x, labels) pair, a torch Dataset or a DataLoader; "
            f"got {type(data).__name__}"
        )
    if len(data.shape) < 2:
        raise VaekitError(f"{what} must be shaped [N, ...] with one example per row; got shape {list(data.shape)}")
    if labels is not None:
        labels = torch.as_tensor(labels)
        if labels.dtype.is_floating_point or labels.shape != (len(data),):
            raise VaekitError(
                f"{what}: labels must be {len(data)} integer class indices, got {labels.dtype} {list(labels.shape)}"
            )
        labels = labels.long()
    return data, labels
