"""The IDX file format of MNIST and its relatives.

Layout: two zero bytes, a type code, the number of dimensions ``k``, then ``k`` big-endian
uint32 sizes, then the values in C order, big-endian. Every check names what is wrong.
"""

from __future__ import annotations

import math

import numpy as np

from vaekit.errors import VaekitError

TYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse(data: bytes, source: str) -> np.ndarray:
    """The array stored in the IDX bytes ``data`` (read-only view, native byte order
    for one-byte types); ``source`` names the file in error messages."""
    if len(data) < 4:
        raise VaekitError(f"{source}: not an IDX file: {len(data)} bytes, too short for its header")
    if data[0] != 0 or data[1] != 0:
        raise VaekitError(
            f"{source}: not an IDX file: magic number starts with bytes "
            f"{data[0]:#04x} {data[1]:#04x}, expected 0x00 0x00"
        )
    code, ndim = data[2], data[3]
    if code not in TYPES:
        known = ", ".join(f"{c:#04x}" for c in TYPES)
        raise VaekitError(f"{source}: unknown IDX type code {code:#04x} (known: {known})")
    if ndim == 0:
        raise VaekitError(f"{source}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise VaekitError(
            f"{source}: truncated IDX header: {ndim} dimensions need {header} bytes, "
            f"the file has {len(data)}"
        )
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", ndim, offset=4))
    dtype = TYPES[code]
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise VaekitError(
            f"{source}: IDX file {what}: header says shape {list(shape)} of {dtype.name} "
            f"({expected} bytes in all), the file has {len(data)} bytes"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape)


def encode(array: np.ndarray) -> bytes:
    """IDX bytes for ``array`` (the inverse of :func:`parse`; used to write test data)."""
    for code, dtype in TYPES.items():
        if array.dtype.kind == dtype.kind and array.dtype.itemsize == dtype.itemsize:
            header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
            return header + np.ascontiguousarray(array, dtype).tobytes()
    raise ValueError(f"IDX has no type for dtype {array.dtype}")
