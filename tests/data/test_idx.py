"""IDX parsing: round trips for every type code, and one clear error per kind of damage."""

from __future__ import annotations

import numpy as np
import pytest

from vaekit.app.data.idx import TYPES, encode, parse
from vaekit.errors import VaekitError


@pytest.mark.parametrize("dtype", sorted({d.str for d in TYPES.values()}))
def test_round_trip_every_type(dtype):
    array = (np.arange(24) - 5).astype(dtype).reshape(2, 3, 4)
    if np.dtype(dtype).kind == "u":
        array = np.arange(24, dtype=dtype).reshape(2, 3, 4)
    parsed = parse(encode(array), "x")
    assert parsed.shape == (2, 3, 4)
    np.testing.assert_array_equal(parsed, array)


def test_header_layout_is_the_published_one():
    data = encode(np.zeros((3, 2), np.uint8))
    # magic 0x00000802: two zero bytes, type 0x08 (unsigned byte), 2 dimensions; sizes big-endian
    assert data[:4] == bytes([0, 0, 8, 2])
    assert data[4:12] == bytes([0, 0, 0, 3, 0, 0, 0, 2])
    assert len(data) == 12 + 6


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x00\x00", "too short for its header"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x00", "magic number starts with bytes 0x01 0x00"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x00", "unknown IDX type code 0x07"),
        (b"\x00\x00\x08\x00", "declares 0 dimensions"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated IDX header: 3 dimensions need 16 bytes"),
    ],
)
def test_bad_headers(data, message):
    with pytest.raises(VaekitError, match=message):
        parse(data, "f.idx")


def test_wrong_length_names_shape_and_sizes():
    good = encode(np.zeros((10, 4, 4), np.uint8))
    with pytest.raises(VaekitError, match=r"f: IDX file truncated: header says shape \[10, 4, 4\] of uint8 "
                                          r"\(176 bytes in all\), the file has 175 bytes"):
        parse(good[:-1], "f")
    with pytest.raises(VaekitError, match="has trailing bytes"):
        parse(good + b"\0", "f")
    wide = encode(np.zeros((2, 3), ">i4"))
    with pytest.raises(VaekitError, match="of int32"):
        parse(wide[:-2], "f")
