"""The shard file format: framing bytes, CRCs, index lines, writer atomicity, reader access."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import pickle
import random
import struct

import pytest
from conftest import image_bytes, make_record, read_idx
from crc32c import crc32c

import recordkit
from recordkit import Record, ShardReader, ShardWriter
from recordkit.format import framing
from recordkit.format.example import decode_example, encode_example, example_parts

# --------------------------------------------------------------------------------------------
# An independent implementation of the framing spec (DESIGN.md contract 1).


def ref_masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % (1 << 32)


def ref_frame(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", ref_masked_crc(length))
        + data
        + struct.pack("<I", ref_masked_crc(data))
    )


def test_crc32c_known_answers():
    # The CRC-32C check value (RFC 3720 / iSCSI): crc32c("123456789").
    assert crc32c(b"123456789") == 0xE3069283
    # RFC 3720 B.4 test vector: 32 bytes of zeros.
    assert crc32c(b"\x00" * 32) == 0x8A9136AA
    assert crc32c(b"") == 0
    # masked values worked out by hand from the formula above.
    assert framing.masked_crc(b"") == 0xA282EAD8
    assert framing.masked_crc(b"\x00" * 32) == (
        ((0x8A9136AA >> 15) | (0x8A9136AA << 17)) + 0xA282EAD8
    ) % (1 << 32)
    assert framing.masked_crc(b"\x00" * 32) == 0x0FD7FFFA  # 0x6D551522 + 0xA282EAD8
    assert framing.masked_crc(b"123456789") == ref_masked_crc(b"123456789")


def test_frame_of_empty_payload_is_the_known_16_bytes():
    length_crc = struct.pack("<I", ref_masked_crc(bytes(8)))
    expected = bytes(8) + length_crc + struct.pack("<I", 0xA282EAD8)
    assert framing.frame(b"") == expected
    assert len(expected) == framing.OVERHEAD == 16


@pytest.mark.parametrize("size", [0, 1, 7, 255, 256, 65536, 100_003])
def test_frame_matches_reference(size):
    data = random.Random(size).randbytes(size)
    assert framing.frame(data) == ref_frame(data)


def _mixed_payloads(n: int) -> list[bytes | Record]:
    """Records of many sizes, with raw payloads (incl. b"") mixed in every so often."""
    rng = random.Random(1234)
    out: list[bytes | Record] = []
    for i in range(n):
        if i == 0:
            out.append(b"")  # zero-length record data
        elif i % 97 == 5:
            out.append(rng.randbytes(rng.randrange(0, 3000)))
        elif i == 1:
            out.append(make_record(i, image=b""))  # zero-length image
        elif i % 11 == 0:
            out.append(make_record(i, labels=(i % 3, (i + 1) % 3, 1000 + i), text=f"cls-{i}"))
        else:
            out.append(make_record(i, image=image_bytes(i, rng.randrange(0, 400))))
    return out


def test_round_trip_many_records_exact_bytes(tmp_path):
    items = _mixed_payloads(500)
    path = tmp_path / "s.tfrecord"
    offsets = []
    with ShardWriter(path) as w:
        for item in items:
            if isinstance(item, bytes):
                offsets.append(w.write_bytes(item))
            else:
                offsets.append(w.write(item))
    payloads = [x if isinstance(x, bytes) else encode_example(x) for x in items]

    # The whole file is exactly the concatenation of reference frames.
    blob = path.read_bytes()
    assert blob == b"".join(ref_frame(p) for p in payloads)

    # ShardInfo describes the file.
    info = w.info
    assert info is not None
    assert (info.records, info.bytes) == (500, len(blob))
    assert info.sha256 == hashlib.sha256(blob).hexdigest()
    assert info.path == path and info.index_path == tmp_path / "s.idx"

    # The index is "<offset> <framed size>\n" per record, exactly.
    sizes = [len(p) + 16 for p in payloads]
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    assert offsets == starts
    assert (tmp_path / "s.idx").read_bytes() == "".join(
        f"{o} {s}\n" for o, s in zip(starts, sizes, strict=True)
    ).encode("ascii")

    r = ShardReader(path)
    assert len(r) == 500
    assert r.entries == list(zip(starts, sizes, strict=True))
    for i, (item, payload) in enumerate(zip(items, payloads, strict=True)):
        assert r.read_bytes(i) == payload
        if isinstance(item, Record):
            assert r[i] == item
    assert [d for _, d in r.iter_bytes()] == payloads
    assert [o for o, _ in r.iter_bytes()] == starts
    # Random access in a shuffled order gives the same bytes.
    order = list(range(500))
    random.Random(7).shuffle(order)
    assert [r.read_bytes(i) for i in order] == [payloads[i] for i in order]


def test_round_trip_record_fields(tmp_path):
    recs = [
        make_record(0, image=b"", text=""),
        make_record(1, labels=(2, 0, 5), text="zwei"),
        make_record(2, labels=[7], filename="ünï/cødé ☃.png", format="png", channels=1),
        make_record(3, labels=(-1,), index=-1, height=0, width=0),
        make_record(4, image=bytes(range(256)) * 40, labels=(2**62,)),
    ]
    path = tmp_path / "f.tfrecord"
    with ShardWriter(path) as w:
        for rec in recs:
            w.write(rec)
    r = ShardReader(path)
    assert [r[i] for i in range(len(recs))] == recs
    assert list(r) == recs
    assert r[1].labels == (2, 0, 5) and r[1].label == 2 and r[1].text == "zwei"
    assert r[0].image == b"" and r[0].text == ""
    assert r[2].text is None and r[2].filename == "ünï/cødé ☃.png" and r[2].channels == 1


def test_record_normalises_labels():
    assert Record(image=b"x", labels=3).labels == (3,)
    assert Record(image=bytearray(b"x"), labels=[1, 2]).image == b"x"
    with pytest.raises(ValueError):
        Record(image=b"x", labels=())


def test_example_encoding_is_deterministic():
    rec = make_record(5, labels=(1, 2, 3), text="t")
    a = encode_example(rec)
    b = encode_example(make_record(5, labels=(1, 2, 3), text="t"))
    assert a == b
    assert decode_example(a) == rec
    # re-encoding a decoded record reproduces the bytes
    assert encode_example(decode_example(a)) == a


def test_empty_shard(tmp_path):
    path = tmp_path / "e.tfrecord"
    with ShardWriter(path) as w:
        pass
    assert path.read_bytes() == b""
    assert (tmp_path / "e.idx").read_bytes() == b""
    assert w.info is not None and (w.info.records, w.info.bytes) == (0, 0)
    r = ShardReader(path)
    assert len(r) == 0 and list(r) == []
    with pytest.raises(IndexError):
        r[0]


def test_writer_renames_only_on_close(tmp_path):
    path = tmp_path / "a.tfrecord"
    w = ShardWriter(path, fsync=False)
    w.write(make_record(0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.idx.tmp", "a.tfrecord.tmp"]
    assert w.records == 1 and w.bytes_written == len(ref_frame(encode_example(make_record(0))))
    info = w.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.idx", "a.tfrecord"]
    assert w.close() is info  # idempotent
    with pytest.raises(ValueError):
        w.write_bytes(b"late")


def test_writer_failure_leaves_nothing(tmp_path):
    path = tmp_path / "b.tfrecord"
    with pytest.raises(RuntimeError, match="boom"), ShardWriter(path) as w:
        w.write(make_record(0))
        w.write_bytes(b"abc")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    assert w.info is None


def test_writer_failure_keeps_an_existing_shard(tmp_path):
    path = tmp_path / "c.tfrecord"
    with ShardWriter(path) as w:
        w.write(make_record(0))
    before = path.read_bytes(), (tmp_path / "c.idx").read_bytes()
    with pytest.raises(KeyError), ShardWriter(path) as w:
        w.write(make_record(1))
        raise KeyError("x")
    assert (path.read_bytes(), (tmp_path / "c.idx").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.idx", "c.tfrecord"]


def test_writer_without_index(tmp_path):
    path = tmp_path / "n.tfrecord"
    with ShardWriter(path, index=False) as w:
        for i in range(3):
            w.write(make_record(i))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.tfrecord"]
    # The reader builds the index by scanning, and it equals what the writer would have written.
    r = ShardReader(path)
    assert [r[i] for i in range(3)] == [make_record(i) for i in range(3)]
    sizes = [len(encode_example(make_record(i))) + 16 for i in range(3)]
    assert r.entries == [(0, sizes[0]), (sizes[0], sizes[1]), (sizes[0] + sizes[1], sizes[2])]
    assert recordkit.build_index(path) == r.entries


@pytest.fixture
def shard(tmp_path):
    path = tmp_path / "r.tfrecord"
    with ShardWriter(path) as w:
        for i in range(20):
            w.write(make_record(i))
    return path


def test_reader_without_crc_check(shard):
    r = ShardReader(shard, verify_crc=False)
    assert [r[i] for i in range(20)] == [make_record(i) for i in range(20)]
    assert list(r) == [make_record(i) for i in range(20)]


def test_reader_index_bounds(shard):
    r = ShardReader(shard)
    assert r[-1] == make_record(19) and r[-20] == make_record(0)
    for bad in (20, 21, -21, 10**9):
        with pytest.raises(IndexError):
            r[bad]
        with pytest.raises(IndexError):
            r.read_bytes(bad)


def test_reader_idx_matches_file(shard):
    entries = read_idx(shard.with_suffix(".idx"))
    assert ShardReader(shard).entries == entries
    assert recordkit.build_index(shard) == entries
    blob = shard.read_bytes()
    for off, size in entries:
        (length,) = struct.unpack_from("<Q", blob, off)
        assert length + 16 == size
    assert entries[-1][0] + entries[-1][1] == len(blob)


def test_reader_context_manager_and_reopen(shard):
    with ShardReader(shard) as r:
        assert r[3] == make_record(3)
    assert r._fd is None
    assert r[4] == make_record(4)  # reopens lazily
    r.close()


def test_reader_pickles(shard):
    r = ShardReader(shard)
    assert r[0] == make_record(0)  # opened: the descriptor must not travel
    r2 = pickle.loads(pickle.dumps(r))
    assert r2._fd is None
    assert [r2[i] for i in range(20)] == [make_record(i) for i in range(20)]
    assert r2.path == r.path and r2.verify_crc is True


def _read_all(reader: ShardReader) -> list[bytes]:
    return [reader[i].image for i in range(len(reader))] + [rec.image for rec in reader]


_INHERITED: ShardReader | None = None


def _read_inherited(q) -> None:
    try:
        assert _INHERITED is not None
        q.put(("ok", _read_all(_INHERITED)))
    except BaseException as exc:  # report to the parent instead of dying silently
        q.put(("error", repr(exc)))


def test_reader_across_fork(shard):
    global _INHERITED
    ctx = mp.get_context("fork")
    r = ShardReader(shard)
    assert r[0] == make_record(0)  # the parent's descriptor is open before forking
    parent_fd = r._fd
    want = [image_bytes(i) for i in range(20)] * 2

    # A pickled reader sent to a pool worker (what DataLoader workers with spawn would get).
    with ctx.Pool(2) as pool:
        got = pool.map(_read_all, [r, r])
    assert got == [want, want]

    # A reader inherited through fork (DataLoader workers with fork).
    _INHERITED = r
    try:
        q = ctx.Queue()
        p = ctx.Process(target=_read_inherited, args=(q,))
        p.start()
        status, value = q.get(timeout=30)
        p.join(30)
    finally:
        _INHERITED = None
    assert (status, value) == ("ok", want)
    assert p.exitcode == 0
    # The parent's descriptor is untouched and still works.
    assert r._fd == parent_fd
    assert r[19] == make_record(19)


# --------------------------------------------------------------------------------------------
# The Example written directly (example_parts) against protobuf's own serializer


def protobuf_example(record: Record) -> bytes:
    """What encode_example wrote before: the message built field by field, deterministic."""
    from recordkit.format import example_pb2

    ex = example_pb2.Example()
    f = ex.features.feature
    f["image/encoded"].bytes_list.value.append(record.image)
    f["image/format"].bytes_list.value.append(record.format.encode())
    f["image/height"].int64_list.value.append(record.height)
    f["image/width"].int64_list.value.append(record.width)
    f["image/channels"].int64_list.value.append(record.channels)
    f["image/class/label"].int64_list.value.extend(record.labels)
    f["image/filename"].bytes_list.value.append(record.filename.encode("utf-8", "surrogateescape"))
    f["image/index"].int64_list.value.append(record.index)
    if record.text is not None:
        f["image/class/text"].bytes_list.value.append(
            record.text.encode("utf-8", "surrogateescape")
        )
    return ex.SerializeToString(deterministic=True)


def test_example_bytes_equal_protobufs_serializer():
    rng = random.Random(7)
    ints = [0, 1, -1, 127, 128, 300, 16383, 16384, 2**21, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63)]
    sizes = [0, 1, 127, 128, 16383, 16384, 70_000, 2**21 + 3]
    names = ["", "a/b.jpg", "x" * 200, "é/\udcff.png"]
    texts = [None, "", "cat", "y" * 300, "\udcfe"]
    for _ in range(3000):
        n = rng.choice(sizes)
        rec = Record(
            image=bytes([rng.getrandbits(8)]) * n,
            labels=tuple(rng.choice(ints) for _ in range(rng.randint(1, 4))),
            filename=rng.choice(names),
            index=rng.choice(ints),
            format=rng.choice(["jpeg", "png", ""]),
            height=rng.choice(ints),
            width=rng.choice(ints),
            channels=rng.choice(ints),
            text=rng.choice(texts),
        )
        expected = protobuf_example(rec)
        assert encode_example(rec) == expected
        head, tail = example_parts(rec)
        assert head + rec.image + tail == expected
        assert framing.frame_parts(head, rec.image, tail) == ref_frame(expected)


def test_frame_parts_equals_frame_of_the_join():
    parts = [b"", b"a", bytes(range(256)) * 300, b"\x00" * 5]
    assert framing.frame_parts(*parts) == ref_frame(b"".join(parts))
    assert framing.frame_parts() == ref_frame(b"")


def test_writer_syncs_in_the_background_and_writes_the_same_bytes(tmp_path, monkeypatch):
    from recordkit.format import writer as writer_mod

    calls = []
    monkeypatch.setattr(writer_mod, "_SYNC_EVERY", 1000)
    monkeypatch.setattr(writer_mod, "_fdatasync", lambda fd: calls.append(os.fstat(fd).st_size))
    recs = [make_record(i) for i in range(40)]
    for fsync, name in ((True, "a.tfrecord"), (False, "b.tfrecord")):
        with ShardWriter(tmp_path / name, fsync=fsync) as w:
            for r in recs:
                w.write(r)
    assert (tmp_path / "a.tfrecord").read_bytes() == (tmp_path / "b.tfrecord").read_bytes()
    assert calls and all(size > 0 for size in calls)  # it synced what was written so far


def test_writer_reports_a_background_sync_failure_at_close(tmp_path, monkeypatch):
    from recordkit.format import writer as writer_mod

    def fail(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(writer_mod, "_SYNC_EVERY", 100)
    monkeypatch.setattr(writer_mod, "_fdatasync", fail)
    path = tmp_path / "x.tfrecord"
    w = ShardWriter(path)
    for i in range(10):
        w.write(make_record(i))
    with pytest.raises(OSError, match="Input/output error"):
        w.close()
    w.abort()
    assert not path.exists() and not list(tmp_path.glob("*.tmp"))
