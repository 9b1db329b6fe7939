"""framing.scan_blocks gives exactly what framing.scan gives: records, offsets and errors."""

from __future__ import annotations

import io
import random

import pytest

from recordkit.errors import CorruptRecordError
from recordkit.format import framing


def _file(sizes: list[int]) -> bytes:
    rng = random.Random(1)
    return b"".join(framing.frame(rng.randbytes(n)) for n in sizes)


def _scan(data: bytes) -> tuple[list, str | None]:
    out: list = []
    try:
        for rec in framing.scan(io.BytesIO(data), path="x", file_size=len(data)):
            out.append(rec)
    except CorruptRecordError as exc:
        return out, str(exc)
    return out, None


def _blocks(data: bytes, block: int) -> tuple[list, str | None, bytes]:
    out: list = []
    seen: list[bytes] = []
    f = io.BytesIO(data)
    try:
        for rec in framing.scan_blocks(
            f, path="x", file_size=len(data), block_size=block, on_block=seen.append
        ):
            out.append(rec)
    except CorruptRecordError as exc:
        return out, str(exc), b"".join(seen)
    return out, None, b"".join(seen)


SIZES = [0, 1, 5, 100, 17, 3000, 64, 0, 250]


@pytest.mark.parametrize("block", [1, 7, 16, 33, 100, 4096, 1 << 20])
def test_same_records_any_block_size(block: int) -> None:
    data = _file(SIZES)
    want, err = _scan(data)
    got, got_err, seen = _blocks(data, block)
    assert err is None and got_err is None
    assert got == want and len(got) == len(SIZES)
    assert seen == data  # every byte handed to on_block once, in order


@pytest.mark.parametrize("block", [1, 16, 50, 4096])
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_same_error_on_damage(block: int, damage: str) -> None:
    data = bytearray(_file(SIZES))
    rng = random.Random(block)
    for trial in range(40):
        bad = bytearray(data)
        at = rng.randrange(len(bad))
        if damage == "flip":
            bad[at] ^= 1 << rng.randrange(8)
        else:
            bad = bad[:at]
        want, err = _scan(bytes(bad))
        got, got_err, seen = _blocks(bytes(bad), block)
        assert (got, got_err) == (want, err), (trial, at)
        assert err is not None
        assert bytes(bad).startswith(seen)
