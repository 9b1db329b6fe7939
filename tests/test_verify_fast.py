"""The block-at-a-time checks of verify and inspect (recordkit.format.columns) give exactly what
the record-at-a-time code gives: the same values, the same reports, the same errors."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_record

import recordkit
from recordkit.errors import CorruptRecordError
from recordkit.format import columns, framing
from recordkit.format.example import (
    Record,
    decode_example,
    encode_example,
    encode_features,
)
from recordkit.summary import inspect_dataset

SHARD = "train-00000-of-00002.tfrecord"


def _block(payloads: list[bytes]) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Framed records, each record's offset and framed size."""
    sizes = np.array([len(p) + framing.OVERHEAD for p in payloads], dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
    return b"".join(framing.frame(p) for p in payloads), starts, sizes


def _cols(payloads: list[bytes]) -> columns.ImageColumns:
    block, starts, sizes = _block(payloads)
    data = starts + framing.HEADER_SIZE
    return columns.image_columns(block, data, starts + sizes - framing.FOOTER_SIZE)


def _agrees(cols: columns.ImageColumns, k: int, block_payload: bytes, full: bytes) -> None:
    """Record ``k`` was recognised: its values are decode_example's."""
    rec = decode_example(block_payload)
    assert rec.labels == (int(cols.label[k]),)
    assert (rec.channels, rec.height, rec.width) == (
        cols.channels[k],
        cols.height[k],
        cols.width[k],
    )
    start, size = int(cols.format_start[k]), int(cols.format_len[k])
    assert full[start : start + size].decode("ascii", "replace") == rec.format


def test_masked_crc_of_length_fields() -> None:
    rng = random.Random(3)
    rows = [rng.randbytes(8) for _ in range(200)] + [bytes(8), b"\xff" * 8]
    got = columns.masked_crc_u64(np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(-1, 8))
    assert got.tolist() == [framing.masked_crc(r) for r in rows]


RECORDS = [
    make_record(0),
    make_record(1, text="class one"),
    make_record(2, labels=127, height=0, width=0, channels=1, format="png"),
    make_record(3, labels=128, height=127, width=128, index=0),
    make_record(4, labels=2**20, height=2**14, width=2**21 - 1, index=2**28),
    make_record(5, labels=2**48, image=b""),
    make_record(6, image=bytes(range(256)) * 40, filename="é/" + "x" * 100),
    make_record(7, labels=(1, 2)),  # several labels: the full parser
    make_record(8, index=-1),  # a negative value takes 10 bytes: the full parser
    make_record(9, labels=2**60),  # a label beyond 7 varint bytes: the full parser
    make_record(10, filename="d/" * 300),  # past the window: the full parser
    make_record(11, text="t" * 300),  # past the window: the full parser
]
RECOGNISED = [True] * 7 + [False] * 5


def test_recordkit_layout_is_recognised_with_decode_examples_values() -> None:
    payloads = [encode_example(r) for r in RECORDS]
    block, starts, sizes = _block(payloads)
    cols = _cols(payloads)
    assert cols.ok.tolist() == RECOGNISED
    for k, p in enumerate(payloads):
        if cols.ok[k]:
            _agrees(cols, k, p, block)


def test_other_layouts_go_to_the_full_parser() -> None:
    rec = make_record(1)
    other = [
        encode_features({"image/encoded": rec.image, "image/class/label": 1}),  # no channels
        encode_features({"image/class/label": 1}),  # no image
        encode_example(rec) + b"\x12\x00",  # an unknown field after the features
        b"\x0a\x00" + encode_example(rec),  # an empty features field first
        b"",
        b"garbage",
    ]
    assert not _cols(other).ok.any()


EDGES = [
    make_record(20, filename="f" * 95),  # lengths just below / at / above one varint byte
    make_record(21, filename="f" * 115, format="p" * 100),
    make_record(22, image=b"i" * 120),
    make_record(23, image=b"i" * 130, text="c" * 120),
]


@pytest.mark.parametrize(
    "base",
    [RECORDS[:7] + EDGES, [make_record(i) for i in range(6)] + EDGES[:2]],
    ids=["mixed", "tiny-images"],
)
def test_mutated_records_recognised_only_where_the_full_parser_agrees(base) -> None:
    """Whatever the bytes, a record the layout accepts parses to the same values."""
    rng = random.Random(17)
    base = [encode_example(r) for r in base]
    payloads = []
    for _ in range(4000):
        p = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 3)):
            op, at = rng.random(), rng.randrange(len(p) + 1)
            if op < 0.5 and at < len(p):
                p[at] = rng.randrange(256) if rng.random() < 0.5 else p[at] ^ 0x80
            elif op < 0.7:
                del p[at : at + rng.randint(1, 4)]
            else:
                p[at:at] = rng.randbytes(rng.randint(1, 3))
        payloads.append(bytes(p))
    block, starts, sizes = _block(payloads)
    cols = _cols(payloads)
    assert 0 < cols.ok.sum() < len(payloads)
    for k, p in enumerate(payloads):
        if cols.ok[k]:  # (a record not recognised goes to the full parser)
            _agrees(cols, k, p, block)


@pytest.mark.parametrize("where", [0, 3, 8, 11, 20, -5, -1])
def test_frames_ok_finds_any_damaged_byte(where: int) -> None:
    payloads = [encode_example(make_record(i)) for i in range(6)]
    block, starts, sizes = _block(payloads)
    assert columns.frames_ok(block, starts, sizes, crc=True)
    bad = bytearray(block)
    at = int(starts[2]) + (where if where >= 0 else int(sizes[2]) + where)
    bad[at] ^= 0x01
    assert not columns.frames_ok(bytes(bad), starts, sizes, crc=True)
    if 0 <= where < 8:  # a length field: wrong without any CRC
        assert not columns.frames_ok(bytes(bad), starts, sizes, crc=False)


def test_read_blocks_cover_the_records_once() -> None:
    import io

    payloads = [bytes(n) for n in (0, 5, 300, 7, 1000, 2)]
    block, starts, sizes = _block(payloads)
    bounds = np.append(starts, len(block))
    got = list(columns.read_blocks(io.BytesIO(block), bounds, block_size=320))
    assert [(i, j) for i, j, _ in got] == [(0, 2), (2, 3), (3, 4), (4, 5), (5, 6)]
    assert b"".join(b for _, _, b in got) == block


# ---------------------------------------------------------------------------------------------
# verify and inspect: the fast path against the record-at-a-time path on the same data


@pytest.fixture
def slow(monkeypatch):
    """Run verify / inspect without their block-at-a-time path."""

    def off() -> None:
        for module, name in (
            ("recordkit.verify", "_verify_fast"),
            ("recordkit.summary", "_scan_split_fast"),
        ):
            monkeypatch.setattr(sys.modules[module], name, lambda *a, **k: None)

    return off


def _mixed(n: int) -> list[Record]:
    out = []
    for i in range(n):
        if i % 5 == 1:
            out.append(make_record(i, text=f"class{i % 3}"))
        elif i % 7 == 3:
            out.append(make_record(i, labels=(i % 3, (i + 1) % 3)))  # multi-label
        elif i % 11 == 4:
            out.append(make_record(i, index=-1, format="png", channels=1))
        else:
            out.append(make_record(i))
    return out


def _dataset(tmp_path: Path, make_shards) -> Path:
    return make_shards(
        tmp_path / "ds",
        splits={"train": _mixed(40), "val": _mixed(9)},
        shard_sizes={"train": [25, 15], "val": [0, 9]},
    )


def _report(root: Path, **kw) -> tuple:
    rep = recordkit.verify(root, **kw)
    return rep.files, rep.records, rep.bytes, [str(p) for p in rep.problems], rep.warnings


def _damage(root: Path, what: str) -> None:
    shard = root / SHARD
    data = bytearray(shard.read_bytes())
    idx = shard.with_suffix(".idx")
    lines = idx.read_text().splitlines()
    second = int(lines[1].split()[0])
    if what == "data":
        data[second + 20] ^= 0x40
    elif what == "length":
        data[second] ^= 0x01
    elif what == "length-crc":
        data[second + 9] ^= 0x01
    elif what == "footer":
        data[int(lines[2].split()[0]) - 1] ^= 0x01
    elif what == "truncate":
        data = data[:-3]
    elif what == "index":
        lines[3], lines[4] = lines[4], lines[3]
        idx.write_text("\n".join(lines) + "\n")
    elif what == "index-crlf":  # not the plain form: read leniently
        idx.write_bytes(idx.read_bytes().replace(b"\n", b"\r\n"))
    elif what == "label":  # a label outside the classes, with valid framing
        rec = encode_example(make_record(2, labels=9))
        framed = framing.frame(rec)
        old = framing.frame(encode_example(make_record(2)))
        assert data.count(old) == 1
        data = data.replace(old, framed)
        size = len(framed)
        off = 0
        new_lines = []
        for line in lines:
            _, n = map(int, line.split())
            n = size if n == len(old) and off == int(lines[2].split()[0]) else n
            new_lines.append(f"{off} {n}")
            off += n
        idx.write_text("\n".join(new_lines) + "\n")
    elif what == "payload":
        old = framing.frame(encode_example(make_record(2)))
        data = data.replace(old, framing.frame(b"\x0a\x05garbage"[: len(old) - 16]))
    shard.write_bytes(bytes(data))


CASES = [
    "clean",
    "data",
    "length",
    "length-crc",
    "footer",
    "truncate",
    "index",
    "index-crlf",
    "label",
    "payload",
]


@pytest.mark.parametrize("what", CASES)
@pytest.mark.parametrize("decode", [True, False])
def test_verify_same_report_as_record_at_a_time(tmp_path, make_shards, slow, what, decode):
    root = _dataset(tmp_path, make_shards)
    _damage(root, what)
    fast = _report(root, decode=decode)
    slow()
    assert fast == _report(root, decode=decode)
    assert (fast[3] == []) == (what in ("clean", "index-crlf"))


def test_fast_paths_are_taken_on_clean_data(tmp_path, make_shards, monkeypatch):
    root = _dataset(tmp_path, make_shards)
    results: list[object] = []
    for module, name in (
        ("recordkit.verify", "_verify_fast"),
        ("recordkit.summary", "_scan_split_fast"),
    ):
        real = getattr(sys.modules[module], name)

        def spy(*a, _real=real, **k):
            results.append(_real(*a, **k))
            return results[-1]

        monkeypatch.setattr(sys.modules[module], name, spy)
    assert recordkit.verify(root).ok
    inspect_dataset(root)
    assert len(results) == 4 + 2 and all(r is not None for r in results)  # 4 shards, 2 splits


def test_verify_single_file_and_progress(tmp_path, make_shards):
    root = _dataset(tmp_path, make_shards)
    seen: list[int] = []
    rep = recordkit.verify(root, progress=seen.append)
    assert rep.ok and rep.records == 49
    assert sum(seen) == rep.bytes
    _damage(root, "data")
    seen.clear()
    rep = recordkit.verify(root, progress=seen.append)
    assert not rep.ok and sum(seen) == rep.bytes  # the fallback reports no byte twice
    single = recordkit.verify(root / SHARD)
    assert single.records == 1 and len(single.problems) == 1  # the scan stops at record 1


def _inspect(root: Path, max_records: int | None = None) -> object:
    seen: list[int] = []
    try:
        out = inspect_dataset(root, max_records=max_records, progress=seen.append)
    except CorruptRecordError as exc:
        return type(exc), str(exc), exc.offset, sum(seen)
    return out, sum(seen)


@pytest.mark.parametrize("max_records", [None, 0, 1, 24, 25, 26, 39, 40, 100])
def test_inspect_same_summary_as_record_at_a_time(tmp_path, make_shards, slow, max_records):
    root = _dataset(tmp_path, make_shards)
    fast = _inspect(root, max_records)
    slow()
    assert fast == _inspect(root, max_records)
    out, n = fast
    assert out["splits"]["train"]["scanned"] == min(40, 40 if max_records is None else max_records)
    assert n == out["splits"]["train"]["scanned"] + out["splits"]["val"]["scanned"]


@pytest.mark.parametrize("what", [w for w in CASES if w not in ("clean",)])
def test_inspect_same_error_as_record_at_a_time(tmp_path, make_shards, slow, what):
    root = _dataset(tmp_path, make_shards)
    _damage(root, what)
    fast = _inspect(root)
    slow()
    assert fast == _inspect(root)
