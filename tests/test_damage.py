"""Damaged shards, indexes and manifests give errors that name the file and the record's offset.

DESIGN.md contract 8: a corrupt shard gives an error naming the file and byte offset, never a
hang or a silent wrong sample. Each case below checks the three ways of reading a shard: random
access (``ShardReader[i]``, through the ``.idx``), sequential iteration, and ``recordkit.verify``.
"""

from __future__ import annotations

import contextlib
import json
import random
import struct
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import make_record, read_idx

import recordkit
from recordkit import CorruptRecordError, IndexMismatchError, ManifestError, ShardReader
from recordkit.format import framing

N = 5
SHARD = "train-00000-of-00001.tfrecord"


@pytest.fixture
def shard(tmp_path, make_shards, make_records) -> Path:
    """A one-shard dataset of 5 records; returns the ``.tfrecord`` path."""
    root = make_shards(tmp_path / "ds", splits={"train": make_records(N)}, records_per_shard=N)
    return root / SHARD


def offsets(path: Path) -> list[int]:
    return [off for off, _ in read_idx(path.with_suffix(".idx"))]


def patch(path: Path, at: int, new: bytes) -> None:
    blob = bytearray(path.read_bytes())
    blob[at : at + len(new)] = new
    path.write_bytes(bytes(blob))


def flip(path: Path, at: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[at] ^= 0xFF
    path.write_bytes(bytes(blob))


def set_length(path: Path, offset: int, length: int, *, fix_crc: bool) -> None:
    raw = struct.pack("<Q", length)
    if fix_crc:
        raw += struct.pack("<I", framing.masked_crc(raw))
    patch(path, offset, raw)


def sequential(reader: ShardReader) -> tuple[list, BaseException | None]:
    """Records yielded before the error, and the error (or None)."""
    got = []
    try:
        for rec in reader:
            got.append(rec)
    except Exception as exc:  # noqa: BLE001 - the caller checks the type
        return got, exc
    return got, None


def assert_damaged_at(path: Path, offset: int, bad: set[int], *, verify_crc: bool = True) -> None:
    """Every access path reports the damage at ``offset``; intact records read correctly."""
    reader = ShardReader(path, verify_crc=verify_crc)
    for i in range(N):
        if i in bad:
            with pytest.raises(CorruptRecordError) as ei:
                reader[i]
            assert ei.value.offset == offset, (i, str(ei.value))
            assert ei.value.path == str(path)
            assert f"offset {offset}" in str(ei.value)
        else:
            assert reader[i] == make_record(i)
    # sequential: every record before the damage, then the error at its offset
    rec_no = min(bad)
    got, exc = sequential(ShardReader(path, verify_crc=verify_crc))
    assert got == [make_record(i) for i in range(rec_no)]
    assert isinstance(exc, CorruptRecordError), repr(exc)
    assert exc.offset == offset and exc.path == str(path)
    # verify
    rep = recordkit.verify(path)
    assert not rep.ok
    assert (rep.problems[0].path, rep.problems[0].offset) == (str(path), offset), rep.problems


# --------------------------------------------------------------------------------------------
# Damage inside records


DataDamage = Callable[[Path, list[int]], tuple[int, int]]  # -> (damaged record, its offset)


def _len_huge(path, offs):
    set_length(path, offs[3], 2**63, fix_crc=False)
    return 3, offs[3]


def _len_huge_crc_ok(path, offs):
    set_length(path, offs[3], 2**63, fix_crc=True)
    return 3, offs[3]


def _len_max_crc_ok(path, offs):
    set_length(path, offs[3], 2**64 - 1, fix_crc=True)
    return 3, offs[3]


def _len_past_eof_crc_ok(path, offs):
    set_length(path, offs[3], path.stat().st_size, fix_crc=True)
    return 3, offs[3]


def _len_short_crc_ok(path, offs):
    true = offs[4] - offs[3] - framing.OVERHEAD
    set_length(path, offs[3], true - 1, fix_crc=True)
    return 3, offs[3]


def _flip_data(path, offs):
    flip(path, (offs[3] + 12 + offs[4] - 4) // 2)
    return 3, offs[3]


def _flip_length(path, offs):
    flip(path, offs[3] + 1)
    return 3, offs[3]


def _flip_length_crc(path, offs):
    flip(path, offs[3] + 9)
    return 3, offs[3]


def _flip_data_crc(path, offs):
    flip(path, offs[4] - 2)
    return 3, offs[3]


DATA_DAMAGE: dict[str, DataDamage] = {
    "length=2**63": _len_huge,
    "length=2**63,crc-fixed": _len_huge_crc_ok,
    "length=2**64-1,crc-fixed": _len_max_crc_ok,
    "length=filesize,crc-fixed": _len_past_eof_crc_ok,
    "length-1,crc-fixed": _len_short_crc_ok,
    "flip-data": _flip_data,
    "flip-length": _flip_length,
    "flip-length-crc": _flip_length_crc,
    "flip-data-crc": _flip_data_crc,
}


@pytest.mark.parametrize("case", DATA_DAMAGE)
def test_damaged_record(shard, case):
    offs = offsets(shard)
    rec, off = DATA_DAMAGE[case](shard, offs)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        assert_damaged_at(shard, off, {rec})
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 5
    assert peak < 16 << 20  # a corrupt length never turns into a huge allocation


@pytest.mark.parametrize("case", [c for c in DATA_DAMAGE if c.startswith("length=")])
def test_impossible_length_is_caught_without_crc_check(shard, case):
    offs = offsets(shard)
    rec, off = DATA_DAMAGE[case](shard, offs)
    reader = ShardReader(shard, verify_crc=False)
    with pytest.raises(CorruptRecordError, match="exceeds") as ei:
        reader.read_bytes(rec)
    assert ei.value.offset == off
    got, exc = sequential(ShardReader(shard, verify_crc=False))
    assert len(got) == rec and isinstance(exc, CorruptRecordError) and exc.offset == off


def test_short_length_disagrees_with_index(shard):
    offs = offsets(shard)
    _len_short_crc_ok(shard, offs)
    with pytest.raises(IndexMismatchError) as ei:
        ShardReader(shard).read_bytes(3)
    assert ei.value.offset == offs[3]


def test_impossible_length_does_not_allocate_in_build_index(shard):
    offs = offsets(shard)
    _len_huge_crc_ok(shard, offs)
    shard.with_suffix(".idx").unlink()
    with pytest.raises(CorruptRecordError) as ei:
        recordkit.build_index(shard)
    assert ei.value.offset == offs[3]
    with pytest.raises(CorruptRecordError) as ei:
        ShardReader(shard)[0]  # no index: built by a scan, which reaches the damage
    assert ei.value.offset == offs[3]


# --------------------------------------------------------------------------------------------
# Truncation


def _cut(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


TRUNCATIONS = {
    "in-data": lambda offs, size: offs[4] + 12 + 3,
    "in-header": lambda offs, size: offs[4] + 5,
    "after-header": lambda offs, size: offs[4] + 12,
    "in-footer": lambda offs, size: size - 2,
}


@pytest.mark.parametrize("where", TRUNCATIONS)
def test_truncated_last_record_sequential_and_verify(shard, where):
    offs = offsets(shard)
    _cut(shard, TRUNCATIONS[where](offs, shard.stat().st_size))
    got, exc = sequential(ShardReader(shard))
    assert got == [make_record(i) for i in range(4)]
    assert isinstance(exc, CorruptRecordError) and exc.offset == offs[4], repr(exc)
    rep = recordkit.verify(shard)
    assert (rep.problems[0].path, rep.problems[0].offset) == (str(shard), offs[4])
    assert rep.records == 4
    # without the index the reader scans, and the scan names the truncated record
    shard.with_suffix(".idx").unlink()
    with pytest.raises(CorruptRecordError) as ei:
        ShardReader(shard).read_bytes(0)
    assert ei.value.offset == offs[4]


@pytest.mark.parametrize("where", TRUNCATIONS)
def test_truncated_last_record_random_access_raises(shard, where):
    """Random access never returns data past the cut; whatever is read is right."""
    offs = offsets(shard)
    _cut(shard, TRUNCATIONS[where](offs, shard.stat().st_size))
    reader = ShardReader(shard)
    with pytest.raises(CorruptRecordError):
        reader[4]
    for i in range(4):
        with contextlib.suppress(CorruptRecordError):
            assert reader[i] == make_record(i)


@pytest.mark.parametrize("where", ["in-data", "in-header"])
def test_truncated_last_record_random_access_offset(shard, where):
    offs = offsets(shard)
    _cut(shard, TRUNCATIONS[where](offs, shard.stat().st_size))
    with pytest.raises(CorruptRecordError) as ei:
        ShardReader(shard)[4]
    assert ei.value.offset == offs[4], str(ei.value)


# --------------------------------------------------------------------------------------------
# Index files that disagree with their data file


def _lines(path: Path) -> list[str]:
    return path.with_suffix(".idx").read_text().splitlines(keepends=True)


def _write_lines(path: Path, lines: list[str]) -> None:
    path.with_suffix(".idx").write_text("".join(lines))


def _idx_wrong_size(path, entries):  # line 3 (record 2) claims one byte too many
    lines = _lines(path)
    off, size = entries[2]
    lines[2] = f"{off} {size + 1}\n"
    _write_lines(path, lines)
    return entries[2][0]


def _idx_wrong_offset(path, entries):  # line 4 (record 3) points one byte late
    lines = _lines(path)
    off, size = entries[3]
    lines[3] = f"{off + 1} {size}\n"
    _write_lines(path, lines)
    return entries[3][0]


def _idx_wrong_last_size(path, entries):
    lines = _lines(path)
    off, size = entries[4]
    lines[4] = f"{off} {size - 1}\n"
    _write_lines(path, lines)
    return entries[4][0]


def _idx_extra_line(path, entries):  # claims a record at the end of the file
    end = entries[-1][0] + entries[-1][1]
    _write_lines(path, [*_lines(path), f"{end} 30\n"])
    return end


def _idx_missing_last_line(path, entries):
    _write_lines(path, _lines(path)[:-1])
    return entries[4][0]


def _idx_missing_middle_line(path, entries):
    lines = _lines(path)
    del lines[2]
    _write_lines(path, lines)
    return entries[2][0]


def _idx_malformed_line(path, entries):
    lines = _lines(path)
    lines[2] = "12 abc\n"
    _write_lines(path, lines)
    return entries[2][0]


INDEX_DAMAGE = {
    "wrong-size": _idx_wrong_size,
    "wrong-offset": _idx_wrong_offset,
    "wrong-last-size": _idx_wrong_last_size,
    "extra-line": _idx_extra_line,
    "missing-last-line": _idx_missing_last_line,
    "missing-middle-line": _idx_missing_middle_line,
    "malformed-line": _idx_malformed_line,
}


@pytest.mark.parametrize("case", INDEX_DAMAGE)
def test_bad_index_random_access_raises(shard, case):
    entries = read_idx(shard.with_suffix(".idx"))
    INDEX_DAMAGE[case](shard, entries)
    reader = ShardReader(shard)
    for i in range(N):  # never a wrong record, only an IndexMismatchError
        try:
            rec = reader[i]
        except IndexMismatchError as exc:
            assert "idx" in exc.path or exc.path == str(shard)
        else:
            assert rec == make_record(i)
    with pytest.raises(IndexMismatchError):
        len(reader)


@pytest.mark.parametrize("case", INDEX_DAMAGE)
def test_bad_index_random_access_offset(shard, case):
    entries = read_idx(shard.with_suffix(".idx"))
    expected = INDEX_DAMAGE[case](shard, entries)
    with pytest.raises(IndexMismatchError) as ei:
        ShardReader(shard)[0]
    assert ei.value.offset == expected, str(ei.value)


@pytest.mark.parametrize("case", INDEX_DAMAGE)
def test_bad_index_sequential_reads_ignore_it(shard, case):
    entries = read_idx(shard.with_suffix(".idx"))
    INDEX_DAMAGE[case](shard, entries)
    got, exc = sequential(ShardReader(shard))
    assert (got, exc) == ([make_record(i) for i in range(N)], None)


@pytest.mark.parametrize("case", INDEX_DAMAGE)
def test_bad_index_split_iteration_raises(shard, case):
    entries = read_idx(shard.with_suffix(".idx"))
    INDEX_DAMAGE[case](shard, entries)
    split = recordkit.open(shard.parent)["train"]
    got = []
    with pytest.raises(IndexMismatchError):
        for rec in split:
            got.append(rec)
    assert got == [make_record(i) for i in range(len(got))]


VERIFY_OFFSETS = {  # what verify() should say: (offset, words in the message)
    "wrong-size": "line 3",
    "wrong-offset": "line 4",
    "wrong-last-size": "line 5",
    "extra-line": "6 lines",
    "missing-last-line": "4 lines",
    "missing-middle-line": "line 3",
    "malformed-line": "line 3",
}


@pytest.mark.parametrize("case", INDEX_DAMAGE)
def test_bad_index_verify(shard, case):
    entries = read_idx(shard.with_suffix(".idx"))
    expected = INDEX_DAMAGE[case](shard, entries)
    for target in (shard, shard.parent):
        rep = recordkit.verify(target)
        assert not rep.ok
        idx_problems = [p for p in rep.problems if p.path.endswith(".idx")]
        assert len(idx_problems) == 1, rep.problems
        assert VERIFY_OFFSETS[case] in idx_problems[0].message, idx_problems
        if case == "extra-line":  # no record is at fault; naming the claimed offset is optional
            assert idx_problems[0].offset in (None, expected), idx_problems
        else:
            assert idx_problems[0].offset == expected, idx_problems


# --------------------------------------------------------------------------------------------
# A framed record whose payload is not an Example


@pytest.mark.parametrize("payload", [b"\xff" * 24, b"garbage!", b"", b"\x08\x01"])
def test_payload_not_an_example(tmp_path, payload):
    path = tmp_path / "g.tfrecord"
    with recordkit.ShardWriter(path) as w:
        for i in range(N):
            if i == 2:
                w.write_bytes(payload)
            else:
                w.write(make_record(i))
    offs = offsets(path)
    reader = ShardReader(path)
    assert reader.read_bytes(2) == payload  # the framing is intact
    with pytest.raises(CorruptRecordError) as ei:
        reader[2]
    assert ei.value.offset == offs[2]
    assert [reader[i] for i in (0, 1, 3, 4)] == [make_record(i) for i in (0, 1, 3, 4)]
    got, exc = sequential(ShardReader(path))
    assert got == [make_record(0), make_record(1)]
    assert isinstance(exc, CorruptRecordError) and exc.offset == offs[2]
    rep = recordkit.verify(path)
    assert [(p.path, p.offset) for p in rep.problems] == [(str(path), offs[2])]
    assert rep.records == N  # the scan went on past the bad payload
    assert recordkit.verify(path, decode=False).ok


def test_label_outside_classes_is_a_verify_problem(tmp_path, make_shards):
    recs = [make_record(i) for i in range(3)] + [make_record(3, labels=(1, 7))]
    root = make_shards(tmp_path, splits={"train": recs}, records_per_shard=4)
    rep = recordkit.verify(root)
    offs = offsets(root / SHARD)
    assert [(p.offset, "label 7" in p.message) for p in rep.problems] == [(offs[3], True)]


# --------------------------------------------------------------------------------------------
# Manifests


def test_directory_without_manifest(tmp_path, shard):
    (shard.parent / "recordkit.json").unlink()
    for call in (recordkit.open, recordkit.verify, recordkit.read_manifest):
        with pytest.raises(ManifestError, match="recordkit.json"):
            call(shard.parent)
    with pytest.raises(recordkit.RecordkitError, match="no such"):
        recordkit.verify(tmp_path / "missing")
    with pytest.raises(ManifestError, match="no such directory"):
        recordkit.open(tmp_path / "missing" / "deeper")


def test_open_a_directory_that_does_not_exist(tmp_path):
    with pytest.raises(ManifestError) as ei:
        recordkit.open(tmp_path / "typo")
    assert "typo" in str(ei.value)


def test_leftover_temporary_files_are_warnings(shard):
    (shard.parent / "train-00001-of-00002.tfrecord.tmp").write_bytes(b"partial")
    rep = recordkit.verify(shard.parent)
    assert rep.ok
    assert len(rep.warnings) == 1 and "train-00001-of-00002.tfrecord.tmp" in rep.warnings[0]


def _edit_manifest(root: Path, edit) -> None:
    path = root / "recordkit.json"
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))


def test_manifest_from_a_newer_version(shard):
    _edit_manifest(shard.parent, lambda d: d.update(format_version=recordkit.FORMAT_VERSION + 1))
    for call in (recordkit.open, recordkit.verify):
        with pytest.raises(ManifestError, match="upgrade") as ei:
            call(shard.parent)
        assert str(recordkit.FORMAT_VERSION + 1) in str(ei.value)


@pytest.mark.parametrize(
    "text",
    ['{"format": "recordkit", "format_version": 1,', "", "\x00\xff", "[1, 2]", '{"format": "x"}'],
)
def test_manifest_not_valid(shard, text):
    (shard.parent / "recordkit.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(ManifestError, match="recordkit.json"):
        recordkit.open(shard.parent)


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.pop("splits"),
        lambda d: d["splits"]["train"]["shards"][0].pop("sha256"),
        lambda d: d["splits"]["train"]["shards"][0].update(records="five"),
        lambda d: d["splits"]["train"]["shards"][0].update(file="../escape.tfrecord"),
        lambda d: d.update(format_version="1"),
    ],
)
def test_manifest_malformed(shard, edit):
    _edit_manifest(shard.parent, edit)
    with pytest.raises(ManifestError, match="recordkit.json"):
        recordkit.open(shard.parent)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("sha256", "0" * 64, "SHA-256"),
        ("bytes", 12345, "size"),
        ("records", N + 1, "records"),
    ],
)
def test_manifest_disagrees_with_shard(shard, field, value, words):
    _edit_manifest(shard.parent, lambda d: d["splits"]["train"]["shards"][0].update({field: value}))
    rep = recordkit.verify(shard.parent)
    assert [(p.path, p.offset) for p in rep.problems] == [(str(shard), None)], rep.problems
    assert words in rep.problems[0].message
    assert recordkit.verify(shard).ok  # the shard itself is fine


def test_manifest_lists_a_missing_shard(shard):
    shard.unlink()
    rep = recordkit.verify(shard.parent)
    assert [(p.path, "missing" in p.message) for p in rep.problems] == [(str(shard), True)]


@pytest.mark.parametrize("count", [N + 1, N - 1])
def test_manifest_count_that_disagrees_is_an_error_on_every_read(shard, count):
    """A shard whose manifest count is wrong is never read: not past its end (too high), and
    not short of it (too low: the last records would silently be left out)."""
    _edit_manifest(
        shard.parent,
        lambda d: (
            d["splits"]["train"].update(records=count)
            or d["splits"]["train"]["shards"][0].update(records=count)
        ),
    )
    split = recordkit.open(shard.parent)["train"]
    assert len(split) == count
    where = offsets(shard)[count] if count < N else shard.stat().st_size
    for read in (lambda: split[0], lambda: split.read_bytes(count - 1), lambda: list(split)):
        with pytest.raises(CorruptRecordError, match=f"manifest says {count} records, index has 5"):
            read()
    with pytest.raises(CorruptRecordError) as ei:
        list(split.iter(0, 2))
    assert (ei.value.path, ei.value.offset) == (str(shard), where)


# --------------------------------------------------------------------------------------------
# Fuzz: single-byte damage anywhere in the shard or its index


def _read_everything(path: Path, verify_crc: bool = True) -> list[bytes | None]:
    """Read each record by random access (None where it raised), then sequentially."""
    out: list[bytes | None] = []
    reader = ShardReader(path, verify_crc=verify_crc)
    for i in range(N):
        try:
            out.append(reader.read_bytes(i))
        except (CorruptRecordError, IndexMismatchError):
            out.append(None)
    try:
        for _, data in ShardReader(path, verify_crc=verify_crc).iter_bytes():
            out.append(data)
    except (CorruptRecordError, IndexMismatchError):
        out.append(None)
    return out


def test_fuzz_every_byte_of_the_shard(shard):
    original = shard.read_bytes()
    offs = offsets(shard)
    truth = [ShardReader(shard).read_bytes(i) for i in range(N)]
    for pos in range(len(original)):
        blob = bytearray(original)
        blob[pos] ^= 0xFF
        shard.write_bytes(bytes(blob))
        damaged = max(k for k in range(N) if offs[k] <= pos)
        got = _read_everything(shard)
        random_access, sequential_ = got[:N], got[N:]
        # random access: only the damaged record fails, the rest are exact
        assert random_access == [None if k == damaged else truth[k] for k in range(N)], pos
        # sequential: the records before the damage, then the error
        assert sequential_ == [*truth[:damaged], None], pos
        rep = recordkit.verify(shard)
        assert [p.offset for p in rep.problems] == [offs[damaged]], (pos, rep.problems)
    shard.write_bytes(original)


def test_fuzz_index_file_bytes(shard):
    idx = shard.with_suffix(".idx")
    original = idx.read_bytes()
    truth = [ShardReader(shard).read_bytes(i) for i in range(N)]
    rng = random.Random(0)
    for pos in range(len(original)):
        for mask in (0xFF, 1 << rng.randrange(8)):
            blob = bytearray(original)
            blob[pos] ^= mask
            idx.write_bytes(bytes(blob))
            got = _read_everything(shard)
            for k in range(N):  # either an error or the right bytes, never other bytes
                assert got[k] in (None, truth[k]), (pos, mask, k)
            assert got[N:] == truth  # sequential reads do not use the index
            if bytes(blob).split() != original.split():
                assert not recordkit.verify(shard).ok, (pos, mask, bytes(blob))
    idx.write_bytes(original)


def test_fuzz_without_crc_check_raises_only_corrupt_record_errors(shard):
    """verify_crc=False may return altered data, but decoding must fail cleanly."""
    original = shard.read_bytes()
    rng = random.Random(42)
    for pos in rng.sample(range(len(original)), 200):
        blob = bytearray(original)
        blob[pos] ^= 1 << rng.randrange(8)
        shard.write_bytes(bytes(blob))
        reader = ShardReader(shard, verify_crc=False)
        for i in range(N):
            try:
                rec = reader[i]
            except CorruptRecordError:
                continue
            assert isinstance(rec, recordkit.Record)
        try:
            for _ in ShardReader(shard, verify_crc=False):
                pass
        except CorruptRecordError:
            pass
    shard.write_bytes(original)
