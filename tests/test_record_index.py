"""The in-memory index: one int64 array per shard, equal to the .idx text, small to pickle,
shared by forked DataLoader workers."""

from __future__ import annotations

import hashlib
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest

import recordkit
from recordkit import Manifest, ShardEntry, SplitEntry, write_manifest
from recordkit.errors import IndexMismatchError
from recordkit.format import framing
from recordkit.format.index import (
    build_index,
    format_index,
    parse_index,
    parse_index_array,
    read_index,
)
from recordkit.format.reader import ShardReader
from recordkit.format.record_index import RecordIndex
from recordkit.loaders.sampling import RecordSampler, epoch_seed

# -- RecordIndex ----------------------------------------------------------------------------


def test_record_index_is_a_sequence_of_offset_size_pairs() -> None:
    entries = [(0, 20), (20, 35), (55, 16)]
    idx = RecordIndex.from_entries(entries)
    assert idx.offsets.dtype == np.int64 and idx.offsets.tolist() == [0, 20, 55, 71]
    assert idx.sizes.tolist() == [20, 35, 16] and idx.starts.tolist() == [0, 20, 55]
    assert len(idx) == 3 and idx.end == 71 and idx.nbytes == 4 * 8
    assert idx[0] == (0, 20) and idx[-1] == (55, 16) and idx[np.int64(1)] == (20, 35)
    assert all(type(v) is int for v in idx[2])  # Python ints, not numpy scalars
    assert idx[1:] == [(20, 35), (55, 16)]
    assert list(idx) == entries and idx == entries and entries == idx
    assert idx != entries[:2] and idx != [(0, 20), (20, 35), (55, 17)]
    assert idx == RecordIndex(np.array([0, 20, 55, 71]))
    with pytest.raises(IndexError, match="record 3 out of range"):
        idx[3]
    with pytest.raises(IndexError):
        idx[-4]
    # the byte range a reader's read_bytes reads, its errors naming the shard
    assert idx.span(0) == (0, 20) and idx.span(-1) == (55, 71) and idx.span(np.int64(1)) == (20, 55)
    assert all(type(v) is int for v in idx.span(2))
    with pytest.raises(
        IndexError, match=r"^record -4 out of range for s3://b/x.tfrecord \(3 records\)$"
    ):
        idx.span(-4, "s3://b/x.tfrecord")
    with pytest.raises(ValueError):  # read-only: nothing can change it behind a reader's back
        idx.offsets[0] = 5


def test_record_index_iterates_across_its_chunks() -> None:
    sizes = np.random.default_rng(0).integers(16, 1000, size=40_000)
    entries = list(
        zip(np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist(), sizes.tolist(), strict=True)
    )
    idx = RecordIndex.from_entries(entries)
    assert list(idx) == entries
    assert idx.nbytes == (len(entries) + 1) * 8  # 8 bytes per record


@pytest.mark.parametrize(
    "entries, message",
    [
        ([(1, 20)], "entry 0"),
        ([(0, 20), (21, 5)], "entry 1"),
        ([(0, 20), (10, 5)], "entry 1"),
    ],
)
def test_record_index_holds_contiguous_records_only(entries, message) -> None:
    with pytest.raises(ValueError, match=message):
        RecordIndex.from_entries(entries)


def test_record_index_rejects_bad_boundaries() -> None:
    for bad in ([], [5, 10], [0, 10, 9]):
        with pytest.raises(ValueError):
            RecordIndex(np.array(bad, dtype=np.int64))


def test_record_index_pickles_as_one_array() -> None:
    idx = RecordIndex(np.arange(0, 16 * 100_001, 16))
    data = pickle.dumps(idx)
    assert len(data) < idx.nbytes + 300
    back = pickle.loads(data)
    assert back == idx and not back.offsets.flags.writeable


# -- reading .idx text ------------------------------------------------------------------------


def _random_index(rng: random.Random, n: int) -> tuple[list[tuple[int, int]], int]:
    entries, off = [], 0
    for _ in range(n):
        size = rng.choice([16, 17, 999, 1000, 10**6, rng.randrange(16, 10**9)])
        entries.append((off, size))
        off += size
    return entries, off


@pytest.mark.parametrize("seed", range(5))
def test_read_index_equals_the_text(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    entries, total = _random_index(rng, rng.randrange(0, 3000))
    p = tmp_path / "a.idx"
    p.write_text(format_index(entries))
    for data_size in (None, total):
        idx = read_index(p, data_size=data_size)
        assert isinstance(idx, RecordIndex)
        assert idx == entries == parse_index(p)
        assert idx.offsets.tolist() == [e[0] for e in entries] + [total]
    arr = parse_index_array(p)
    assert arr is not None and arr.tolist() == [list(e) for e in entries]


def test_leading_zeros_are_plain(tmp_path: Path) -> None:
    p = tmp_path / "a.idx"
    p.write_bytes(b"000 0020\n0020 035\n")
    assert parse_index_array(p).tolist() == [[0, 20], [20, 35]]  # type: ignore[union-attr]
    assert read_index(p, data_size=55) == [(0, 20), (20, 35)] == parse_index(p)


@pytest.mark.parametrize(
    "text",
    [
        b"0 20\r\n20 35\r\n",  # CRLF
        b"\n0 20\n\n   \n20 35\n\n",  # blank lines
        b"0  20\n 20\t35",  # extra blanks, no final newline
    ],
)
def test_other_text_takes_the_lenient_reading(tmp_path: Path, text: bytes) -> None:
    p = tmp_path / "a.idx"
    p.write_bytes(text)
    assert parse_index_array(p) is None
    assert read_index(p) == [(0, 20), (20, 35)] == read_index(p, data_size=55)


@pytest.mark.parametrize(
    "text",
    [b"0 20\n20 3_5\n", b"0 20\n+20 35\n", b"0 20\n20 35 1\n", b"0 20\n20\n",
     "0 20\n٢٠ 35\n".encode()],
)  # fmt: skip
def test_malformed_lines_are_named(tmp_path: Path, text: bytes) -> None:
    p = tmp_path / "a.idx"
    p.write_bytes(text)
    with pytest.raises(IndexMismatchError, match="line 2 is malformed") as ei:
        read_index(p)
    assert ei.value.offset == 0
    with pytest.raises(IndexMismatchError, match="does not describe a 55-byte file"):
        read_index(p, data_size=55)


def test_long_numbers_do_not_wrap(tmp_path: Path) -> None:
    p = tmp_path / "a.idx"
    p.write_bytes(b"0 20\n20 99999999999999999999\n")  # 20 digits: more than an int64
    assert parse_index_array(p) is None
    with pytest.raises(IndexMismatchError, match="does not describe a 40-byte file"):
        read_index(p, data_size=40)
    p.write_bytes(b"0 9223372036854775807\n9223372036854775807 16\n")  # ends past int64
    with pytest.raises(IndexMismatchError, match="past the largest file size"):
        read_index(p)


def test_gaps_are_named_without_a_data_size(tmp_path: Path) -> None:
    p = tmp_path / "a.idx"
    p.write_bytes(b"0 20\n21 35\n")
    with pytest.raises(IndexMismatchError, match="line 2 says offset 21, expected 20"):
        read_index(p)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda e: e[:2] + [(e[2][0] + 1, e[2][1])] + e[3:], "line 3 says"),
        (lambda e: e[:-1], "index has 3 lines, file has 4 records"),
        (lambda e: [*e, (e[-1][0] + e[-1][1], 16)], "index has 5 lines, file has 4 records"),
    ],
)
def test_inconsistent_index_messages(tmp_path: Path, edit, message) -> None:
    shard = tmp_path / "a.tfrecord"
    shard.write_bytes(b"".join(framing.frame(bytes(k)) for k in range(4)))
    entries = list(build_index(shard))
    idx = tmp_path / "a.idx"
    idx.write_text(format_index(edit(entries)))
    with pytest.raises(IndexMismatchError, match=message):
        read_index(idx, data_size=shard.stat().st_size, data_path=shard)


def test_build_index_is_a_record_index(tmp_path: Path) -> None:
    shard = tmp_path / "a.tfrecord"
    records = [framing.frame(bytes(k)) for k in range(5)]
    shard.write_bytes(b"".join(records))
    idx = build_index(shard)
    assert isinstance(idx, RecordIndex) and idx.sizes.tolist() == [len(r) for r in records]
    assert idx.end == shard.stat().st_size


# -- splits and readers ---------------------------------------------------------------------


def _big_split(root: Path, counts: list[int]) -> Path:
    """Shards of empty-payload records written directly (fast at 100 k records)."""
    root.mkdir(parents=True, exist_ok=True)
    one = framing.frame(b"")
    shards = []
    for s, n in enumerate(counts):
        name = f"train-{s:05d}-of-{len(counts):05d}"
        data = one * n
        (root / f"{name}.tfrecord").write_bytes(data)
        (root / f"{name}.idx").write_text(format_index((k * len(one), len(one)) for k in range(n)))
        shards.append(
            ShardEntry(
                f"{name}.tfrecord", f"{name}.idx", n, len(data), hashlib.sha256(data).hexdigest()
            )
        )
    write_manifest(Manifest(classes=["a"], splits={"train": SplitEntry(tuple(shards))}), root)
    return root


def test_pickled_split_leaves_the_index_behind(tmp_path: Path) -> None:
    split = recordkit.open(_big_split(tmp_path / "ds", [60_000, 40_000]))["train"]
    split.load_index()
    assert [len(r.entries) for r in split.readers] == [60_000, 40_000]
    assert sum(r.entries.nbytes for r in split.readers) == 8 * (100_000 + 2)
    data = pickle.dumps(split)
    assert len(data) < 4096, len(data)
    back = pickle.loads(data)
    assert all(r._entries is None for r in back.readers)  # read again where needed
    assert back.read_bytes(99_999) == b"" and back.readers[1].entries == split.readers[1].entries
    reader = ShardReader(tmp_path / "ds" / "train-00000-of-00002.tfrecord")
    assert len(reader) == 60_000 and len(pickle.dumps(reader)) < 1024


def test_pickled_reader_keeps_a_scanned_index(tmp_path: Path) -> None:
    shard = tmp_path / "a.tfrecord"
    shard.write_bytes(framing.frame(b"x") * 10)
    reader = ShardReader(shard)  # no .idx: the index comes from a scan, too dear to repeat
    assert len(reader) == 10
    back = pickle.loads(pickle.dumps(reader))
    assert back._entries == reader.entries and back.read_bytes(9) == b"x"


def test_locate_across_shard_boundaries(make_shards, make_records, tmp_path: Path) -> None:
    sizes = [3, 0, 5, 1, 2]
    recs = make_records(sum(sizes))
    root = make_shards(tmp_path, {"train": recs}, shard_sizes={"train": sizes})
    split = recordkit.open(root)["train"]
    expected = [(s, j) for s, n in enumerate(sizes) for j in range(n)]
    assert [split.locate(i) for i in range(len(split))] == expected
    assert split.locate(-1) == (4, 1) and split.locate(-len(split)) == (0, 0)
    for bad in (len(split), -len(split) - 1):
        with pytest.raises(IndexError, match="out of range"):
            split.locate(bad)
    assert [split[i] for i in range(len(split))] == recs  # each read through its own shard
    assert list(split.iter_bytes(1, 3)) == [split.read_bytes(i) for i in range(3, 7)]


def _probe(split):
    """What a worker sees: its pid, where its index arrays live, and their contents."""
    import torch.utils.data as tud

    class Probe(tud.Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int):
            idx = [r.entries for r in split.readers]
            return (
                os.getpid(),
                [e.offsets.__array_interface__["data"][0] for e in idx],
                [e.offsets.tolist() for e in idx],
            )

    return Probe()


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(), reason="")
def test_forked_workers_share_the_parent_index(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    split = recordkit.open(_big_split(tmp_path / "ds", [300, 200]))["train"].load_index()
    addresses = [r.entries.offsets.__array_interface__["data"][0] for r in split.readers]
    loader = torch.utils.data.DataLoader(
        _probe(split),
        batch_size=None,
        num_workers=2,
        multiprocessing_context="fork",
    )
    seen = list(loader)
    assert {pid for pid, _, _ in seen} - {os.getpid()}, "ran in workers"
    for _pid, where, offsets in seen:
        assert where == addresses  # the parent's pages, not a copy read again
        assert offsets == [r.entries.offsets.tolist() for r in split.readers]


def test_torch_loader_reads_the_index_before_forking(tmp_path: Path, make_shards) -> None:
    pytest.importorskip("torch")
    import io

    from conftest import make_record
    from PIL import Image

    def png(i: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (10, 10), (i * 20, 0, 0)).save(buf, "PNG")
        return buf.getvalue()

    recs = [make_record(i, image=png(i), format="png") for i in range(12)]
    root = make_shards(tmp_path, {"train": recs}, records_per_shard=4)
    loader = recordkit.make_loader(
        root, "train", batch_size=4, image_size=8, backend="torch", num_workers=2
    )
    split = loader.dataset.split
    assert all(r._entries is None for r in split.readers)  # opening stays lazy
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 8, 8)
    fork = __import__("multiprocessing").get_start_method(allow_none=True) in (None, "fork")
    if fork and "fork" in __import__("multiprocessing").get_all_start_methods():
        assert all(r._entries is not None for r in split.readers)


# -- the sampler's order, handed out a chunk at a time ---------------------------------------


@pytest.mark.parametrize("with_seeds", [False, True])
def test_sampler_yields_its_epoch_lazily(with_seeds: bool) -> None:
    s = RecordSampler(10_000, rank=1, world_size=2, shuffle=True, seed=3, with_seeds=with_seeds)
    s.set_epoch(2)
    it = iter(s)
    s.set_epoch(5)  # the running iteration keeps the order it started with
    got = list(it)
    s.set_epoch(2)
    order = s.indices().tolist()
    if with_seeds:
        base = epoch_seed(3, 2, 2) << 32
        assert got == [(i, base | i) for i in order]
        assert all(type(i) is int and type(v) is int for i, v in got)
    else:
        assert got == order and all(type(i) is int for i in got)
    assert len(got) == len(s) == 5_000 and len(set(order)) == 5_000


def test_sampler_computes_each_epoch_once() -> None:
    s = RecordSampler(1000, rank=0, world_size=2, shuffle=True, seed=1)
    first = s.indices()
    assert s.indices() is first and not first.flags.writeable
    s.set_epoch(1)
    second = s.indices()
    assert second is not first and second.tolist() != first.tolist()
    s.seed = 2  # any setting that changes the plan gives a new order
    assert s.indices().tolist() != second.tolist()
    s.seed, s.epoch = 1, 0
    assert s.indices().tolist() == first.tolist()
    assert len(pickle.dumps(s)) < 1024 and list(pickle.loads(pickle.dumps(s))) == list(s)
