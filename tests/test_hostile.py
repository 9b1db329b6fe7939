"""Hostile and damaged inputs: one ``Error:`` line (or a recordkit exception), never a traceback,
a hang or an unbounded read (issue 16).

Each test here failed on the code before the fix it covers. Cases that would read without bound
or hang on unfixed code run in a child process under a memory cap and a timeout
(``tests/guarded.py``), so a regression fails the test instead of the machine.
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import assert_one_line_error, make_record
from guarded import run_guarded
from PIL import Image

import recordkit
from recordkit import CorruptRecordError, RecordkitError, ShardWriter
from recordkit.cli import main
from recordkit.format import framing
from recordkit.format.example import encode_example, encode_features
from recordkit.summary import inspect_dataset

N = 16
SHARD0 = "train-00000-of-00004.tfrecord"


@pytest.fixture
def ds(tmp_path, make_shards, make_records) -> Path:
    """16 records in 4 shards of 4, classes class0..class2."""
    return make_shards(tmp_path / "ds", splits={"train": make_records(N)}, records_per_shard=4)


def cli(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def edit_manifest(root: Path, edit: Callable[[dict], object]) -> None:
    path = root / "recordkit.json"
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))


def replace_text(root: Path, old: str, new: str) -> None:
    path = root / "recordkit.json"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def assert_refused_everywhere(root: Path, *needles: str) -> None:
    """verify, inspect (CLI: one Error: line) and recordkit.open (a recordkit exception)."""
    for command in ("verify", "inspect"):
        assert_one_line_error(cli(command, "-q", root), *needles)
    with pytest.raises(RecordkitError) as ei:
        list(recordkit.open(root)["train"])
    for n in needles:
        assert n in str(ei.value)


def no_hang(fn: Callable[[], object], fifos: list[Path], timeout: float = 20) -> object:
    """Run ``fn`` in a thread; if it is still running after ``timeout`` seconds, open each FIFO
    for writing (which releases a reader blocked on it) and fail."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        for fifo in fifos:
            os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))
        t.join(5)
        pytest.fail(f"hung for {timeout} s on a FIFO")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


# --------------------------------------------------------------------------------------------
# inspect: a record that is not an image Example


@pytest.mark.parametrize(
    "payload",
    [b"\xff" * 24, b"\x08\x01", encode_features({"x": [1]})],
    ids=["not-protobuf", "not-an-example", "no-image-feature"],
)
def test_inspect_names_a_record_that_is_not_an_image_example(tmp_path, payload):
    root = tmp_path / "ds"
    root.mkdir()
    records = [make_record(i) for i in range(3)]
    with ShardWriter(root / "train-00000-of-00001.tfrecord") as w:
        w.write(records[0])
        w.write_bytes(payload)
        w.write(records[2])
    info = w.info
    manifest = recordkit.Manifest(
        classes=["a", "b", "c"],
        splits={
            "train": recordkit.SplitEntry(
                (
                    recordkit.ShardEntry(
                        info.path.name, info.index_path.name, 3, info.bytes, info.sha256
                    ),
                )
            )
        },
    )
    recordkit.write_manifest(manifest, root)
    offset = len(framing.frame(encode_example(records[0])))
    result = cli("inspect", "-q", root)
    assert_one_line_error(result, "train-00000-of-00001.tfrecord", f"offset {offset}")
    with pytest.raises(CorruptRecordError) as ei:
        inspect_dataset(root)
    assert ei.value.offset == offset


# --------------------------------------------------------------------------------------------
# Manifest values


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ('"pack": {}', '"pack": ' + "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('"records": 4,', '"records": Infinity,', "Infinity"),
        ('"records": 4,', '"records": 1' + "0" * 4000 + ",", "13288 bits"),
        ('"records": 4,', f'"records": {2**63},', "2**63"),
        ('"records": 4,', '"records": 1' + "0" * 5000 + ",", "not valid JSON"),
        ('"records": 4,', '"records": 4.0,', "must be an integer"),
        ('"records": 4,', '"records": true,', "must be an integer"),
        ('"sha256"', '"bytes": 1e3, "sha256"', "must be an integer"),
        ('"format_version": 1', '"format_version": true', "format_version"),
        (f'"file": "{SHARD0}"', '"file": "train-0\\u0000.tfrecord"', "plain file name"),
        (f'"file": "{SHARD0}"', '"file": "a\\nb.tfrecord"', "plain file name"),
        (f'"file": "{SHARD0}"', '"file": 7', "must be a string"),
        ('"classes": [', '"classes": "abc", "x": [', "classes must be a JSON array"),
        ('"class0"', "0", "classes[0] must be a string"),
        ('"records": 4,', '"records": 400,', "cannot fit"),
        ('"sha256": "', '"sha256": "zz', "hex"),
    ],
    ids=lambda v: v if len(v) < 20 else v[:20],
)
def test_hostile_manifest_values(ds, old, new, needle):
    replace_text(ds, old, new)
    assert_refused_everywhere(ds, "recordkit.json", needle)


def test_a_shard_listed_twice_is_refused(ds):
    edit_manifest(
        ds, lambda d: d["splits"]["train"]["shards"].append(d["splits"]["train"]["shards"][0])
    )
    assert_refused_everywhere(ds, "recordkit.json", "already listed", SHARD0)


def test_a_shard_listed_in_two_splits_is_refused(ds):
    edit_manifest(
        ds, lambda d: d["splits"].update(val={"shards": d["splits"]["train"]["shards"][:1]})
    )
    assert_refused_everywhere(ds, "already listed", SHARD0)


def test_a_manifest_that_is_a_fifo_or_dev_zero(ds):
    manifest = ds / "recordkit.json"
    manifest.unlink()
    os.mkfifo(manifest)
    no_hang(lambda: assert_refused_everywhere(ds, "recordkit.json", "FIFO"), [manifest])
    manifest.unlink()
    manifest.symlink_to("/dev/zero")
    assert_refused_everywhere(ds, "recordkit.json", "character device")


# --------------------------------------------------------------------------------------------
# Shard and index files that are not regular files


@pytest.mark.dali
def test_a_shard_that_is_a_fifo_does_not_hang_the_dali_loader(ds):
    """DALI's reader opens shard files itself, blocking: the loader refuses a FIFO first."""
    pytest.importorskip("nvidia.dali")
    from recordkit.safeio import InputFileError

    shard = ds / SHARD0
    shard.unlink()
    os.mkfifo(shard)

    def make() -> None:
        with pytest.raises(InputFileError, match="is a FIFO"):
            recordkit.make_loader(ds, "train", batch_size=2, backend="dali", num_workers=1)

    no_hang(make, [shard])


def test_a_shard_that_is_a_fifo_does_not_hang(ds):
    shard = ds / SHARD0
    shard.unlink()
    os.mkfifo(shard)
    no_hang(lambda: assert_one_line_error(cli("inspect", "-q", ds), SHARD0, "FIFO"), [shard])
    rep = no_hang(lambda: recordkit.verify(ds), [shard])
    assert [(p.path, "FIFO" in p.message) for p in rep.problems] == [(str(shard), True)]
    result = no_hang(lambda: cli("verify", "-q", ds), [shard])
    assert result.exit_code == 1 and result.exception.__class__ is SystemExit
    assert (
        result.output.splitlines()[0]
        == f"{shard}: is a FIFO; only regular files are read as shards"
    )
    split = recordkit.open(ds)["train"]
    for read in (lambda: split[0], lambda: list(split), lambda: recordkit.ShardReader(shard)[0]):
        with pytest.raises(RecordkitError, match="FIFO"):
            no_hang(read, [shard])
    assert split[4] == make_record(4)  # the other shards still read


def test_an_index_that_is_a_fifo_does_not_hang(ds):
    idx = ds / "train-00000-of-00004.idx"
    idx.unlink()
    os.mkfifo(idx)
    rep = no_hang(lambda: recordkit.verify(ds), [idx])
    assert [(p.path, "FIFO" in p.message) for p in rep.problems] == [(str(idx), True)]
    with pytest.raises(RecordkitError, match="FIFO"):
        no_hang(lambda: recordkit.open(ds)["train"][0], [idx])


def test_an_index_linked_to_dev_zero_is_not_read_without_bound(ds):
    idx = ds / "train-00000-of-00004.idx"
    idx.unlink()
    idx.symlink_to("/dev/zero")
    for command in ("verify", "inspect"):
        run = run_guarded(["recordkit", command, "-q", str(ds)], timeout=60)
        assert not run.hung and not run.traceback and not run.out_of_memory, run
        assert run.returncode == 1
    run = run_guarded(["recordkit", "inspect", "-q", str(ds)])
    assert run.last_line.startswith("Error: ") and "character device" in run.last_line, run


def test_an_index_larger_than_its_data_file_allows(ds):
    idx = ds / "train-00000-of-00004.idx"
    idx.write_bytes(idx.read_bytes() + b"\n" * (1 << 20))
    with pytest.raises(recordkit.IndexMismatchError, match="too large"):
        recordkit.open(ds)["train"][0]
    rep = recordkit.verify(ds)
    assert [p.path for p in rep.problems] == [str(idx)], rep.problems


@pytest.mark.parametrize(
    "spell",
    [
        lambda off, size: off + b" " + b"_".join(bytes([c]) for c in size),  # "0 3_0_0"
        lambda off, size: b"0_0 " + size,
        lambda off, size: b"+0 " + size,
        lambda off, size: off + b" +" + size,
    ],
    ids=["underscores", "underscored-offset", "plus-offset", "plus-size"],
)
def test_index_numbers_are_plain_decimal_digits(ds, spell):
    """``int()`` takes these spellings; DALI's tfrecord2idx writes none of them."""
    idx = ds / "train-00000-of-00004.idx"
    first, *rest = idx.read_bytes().split(b"\n")
    idx.write_bytes(b"\n".join([spell(*first.split()), *rest]))
    rep = recordkit.verify(ds)
    assert [(p.path, p.offset) for p in rep.problems] == [(str(idx), 0)], rep.problems
    assert "malformed" in rep.problems[0].message
    with pytest.raises(recordkit.IndexMismatchError):
        recordkit.open(ds)["train"][0]


# --------------------------------------------------------------------------------------------
# verify: what it used to pass


def test_empty_class_list_does_not_turn_the_label_check_off(ds):
    edit_manifest(ds, lambda d: d.update(classes=[]))
    rep = recordkit.verify(ds)
    assert len(rep.problems) == N and all("outside [0, 0)" in p.message for p in rep.problems)


def test_a_shard_dropped_from_the_manifest_is_reported(ds):
    edit_manifest(
        ds,
        lambda d: d["splits"]["train"].update(
            records=12,
            bytes=d["splits"]["train"]["bytes"] - d["splits"]["train"]["shards"][3]["bytes"],
            shards=d["splits"]["train"]["shards"][:3],
        ),
    )
    rep = recordkit.verify(ds)
    assert sorted(p.path for p in rep.problems) == [
        str(ds / "train-00003-of-00004.idx"),
        str(ds / "train-00003-of-00004.tfrecord"),
    ]
    assert all("not listed in the manifest" in p.message for p in rep.problems)
    result = cli("verify", "-q", ds)
    assert result.exit_code == 1 and "not listed in the manifest" in result.output


@pytest.mark.parametrize(("key", "delta"), [("records", 1), ("bytes", -1)])
def test_split_level_totals_are_checked(ds, key, delta):
    edit_manifest(
        ds, lambda d: d["splits"]["train"].update({key: d["splits"]["train"][key] + delta})
    )
    rep = recordkit.verify(ds)
    assert [(p.path, key in p.message) for p in rep.problems] == [
        (str(ds / "recordkit.json"), True)
    ]


def test_many_labels_in_a_single_label_split(tmp_path, make_shards):
    records = [make_record(i) for i in range(3)] + [make_record(3, labels=(1,) * 10_000)]
    root = make_shards(tmp_path / "ds", splits={"train": records}, records_per_shard=4)
    edit_manifest(root, lambda d: d["pack"].update(splits={"train": {"pack_label": False}}))
    rep = recordkit.verify(root)
    assert (
        len(rep.problems) == 1 and "10000 labels in a single-label split" in rep.problems[0].message
    )
    # whatever the pack parameters say, no record carries more labels than there are classes
    edit_manifest(root, lambda d: d.update(pack={}))
    rep = recordkit.verify(root)
    assert len(rep.problems) == 1 and "more than the 3 classes" in rep.problems[0].message


def test_verify_decode_finds_images_that_do_not_decode(tmp_path, make_shards):
    def png(colour: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (20, 10), (colour, 0, 0)).save(buf, "PNG")
        return buf.getvalue()

    good = png(9)
    broken = bytearray(png(200))
    broken[-20] ^= 0xFF  # inside IDAT / IEND: CRC-valid records, but not a decodable image
    records = [
        make_record(0, image=good, format="png", width=20, height=10),
        make_record(1, image=bytes(broken), format="png", width=20, height=10),
        make_record(2, image=b"not an image at all", format="jpeg"),
        make_record(3, image=good, format="jpeg", width=20, height=10),
        make_record(4, image=good, format="png", width=21, height=10),
    ]
    root = make_shards(tmp_path / "ds", splits={"train": records}, records_per_shard=5)
    assert recordkit.verify(root).ok  # framing, CRCs, Examples: all fine
    rep = recordkit.verify(root, images=True)
    messages = [p.message for p in rep.problems]
    assert len(messages) == 4, messages
    assert "does not decode" in messages[0] and "does not decode" in messages[1]
    assert "image/format says 'jpeg'" in messages[2]
    assert "21x10" in messages[3]
    result = cli("verify", "-q", "--decode", root)
    assert result.exit_code == 1 and result.output.count("does not decode") == 2
    assert cli("verify", "--decode", "--no-decode", root).exit_code == 2


# --------------------------------------------------------------------------------------------
# recordkit.open: manifest counts are checked against each shard's index


def test_open_does_not_trust_a_manifest_count_that_is_too_low(ds):
    edit_manifest(
        ds,
        lambda d: (
            d["splits"]["train"].update(records=N - 1)
            or d["splits"]["train"]["shards"][0].update(records=3)
        ),
    )
    split = recordkit.open(ds)["train"]
    with pytest.raises(CorruptRecordError, match="manifest says 3 records, index has 4") as ei:
        list(split)
    assert ei.value.path == str(ds / SHARD0)
    with pytest.raises(CorruptRecordError):
        split[0]
    assert not recordkit.verify(ds).ok


# --------------------------------------------------------------------------------------------
# .lst files: pack


@pytest.fixture
def images(tmp_path) -> Path:
    """``img/c0/img_00000.jpg``, ``img/c0/img_00001.jpg``, ``img/c1/img_00002.jpg``, …"""
    import imagegen

    root = tmp_path / "img"
    imagegen.make_tree(root, classes=2, per_class=2)
    return root


def write_lst(tmp_path: Path, *lines: bytes) -> Path:
    lst = tmp_path / "data.lst"
    lst.write_bytes(b"".join(line + b"\n" for line in lines))
    return lst


def pack_cli(lst: Path, root: Path, out: Path, *extra: str):
    return cli(
        "pack", "--threads", "1", "--shard-size", "10", *extra, "--list", lst, root, "--out", out
    )


GOOD = b"0\t0.000000\tc0/img_00000.jpg"


def test_lst_path_that_is_not_utf8_packs_with_its_bytes(tmp_path, images):
    name = os.fsencode(images / "c1") + b"/caf\xe9.jpg"
    os.rename(images / "c1" / "img_00002.jpg", name)
    lst = write_lst(tmp_path, GOOD, b"1\t1.000000\tc1/caf\xe9.jpg", b"2\t1.000000\tc1/gone\xff.jpg")
    out = tmp_path / "out"
    result = pack_cli(lst, images, out)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    ds = recordkit.open(out)
    assert [r.filename for r in ds["train"]] == ["c0/img_00000.jpg", "c1/caf\ufffd.jpg"]
    raw = recordkit.ShardReader(out / "train-00000-of-00001.tfrecord").read_bytes(1)
    assert b"c1/caf\xe9.jpg" in raw  # image/filename keeps the file name's bytes
    assert ds.manifest.skipped[0]["path"] == "c1/gone\\xff.jpg"
    assert recordkit.verify(out).ok


def test_lst_path_with_a_nul_byte(tmp_path, images):
    lst = write_lst(tmp_path, GOOD, b"1\t0.000000\tc0/a\x00b.jpg")
    assert_one_line_error(pack_cli(lst, images, tmp_path / "out"), "line 2", "NUL")


@pytest.mark.parametrize("index", [b"1" + b"0" * 30, b"-1180591620717411303424"])
def test_lst_index_that_does_not_fit_int64(tmp_path, images, index):
    lst = write_lst(tmp_path, GOOD, index + b"\t0.000000\tc0/img_00001.jpg")
    assert_one_line_error(pack_cli(lst, images, tmp_path / "out"), "line 2", "64 bits")
    assert not (tmp_path / "out" / "recordkit.json").exists()


@pytest.mark.parametrize("label", [b"1000000000.000000", b"1e30"])
def test_lst_label_that_would_make_a_billion_classes(tmp_path, images, label):
    lst = write_lst(tmp_path, GOOD, b"1\t" + label + b"\tc1/img_00002.jpg")
    run = run_guarded(
        ["recordkit", "pack", "-q", "--list", str(lst), str(images), "--out", str(tmp_path / "out")]
    )
    assert not (run.hung or run.traceback or run.out_of_memory), run
    assert run.returncode == 1 and run.last_line.startswith("Error: "), run
    assert "c1/img_00002.jpg" in run.last_line and "a damaged label?" in run.last_line


def test_lst_line_naming_dev_zero_or_a_fifo_is_skipped(tmp_path, images):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    lst = write_lst(tmp_path, GOOD, b"1\t0.000000\t/dev/zero", b"2\t0.000000\t" + os.fsencode(fifo))
    out = tmp_path / "out"
    run = run_guarded(["recordkit", "pack", "--list", str(lst), str(images), "--out", str(out)])
    assert not (run.hung or run.traceback or run.out_of_memory), run
    assert run.returncode == 0, run
    skipped = {s["path"]: s["reason"] for s in recordkit.open(out).manifest.skipped}
    assert "character device" in skipped["/dev/zero"] and "FIFO" in skipped[str(fifo)]
    assert "skipped train /dev/zero: is a character device" in run.stderr


def test_lst_entries_outside_root_are_packed_counted_and_named(tmp_path, images):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (images / "c0" / "img_00001.jpg").rename(elsewhere / "a.jpg")
    (images / "c0" / "img_00001.jpg").symlink_to(elsewhere / "a.jpg")
    (images / "linked").symlink_to(elsewhere, target_is_directory=True)
    lst = write_lst(
        tmp_path,
        GOOD,
        b"1\t0.000000\t../elsewhere/a.jpg",
        b"2\t0.000000\t" + os.fsencode(elsewhere / "a.jpg"),
        b"3\t0.000000\tc0/img_00001.jpg",
        b"4\t0.000000\tlinked/a.jpg",
        b"5\t0.000000\tc0/../c1/img_00002.jpg",  # '..' that stays inside
    )
    out = tmp_path / "out"
    result = pack_cli(lst, images, out)
    assert result.exit_code == 0, result.output
    assert "(4 from outside ROOT)" in result.output.splitlines()[-1]
    outside = recordkit.open(out).manifest.outside_root
    assert [(o["path"], o["reason"]) for o in outside] == [
        ("../elsewhere/a.jpg", "outside ROOT: '..' leads out of ROOT"),
        (str(elsewhere / "a.jpg"), "outside ROOT: an absolute path"),
        ("c0/img_00001.jpg", "outside ROOT: a symlink leads out of ROOT"),
        ("linked/a.jpg", "outside ROOT: a symlinked directory leads out of ROOT"),
    ]
    assert len(recordkit.open(out)["train"]) == 6  # packed, as im2rec packs them
    result = pack_cli(lst, images, tmp_path / "strict", "--strict")
    assert_one_line_error(result, "'../elsewhere/a.jpg' is outside ROOT", "--strict")
    assert not (tmp_path / "strict" / "recordkit.json").exists()


def test_png_just_under_pillows_bomb_limit_is_refused_in_one_line(tmp_path, images):
    import imagegen

    imagegen.make_bomb_png(images / "c0" / "big.png", side=13_000)  # 169 Mpx, under 178.9 Mpx
    lst = write_lst(tmp_path, GOOD, b"1\t0.000000\tc0/big.png")
    out = tmp_path / "out"
    args = [
        "recordkit",
        "pack",
        "--threads",
        "2",
        "--list",
        str(lst),
        str(images),
        "--out",
        str(out),
    ]
    run = run_guarded(args, memory_mib=1024, timeout=120)
    assert not (run.hung or run.traceback or run.out_of_memory), run
    assert run.returncode == 0, run
    (skip,) = recordkit.open(out).manifest.skipped
    assert skip["path"] == "c0/big.png"
    assert "a 13000x13000 image needs about 4.1 GB of memory to decode" in skip["reason"]
    assert "address-space limit" in skip["reason"]
    # --memory sets the budget, whatever the machine
    result = pack_cli(lst, images, tmp_path / "o2", "--memory", "100MB")
    assert result.exit_code == 0, result.output
    (skip,) = recordkit.open(tmp_path / "o2").manifest.skipped
    assert skip["reason"].endswith("more than the 100.0 MB this process may use (--memory)")


def test_convert_rec_label_that_would_make_33_million_classes(tmp_path):
    from test_convert_rec import FIX, ir, write_rec

    jpg = (FIX / "imgs" / "cat" / "cat0.jpg").read_bytes()
    rec = tmp_path / "flip.rec"
    offsets = write_rec(rec, [ir(0, 1.0, jpg), ir(1, float(2**25), jpg)])
    out = tmp_path / "out"
    run = run_guarded(["recordkit", "convert-rec", str(rec), "--out", str(out)])
    assert not (run.hung or run.traceback or run.out_of_memory), run
    assert run.returncode == 1 and run.last_line.startswith("Error: "), run
    assert f"offset {offsets[1]}: record id 1: label 33554432" in run.last_line
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# Checkpoints


def test_predict_on_a_checkpoint_whose_config_is_a_string(tmp_path, images):
    import torch

    from recordkit_train.checkpoint import save_checkpoint
    from recordkit_train.cli import main as train_main

    ckpt = tmp_path / "odd.pt"
    save_checkpoint(ckpt, {"model": {"fc.weight": torch.zeros(3, 8)}, "config": "resnet18"})
    result = CliRunner().invoke(
        train_main, ["predict", "--checkpoint", str(ckpt), str(images), "--device", "cpu"]
    )
    assert_one_line_error(result, "odd.pt", "config is a str")


# --------------------------------------------------------------------------------------------
# Found by the fuzzer (tests/fuzzing.py)


def test_a_missing_shard_is_a_recordkit_error_for_open(ds):
    (ds / SHARD0).unlink()
    with pytest.raises(recordkit.InputFileError, match="No such file"):
        list(recordkit.open(ds)["train"])
    assert_one_line_error(cli("inspect", "-q", ds), SHARD0, "No such file")


def test_a_file_name_longer_than_name_max(ds):
    edit_manifest(ds, lambda d: d["splits"]["train"]["shards"][0].update(index="x" * 300))
    assert_refused_everywhere(ds, "not a plain file name")


def test_an_image_too_tall_for_jpeg_is_skipped_not_a_traceback(tmp_path):
    import numpy as np

    from recordkit.imaging import ImageError, ImageOptions, process_image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((70_000, 1), np.uint8)).save(buf, "PNG")
    with pytest.raises(ImageError, match="at most 65535 a side"):
        process_image(buf.getvalue(), ImageOptions())
    assert process_image(buf.getvalue(), ImageOptions(encoding=".png")).height == 70_000
