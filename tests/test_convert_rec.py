"""``recordkit convert-rec``: MXNet RecordIO files made by the real im2rec → recordkit shards.

``fixtures/mxnet/`` was made with MXNet 1.9.1's own ``im2rec.py`` and read back with
``mxnet.recordio.MXIndexedRecordIO`` into ``expected.json`` (see its README.md). Every record's
key, id, flag, labels and image SHA-256 is compared exactly, with and without the ``.idx``;
``fox/magic.jpg`` contains the RecordIO magic at aligned offsets, so im2rec split it into
continuation records (cflag 1, 2, 3) that must join back byte for byte.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import assert_one_line_error

import recordkit
from recordkit.cli import main
from recordkit.errors import RecordkitError
from recordkit.imageinfo import NotAnImage, image_info
from recordkit.interop import (
    ConvertError,
    ConvertOptions,
    RecFormatError,
    convert_rec,
    read_class_names,
    read_idx,
    read_rec,
    scan_rec_headers,
)

FIX = Path(__file__).parent / "fixtures" / "mxnet"
EXPECTED = json.loads((FIX / "expected.json").read_text())
NAMES = ("single", "multi", "resized")
MAGIC = struct.pack("<I", 0xCED7230A)


# --- helpers ---------------------------------------------------------------------------------
def frame(payload: bytes) -> bytes:
    """RecordIO-frame one payload as dmlc's ``RecordIOWriter::WriteRecord`` does."""
    out = []
    dptr = 0
    for i in range(0, len(payload) - len(payload) % 4, 4):
        if payload[i : i + 4] == MAGIC:
            out.append(_part(1 if dptr == 0 else 2, payload[dptr:i]))
            dptr = i + 4
    out.append(_part(3 if dptr else 0, payload[dptr:]))
    return b"".join(out)


def _part(cflag: int, data: bytes) -> bytes:
    pad = b"\0" * (-len(data) % 4)
    return MAGIC + struct.pack("<I", (cflag << 29) | len(data)) + data + pad


def ir(id_: int, labels: float | list[float], image: bytes) -> bytes:
    """An image record payload as ``mxnet.recordio.pack`` makes it."""
    if isinstance(labels, list):
        head = struct.pack("<IfQQ", len(labels), 0.0, id_, 0)
        return head + struct.pack(f"<{len(labels)}f", *labels) + image
    return struct.pack("<IfQQ", 0, labels, id_, 0) + image


def write_rec(path: Path, payloads: list[bytes]) -> list[int]:
    """Write a ``.rec`` and its ``.idx`` (keys 0..n-1); return the record offsets."""
    offsets, blob = [], b""
    for p in payloads:
        offsets.append(len(blob))
        blob += frame(p)
    path.write_bytes(blob)
    path.with_suffix(".idx").write_text("".join(f"{k}\t{o}\n" for k, o in enumerate(offsets)))
    return offsets


def lst_entries(name: str) -> list[tuple[int, list[float], str]]:
    out = []
    for line in (FIX / f"{name}.lst").read_text().splitlines():
        fields = line.split("\t")
        out.append((int(fields[0]), [float(x) for x in fields[1:-1]], fields[-1]))
    return out


def as_expected(r) -> dict:
    return {
        "key": r.key if r.key is not None else r.id,
        "id": r.id,
        "flag": r.flag,
        "label": list(r.labels) if r.flag else r.labels[0],
        "nbytes": len(r.image),
        "sha256": hashlib.sha256(r.image).hexdigest(),
    }


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def run(runner: CliRunner, *args: object):
    return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))}


# --- the reader against MXNet's own output -----------------------------------------------------
@pytest.mark.parametrize("with_idx", [True, False], ids=["idx", "scan"])
@pytest.mark.parametrize("name", NAMES)
def test_read_rec_matches_mxnet(name, with_idx):
    idx = FIX / f"{name}.idx" if with_idx else None
    got = [as_expected(r) for r in read_rec(FIX / f"{name}.rec", idx)]
    assert got == EXPECTED[name]
    headers = list(scan_rec_headers(FIX / f"{name}.rec", idx))
    assert [h.image_size for h in headers] == [e["nbytes"] for e in EXPECTED[name]]
    assert [h.id for h in headers] == [e["id"] for e in EXPECTED[name]]


def test_keys_come_from_the_idx_and_offsets_are_record_starts():
    idx = read_idx(FIX / "single.idx")
    records = list(read_rec(FIX / "single.rec", FIX / "single.idx"))
    assert [(r.key, r.offset) for r in records] == idx
    assert [r.key for r in read_rec(FIX / "single.rec")] == [None] * len(idx)
    assert [r.offset for r in read_rec(FIX / "single.rec")] == [o for _, o in idx]


@pytest.mark.parametrize("name", ["single", "multi"])
def test_continuation_record_comes_back_byte_identical(name):
    source = (FIX / "imgs" / "fox" / "magic.jpg").read_bytes()
    assert MAGIC in source  # the point of the fixture
    (rec,) = [r for r in read_rec(FIX / f"{name}.rec") if r.id == 12]
    assert rec.parts == 3
    assert rec.image == source


@pytest.mark.parametrize("name", NAMES)
def test_our_test_writer_reproduces_im2rec_bytes(name):
    """The framing helper below builds damaged files; check it first against the real thing."""
    records = list(read_rec(FIX / f"{name}.rec"))
    payloads = [ir(r.id, list(r.labels) if r.flag else r.labels[0], r.image) for r in records]
    assert b"".join(frame(p) for p in payloads) == (FIX / f"{name}.rec").read_bytes()


def test_pass_through_payloads_are_the_source_files():
    by_id = {i: path for i, _, path in lst_entries("single")}
    for r in read_rec(FIX / "single.rec"):
        assert r.image == (FIX / "imgs" / by_id[r.id]).read_bytes()


def test_multi_label_records_carry_both_labels():
    for r in read_rec(FIX / "multi.rec"):
        assert r.flag == 2
        assert r.labels[1] == r.labels[0] + 10


def test_read_idx_errors(tmp_path):
    bad = tmp_path / "bad.idx"
    bad.write_text("0\t0\n1\tnot-a-number\n")
    with pytest.raises(RecordkitError, match=r"line 2: expected 'key<TAB>offset'"):
        read_idx(bad)
    bad.write_text("0\t0\n0\t8\n")
    with pytest.raises(RecordkitError, match="key 0 repeats line 1"):
        read_idx(bad)


# --- image headers -----------------------------------------------------------------------------
def test_image_info_reads_the_fixture_images():
    from PIL import Image

    for path in sorted((FIX / "imgs").rglob("*.*")):
        info = image_info(path.read_bytes())
        with Image.open(path) as im:
            assert (info.width, info.height) == im.size
            assert info.format == im.format.lower()
            assert info.channels == 3


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty image"),
        (b"GIF89a\x01\x00", "not a JPEG or PNG"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "without a frame header"),
        (b"\x89PNG\r\n\x1a\n\x00", "without an IHDR"),
    ],
)
def test_image_info_rejects(data, reason):
    with pytest.raises(NotAnImage, match=reason):
        image_info(data)


# --- conversion --------------------------------------------------------------------------------
@pytest.mark.parametrize("with_idx", [True, False], ids=["idx", "scan"])
@pytest.mark.parametrize("name", NAMES)
def test_convert_preserves_records(tmp_path, name, with_idx):
    out = tmp_path / "shards"
    idx = FIX / f"{name}.idx" if with_idx else None
    res = convert_rec(
        FIX / f"{name}.rec",
        ConvertOptions(out=out, shard_size=5, fsync=False),
        idx=idx,
        lst=FIX / f"{name}.lst",
    )
    assert (res.records, res.shards, res.skipped) == (13, 3, [])
    ds = recordkit.open(out)
    split = ds["train"]
    assert len(split) == 13
    paths = {i: path for i, _, path in lst_entries(name)}
    for rec, want in zip(split, EXPECTED[name], strict=True):
        assert rec.index == want["id"]
        labels = want["label"] if isinstance(want["label"], list) else [want["label"]]
        assert list(rec.labels) == [int(x) for x in labels]
        assert sha(rec.image) == want["sha256"]
        assert rec.filename == paths[want["id"]]
        info = image_info(rec.image)
        assert (rec.format, rec.width, rec.height) == (info.format, info.width, info.height)
        png = paths[want["id"]].endswith(".png") and name != "resized"  # resized: re-encoded
        assert rec.format == ("png" if png else "jpeg")
        assert rec.text == ds.classes[rec.labels[0]]
    assert recordkit.verify(out).ok


def test_convert_sizes_match_the_decoded_images(tmp_path):
    from PIL import Image

    out = tmp_path / "shards"
    convert_rec(FIX / "resized.rec", ConvertOptions(out=out, fsync=False))
    for rec in recordkit.open(out)["train"]:
        with Image.open(io.BytesIO(rec.image)) as im:
            im.load()
            assert (rec.width, rec.height) == im.size
            assert min(im.size) == 16  # im2rec --resize 16


def test_class_names_from_lst_match_im2rec_table(tmp_path):
    table = [line.split()[0] for line in (FIX / "single.classes.txt").read_text().splitlines()]
    assert read_class_names(FIX / "single.classes.txt") == table
    out = tmp_path / "shards"
    res = convert_rec(
        FIX / "single.rec", ConvertOptions(out=out, fsync=False), lst=FIX / "single.lst"
    )
    assert res.classes == table == recordkit.open(out).classes == ["cat", "dog", "fox"]


def test_classes_file_and_numbered_fallback(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("tabby\nbeagle\narctic\n")
    res = convert_rec(
        FIX / "single.rec",
        ConvertOptions(out=tmp_path / "a", fsync=False),
        lst=FIX / "single.lst",
        classes=names,
    )
    assert res.classes == ["tabby", "beagle", "arctic"]
    assert recordkit.open(tmp_path / "a")["train"][0].text == "arctic"  # id 9: a fox
    res = convert_rec(FIX / "single.rec", ConvertOptions(out=tmp_path / "b", fsync=False))
    assert res.classes == ["0", "1", "2"]
    # multi.rec carries labels 10..12: numbered names cover every label, as pack does.
    res = convert_rec(
        FIX / "multi.rec", ConvertOptions(out=tmp_path / "c", fsync=False), lst=FIX / "multi.lst"
    )
    assert res.classes == [str(k) for k in range(13)]
    assert recordkit.verify(tmp_path / "c").ok
    names.write_text("a\nb\n")
    with pytest.raises(ConvertError, match="names 2 classes, but the records carry label 2"):
        convert_rec(FIX / "single.rec", ConvertOptions(out=tmp_path / "d"), classes=names)
    assert not (tmp_path / "d").exists()


def test_read_class_names_layouts(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("dog 1\ncat 0\n\n")
    assert read_class_names(p) == ["cat", "dog"]
    p.write_text("n01440764 tench\nn01443537 goldfish\n")
    assert read_class_names(p) == ["n01440764 tench", "n01443537 goldfish"]
    p.write_text("cat 0\ndog 2\n")
    with pytest.raises(ConvertError, match="label 1 is missing"):
        read_class_names(p)
    p.write_text("cat\ncat\n")
    with pytest.raises(ConvertError, match="given twice"):
        read_class_names(p)


def test_shard_bytes_cuts_contiguous_near_equal_shards(tmp_path):
    out = tmp_path / "shards"
    res = convert_rec(FIX / "single.rec", ConvertOptions(out=out, shard_bytes=3000, fsync=False))
    manifest = recordkit.read_manifest(out)
    counts = [s.records for s in manifest.splits["train"].shards]
    assert res.shards == len(counts) == 4 and counts == [3, 3, 3, 4]
    assert [r.index for r in recordkit.open(out)["train"]] == [e["id"] for e in EXPECTED["single"]]


def test_non_image_payloads_are_skipped_and_listed(tmp_path):
    jpg = (FIX / "imgs" / "cat" / "cat0.jpg").read_bytes()
    rec = tmp_path / "x.rec"
    write_rec(rec, [ir(0, 0, jpg), ir(1, 1, b"GIF89a not ours"), ir(2, 0, b""), ir(3, 1, jpg)])
    out = tmp_path / "shards"
    res = convert_rec(rec, ConvertOptions(out=out, fsync=False))
    assert res.records == 2
    assert [(s["id"], s["path"]) for s in res.skipped] == [(1, "x.rec#1"), (2, "x.rec#2")]
    manifest = recordkit.read_manifest(out)
    assert [s["reason"] for s in manifest.skipped][1] == "empty image (0 bytes)"
    assert [r.index for r in recordkit.open(out)["train"]] == [0, 3]
    assert recordkit.verify(out).ok


def test_strict_failure_in_the_copy_leaves_nothing(tmp_path):
    jpg = (FIX / "imgs" / "cat" / "cat0.jpg").read_bytes()
    rec = tmp_path / "x.rec"
    offsets = write_rec(rec, [ir(i, 0, jpg) for i in range(5)] + [ir(5, 0, b"junk")])
    out = tmp_path / "shards"
    with pytest.raises(ConvertError, match=rf"offset {offsets[5]}: record id 5: not a JPEG"):
        convert_rec(rec, ConvertOptions(out=out, shard_size=2, strict=True, fsync=False))
    assert not out.exists()  # two finished shards were removed again, and the directory


def test_second_split_overwrite_and_conflicts(tmp_path, runner):
    out = tmp_path / "shards"
    opts = {"out": out, "fsync": False}
    convert_rec(FIX / "single.rec", ConvertOptions(**opts), lst=FIX / "single.lst")
    convert_rec(FIX / "resized.rec", ConvertOptions(split="val", **opts), lst=FIX / "resized.lst")
    ds = recordkit.open(out)
    assert sorted(ds.splits) == ["train", "val"] and ds.classes == ["cat", "dog", "fox"]
    with pytest.raises(ConvertError, match="split 'val' is already in"):
        convert_rec(FIX / "resized.rec", ConvertOptions(split="val", **opts))
    # Numbered names defer to the names already there.
    res = convert_rec(FIX / "resized.rec", ConvertOptions(split="val", overwrite=True, **opts))
    assert res.classes == ["cat", "dog", "fox"]
    names = tmp_path / "names.txt"
    names.write_text("x\ny\nz\n")
    before = tree(out)
    with pytest.raises(ConvertError, match="label 0 is 'x' here but 'cat'"):
        convert_rec(FIX / "resized.rec", ConvertOptions(split="test", **opts), classes=names)
    assert tree(out) == before
    assert recordkit.verify(out).ok


def test_unfinished_files_need_overwrite(tmp_path):
    out = tmp_path / "shards"
    out.mkdir()
    (out / "train-00000-of-00002.tfrecord.tmp").write_bytes(b"x")
    with pytest.raises(ConvertError, match="unfinished files of split 'train'"):
        convert_rec(FIX / "single.rec", ConvertOptions(out=out, fsync=False))
    convert_rec(FIX / "single.rec", ConvertOptions(out=out, overwrite=True, fsync=False))
    assert sorted(p.name for p in out.iterdir()) == [
        "recordkit.json",
        "train-00000-of-00001.idx",
        "train-00000-of-00001.tfrecord",
    ]


# --- input errors ------------------------------------------------------------------------------
def test_label_errors_name_the_record(tmp_path):
    jpg = (FIX / "imgs" / "cat" / "cat0.jpg").read_bytes()
    rec = tmp_path / "det.rec"
    offsets = write_rec(rec, [ir(0, 1, jpg), ir(7, [4.0, 0.25, 0.5], jpg)])
    with pytest.raises(ConvertError, match=rf"offset {offsets[1]}: record id 7 has label 0.25"):
        convert_rec(rec, ConvertOptions(out=tmp_path / "out"))
    write_rec(rec, [ir(0, -1.0, jpg)])
    with pytest.raises(ConvertError, match="record id 0 has label -1, not a non-negative"):
        convert_rec(rec, ConvertOptions(out=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_wrong_lst_is_refused(tmp_path):
    with pytest.raises(ConvertError, match=r"record id 9 has label\(s\) 2, 12 but .* gives 2 for"):
        convert_rec(FIX / "multi.rec", ConvertOptions(out=tmp_path / "o"), lst=FIX / "single.lst")
    lst = tmp_path / "short.lst"
    lst.write_text("\n".join((FIX / "single.lst").read_text().splitlines()[1:]) + "\n")
    with pytest.raises(ConvertError, match="offset 0: record id 9 is not in"):
        convert_rec(FIX / "single.rec", ConvertOptions(out=tmp_path / "o"), lst=lst)
    assert not (tmp_path / "o").exists()


# --- damaged files: one error line with the byte offset, nothing written ------------------------
def damaged(tmp_path: Path, case: str) -> tuple[Path, Path | None, str]:
    """A damaged copy of single.rec, its .idx if the case needs one, and the expected offset."""
    data = bytearray((FIX / "single.rec").read_bytes())
    idx = None
    if case == "truncated":
        data = data[:3000]  # inside the record at 2740
        where = "offset 2740"
    elif case == "truncated-header":
        data = data[: 2740 + 5]
        where = "offset 2740"
    elif case == "magic":
        data[1368:1372] = b"\0\0\0\0"
        where = "offset 1368"
    elif case == "continuation":
        struct.pack_into("<I", data, 6348 + 4, (0 << 29) | 4)  # middle part claims cflag 0
        where = "offset 5672"
    elif case == "short-header":
        data = data[:4100] + _part(0, b"\x00" * 20)
        where = "offset 4100"
    elif case == "label-count":
        data = data[:4100] + _part(0, struct.pack("<IfQQ", 1000, 0.0, 3, 0) + b"x" * 8)
        where = "offset 4100"
    elif case in ("idx-inside", "idx-past-end"):
        bad = 2748 if case == "idx-inside" else 99999  # inside record 0's image header / past EOF
        idx = tmp_path / f"{case}.idx"
        idx.write_text((FIX / "single.idx").read_text().replace("\t2740\n", f"\t{bad}\n"))
        where = f"offset {bad}"
    else:  # pragma: no cover
        raise AssertionError(case)
    rec = tmp_path / f"{case}.rec"
    rec.write_bytes(bytes(data))
    return rec, idx, where


CASES = {
    "truncated": "truncated file",
    "truncated-header": "truncated record header",
    "magic": "bad RecordIO magic 0x00000000",
    "continuation": "flag 0 (expected 2 or 3)",
    "short-header": "fewer than the 24-byte IRHeader",
    "label-count": "flag 1000 announces 1000 float32 labels",
    "idx-inside": "bad RecordIO magic",
    "idx-past-end": "past the end of the file",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_rec_reader_raises_with_offset(tmp_path, case):
    rec, idx, where = damaged(tmp_path, case)
    with pytest.raises(RecFormatError, match=re.escape(CASES[case])) as info:
        list(read_rec(rec, idx))
    assert where in str(info.value) and str(rec) in str(info.value)


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_rec_cli_one_line_error_and_no_output(tmp_path, runner, case):
    rec, idx, where = damaged(tmp_path, case)
    out = tmp_path / "shards"
    args = ["convert-rec", rec, "--out", out] + (["--idx", idx] if idx else [])
    assert_one_line_error(run(runner, *args), where, CASES[case])
    assert not out.exists()


def test_damaged_rec_leaves_an_existing_dataset_alone(tmp_path, runner):
    out = tmp_path / "shards"
    convert_rec(FIX / "single.rec", ConvertOptions(out=out, fsync=False))
    before = tree(out)
    rec, _, where = damaged(tmp_path, "magic")
    assert_one_line_error(run(runner, "convert-rec", rec, "--out", out, "--split", "val"), where)
    result = run(runner, "convert-rec", rec, "--out", out, "--overwrite")
    assert_one_line_error(result, where)
    assert tree(out) == before


# --- command line ------------------------------------------------------------------------------
def test_cli_end_to_end(tmp_path, runner):
    out = tmp_path / "shards"
    result = run(
        runner, "convert-rec", FIX / "single.rec", "--idx", FIX / "single.idx",
        "--lst", FIX / "single.lst", "--out", out, "--shard-size", "5",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.startswith("converted 13 records into split 'train' (3 shard(s))")
    result = run(
        runner, "convert-rec", FIX / "resized.rec", "--out", out, "--split", "val",
        "--shard-bytes", "4kB", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "(3 shard(s))" in result.output
    ds = recordkit.open(out)
    assert ds.classes == ["cat", "dog", "fox"]
    assert len(ds["train"]) == len(ds["val"]) == 13
    assert [sha(r.image) for r in ds["train"]] == [e["sha256"] for e in EXPECTED["single"]]
    assert [sha(r.image) for r in ds["val"]] == [e["sha256"] for e in EXPECTED["resized"]]
    verify = run(runner, "verify", out)
    assert verify.exit_code == 0, verify.output
    assert "26 record(s)" in verify.output and verify.output.strip().endswith("OK")


def test_cli_numbered_names_grow_into_a_conflict(tmp_path, runner):
    """multi.rec's labels reach 12; a dataset with 3 named classes cannot take them."""
    out = tmp_path / "shards"
    assert run(runner, "convert-rec", FIX / "single.rec", "--out", out, "--lst",
               FIX / "single.lst").exit_code == 0  # fmt: skip
    assert_one_line_error(
        run(runner, "convert-rec", FIX / "multi.rec", "--out", out, "--split", "val"),
        "class map conflicts",
    )


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["missing.rec"], ["no such file: missing.rec"]),
        (["REC", "--idx", "missing.idx"], ["cannot read missing.idx"]),
        (["REC", "--lst", "missing.lst"], ["cannot read missing.lst"]),
        (["REC", "--classes", "missing.txt"], ["cannot read class names from missing.txt"]),
        (["REC", "--split", "a/b"], ["invalid split name 'a/b'"]),
    ],
)
def test_cli_input_errors(tmp_path, runner, monkeypatch, args, needles):
    monkeypatch.chdir(tmp_path)
    args = [str(FIX / "single.rec") if a == "REC" else a for a in args]
    assert_one_line_error(run(runner, "convert-rec", *args), *needles)
    assert not (tmp_path / "shards").exists()


def test_cli_bad_shard_bytes_is_a_usage_error(runner, tmp_path):
    result = run(runner, "convert-rec", FIX / "single.rec", "--shard-bytes", "lots")
    assert result.exit_code == 2 and "not a size: 'lots'" in result.output


def test_convert_rec_does_not_import_torch_dali_or_opencv(tmp_path):
    code = f"""
import sys
from recordkit.cli import main
try:
    main(["convert-rec", "{FIX / "single.rec"}", "--out", "{tmp_path / "o"}", "-q"],
         standalone_mode=False)
except SystemExit as e:
    assert not e.code, e.code
heavy = [m for m in ("torch", "nvidia.dali", "tensorflow", "cv2") if m in sys.modules]
print("HEAVY", heavy)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
    assert (tmp_path / "o" / "recordkit.json").is_file()


def test_fixture_copy_is_complete():
    src = sorted(p.name for p in FIX.iterdir())
    assert src == sorted(
        ["README.md", "expected.json", "imgs"]
        + [f"{n}.{ext}" for n in NAMES for ext in ("idx", "lst", "rec")]
        + ["single.classes.txt"]
    )
