"""format.index.parse_index_array: a plain .idx read in one pass agrees with parse_index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recordkit.errors import IndexMismatchError
from recordkit.format.index import parse_index, parse_index_array


def test_plain_index_matches_parse_index(tmp_path: Path) -> None:
    p = tmp_path / "a.idx"
    p.write_bytes(b"0 20\n20 35\n55 9999999999999\n")
    arr = parse_index_array(p)
    assert arr is not None and arr.dtype == np.int64
    assert [tuple(map(int, r)) for r in arr] == parse_index(p)


@pytest.mark.parametrize(
    "text",
    [b"0 20\r\n", b"0 20\n\n20 5\n", b"0\t20\n", b"0 20", b"0 2_0\n", b"0 20 3\n",
     b"0 99999999999999999999\n", b"-1 20\n"],
)  # fmt: skip
def test_anything_else_is_left_to_parse_index(tmp_path: Path, text: bytes) -> None:
    p = tmp_path / "a.idx"
    p.write_bytes(text)
    assert parse_index_array(p) is None


def test_empty_index_is_an_empty_array(tmp_path: Path) -> None:
    p = tmp_path / "a.idx"
    p.write_bytes(b"")
    arr = parse_index_array(p)
    assert arr is not None and arr.shape == (0, 2)


def test_too_large_for_its_data_file(tmp_path: Path) -> None:
    p = tmp_path / "a.idx"
    p.write_bytes(b"0 16\n" * 1000)
    with pytest.raises(IndexMismatchError, match="too large for the index of a 16-byte file"):
        parse_index_array(p, data_size=16)
