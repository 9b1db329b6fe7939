"""`recordkit pack`: round trips, determinism, sharding, class maps, bad input, the CLI.

Resume, `--part` / `--merge` and the bounded window are in ``test_pack_resume.py``.
Images come from ``imagegen``: their pixels encode their index, so a record is checked
against what it must hold, not only "something came back".
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import imagegen
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import assert_one_line_error
from PIL import Image

import recordkit
from recordkit.cli import main
from recordkit.format.manifest import MANIFEST_NAME
from recordkit.imaging import ImageOptions
from recordkit.listing import make_lists, read_list
from recordkit.pack import PackError, PackOptions, PackResult, pack
from recordkit.pack.plan import estimate_output_bytes
from recordkit.verify import verify

# --------------------------------------------------------------------------------------------
# helpers


def make_dataset(
    tmp: Path,
    classes: int = 3,
    per_class: int = 5,
    fmt: str = "JPEG",
    size: tuple[int, int] = (48, 64),
    train_ratio: float = 1.0,
    name: str = "data",
) -> tuple[Path, Path]:
    """An index-encoded image tree and its im2rec lists; returns ``(prefix, root)``."""
    root = tmp / f"{name}_img"
    imagegen.make_tree(root, classes=classes, per_class=per_class, size=size, fmt=fmt)
    prefix = tmp / name
    make_lists(prefix, root, recursive=True, train_ratio=train_ratio)
    return prefix, root


def index_of(filename: str) -> int:
    """``c1/img_00007.png`` → 7 (the index the pixels encode)."""
    return int(Path(filename).stem.split("_")[1])


def decode(rec: recordkit.Record) -> np.ndarray:
    with Image.open(io.BytesIO(rec.image)) as im:
        assert im.mode in ("RGB", "L"), im.mode
        return np.asarray(im.convert("RGB"))


def shard_bytes(d: Path) -> dict[str, bytes]:
    """Every file of a shard directory except the manifest (whose time stamp differs)."""
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.name != MANIFEST_NAME}


def manifest_without_time(d: Path) -> dict:
    m = json.loads((d / MANIFEST_NAME).read_text())
    m.pop("created")
    return m


def run_cli(*args: object) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def opts(out: Path, **kw) -> PackOptions:
    image = kw.pop("image", None) or ImageOptions(**kw.pop("img", {}))
    kw.setdefault("fsync", False)
    return PackOptions(out=out, image=image, **kw)


# --------------------------------------------------------------------------------------------
# round trips


def test_png_round_trip_is_pixel_exact(tmp_path):
    prefix, root = make_dataset(tmp_path, fmt="PNG", per_class=6)
    out = tmp_path / "shards"
    res = pack(prefix, root, opts(out, img={"encoding": ".png"}, threads=2, shard_size=4))
    assert isinstance(res, PackResult)
    assert res.manifest == out / MANIFEST_NAME
    assert res.splits["train"].records == 18 and res.splits["train"].shards == 5
    ds = recordkit.open(out)
    assert ds.classes == ["c0", "c1", "c2"]
    lst = read_list(str(prefix) + ".lst")
    split = ds["train"]
    assert len(split) == len(lst) == 18
    for entry, rec in zip(lst, split, strict=True):  # list order is record order
        i = index_of(rec.filename)
        assert rec.filename == entry.path
        assert rec.index == entry.index
        assert rec.labels == (i // 6,)
        assert rec.text == f"c{i // 6}"
        assert rec.format == "png" and (rec.height, rec.width, rec.channels) == (48, 64, 3)
        np.testing.assert_array_equal(decode(rec), imagegen.index_pixels(i, 48, 64))
    assert verify(out).ok


def test_jpeg_round_trip_within_psnr(tmp_path):
    prefix, root = make_dataset(tmp_path, per_class=4)
    out = tmp_path / "shards"
    pack(prefix, root, opts(out, img={"quality": 95}, threads=2))
    for rec in recordkit.open(out)["train"]:
        i = index_of(rec.filename)
        pixels = decode(rec)
        assert rec.format == "jpeg"
        assert imagegen.decode_index(pixels) == i
        assert imagegen.psnr(pixels, imagegen.index_pixels(i, 48, 64)) > 30


def test_resize_shorter_edge_and_no_upscale_by_default(tmp_path):
    prefix, root = make_dataset(tmp_path, classes=1, per_class=3, size=(60, 90))
    small = tmp_path / "small"
    pack(prefix, root, opts(small, img={"resize": 30}))
    for rec in recordkit.open(small)["train"]:
        assert (rec.height, rec.width) == (30, 45)
        assert imagegen.decode_index(decode(rec)) == index_of(rec.filename)
    kept = tmp_path / "kept"
    pack(prefix, root, opts(kept, img={"resize": 120}))
    assert {(r.height, r.width) for r in recordkit.open(kept)["train"]} == {(60, 90)}
    up = tmp_path / "up"
    pack(prefix, root, opts(up, img={"resize": 120, "upscale": True}))
    assert {(r.height, r.width) for r in recordkit.open(up)["train"]} == {(120, 180)}


# --------------------------------------------------------------------------------------------
# determinism and sharding


def test_threads_1_and_4_give_identical_bytes(tmp_path):
    prefix, root = make_dataset(tmp_path, per_class=8, train_ratio=0.75)
    imagegen.make_zero_byte(root / "c1" / "empty.jpg")  # a skip must not shift anything
    make_lists(prefix, root, recursive=True, train_ratio=0.75)
    a, b = tmp_path / "a", tmp_path / "b"
    pack(prefix, root, opts(a, threads=1, shard_size=3, img={"resize": 32}))
    pack(prefix, root, opts(b, threads=4, window=5, shard_size=3, img={"resize": 32}))
    assert shard_bytes(a) == shard_bytes(b)
    ma, mb = manifest_without_time(a), manifest_without_time(b)
    assert ma == mb
    assert set(ma["splits"]) == {"train", "val"}
    for d, m in ((a, ma), (b, mb)):
        for split in m["splits"].values():
            for s in split["shards"]:
                import hashlib

                assert hashlib.sha256((d / s["file"]).read_bytes()).hexdigest() == s["sha256"]


def test_shard_names_counts_and_contiguous_assignment(tmp_path):
    prefix, root = make_dataset(tmp_path, per_class=5)  # 15 images
    out = tmp_path / "shards"
    pack(prefix, root, opts(out, shard_size=4))
    names = sorted(p.name for p in out.glob("*.tfrecord"))
    assert names == [f"train-{i:05d}-of-00004.tfrecord" for i in range(4)]
    assert all((out / n).with_suffix(".idx").exists() for n in names)
    m = recordkit.read_manifest(out)
    # contiguous near-equal: shard i holds entries [N*i//n, N*(i+1)//n)
    assert [s.records for s in m.splits["train"].shards] == [3, 4, 4, 4]
    lst = read_list(str(prefix) + ".lst")
    assert [r.filename for r in recordkit.open(out)["train"]] == [e.path for e in lst]


def test_shard_bytes_estimate_sets_the_count(tmp_path):
    prefix, root = make_dataset(tmp_path, classes=2, per_class=5, size=(80, 120))
    paths = [str(p) for p in sorted(root.rglob("*.jpg"))]
    total = sum(os.path.getsize(p) for p in paths)
    assert estimate_output_bytes(paths, ImageOptions(pass_through=True), 2) == total
    est = estimate_output_bytes(paths, ImageOptions(), 2)
    assert est == total  # no resize: one source byte ~ one output byte
    half = estimate_output_bytes(paths, ImageOptions(resize=40), 2)
    assert abs(half - total / 4) <= total * 0.01  # shorter edge 80 -> 40: a quarter the pixels
    out = tmp_path / "shards"
    pack(prefix, root, opts(out, shard_bytes=total // 3 + 1))
    assert len(recordkit.read_manifest(out).splits["train"].shards) == 3


def test_chunked_lists_are_joined_in_chunk_order(tmp_path):
    root = tmp_path / "img"
    imagegen.make_tree(root, classes=2, per_class=5)
    prefix = tmp_path / "data"
    res = make_lists(prefix, root, recursive=True, chunks=2, train_ratio=0.8)
    assert set(res.files) == {"0_train", "0_val", "1_train", "1_val"}
    out = tmp_path / "shards"
    pack(prefix, root, opts(out))
    ds = recordkit.open(out)
    want = read_list(res.files["0_train"]) + read_list(res.files["1_train"])
    assert [r.filename for r in ds["train"]] == [e.path for e in want]
    assert len(ds["val"]) == res.counts["0_val"] + res.counts["1_val"]


def test_unchunked_and_chunked_list_of_one_split_conflict(tmp_path):
    prefix, root = make_dataset(tmp_path, classes=1, per_class=2)
    (tmp_path / "data_0.lst").write_text((tmp_path / "data.lst").read_text())
    with pytest.raises(PackError, match="--list"):
        pack(prefix, root, opts(tmp_path / "shards"))


# --------------------------------------------------------------------------------------------
# im2rec list format, labels, class maps


def write_im2rec_list(path: Path, rows: list[tuple[int, tuple[float, ...], str]]) -> None:
    with open(path, "w") as f:
        for idx, labels, rel in rows:
            f.write("%d\t" % idx + "".join("%f\t" % x for x in labels) + rel + "\n")  # noqa: UP031


def test_im2rec_multi_label_list_with_and_without_pack_label(tmp_path):
    root = tmp_path / "img"
    paths = imagegen.make_tree(root, classes=3, per_class=2)
    rows = []
    for i, p in enumerate(paths):
        k = i // 2
        rows.append((100 + i, (float(k), float((k + 1) % 3), 2.0), str(p.relative_to(root))))
    lst = tmp_path / "multi_train.lst"
    write_im2rec_list(lst, rows)
    assert "1.000000\t2.000000\t2.000000\t" in lst.read_text()

    first = tmp_path / "first"
    pack(None, root, opts(first, lists=(lst,)))
    recs = list(recordkit.open(first)["train"])
    assert [r.labels for r in recs] == [(i // 2,) for i in range(6)]
    assert [r.index for r in recs] == list(range(100, 106))

    every = tmp_path / "every"
    result = run_cli("pack", "--list", lst, root, "--out", every, "--pack-label", "-q")
    assert result.exit_code == 0, result.output
    ds = recordkit.open(every)
    assert ds.classes == ["c0", "c1", "c2"]
    assert [r.labels for r in ds["train"]] == [(i // 2, (i // 2 + 1) % 3, 2) for i in range(6)]
    assert verify(every).ok


def test_flat_list_falls_back_to_numbered_classes(tmp_path, caplog):
    root = tmp_path / "img"
    for i in range(4):
        imagegen.write_image(root / f"x{i}.jpg", imagegen.index_pixels(i, 16, 16))
    lst = tmp_path / "flat.lst"
    write_im2rec_list(lst, [(i, (float(i % 2),), f"x{i}.jpg") for i in range(4)])
    out = tmp_path / "shards"
    res = pack(None, root, opts(out, lists=(lst,), split="val"))
    assert res.classes == ["0", "1"]
    assert "numbers" in caplog.text
    ds = recordkit.open(out)
    assert list(ds.splits) == ["val"]
    assert [r.text for r in ds["val"]] == ["0", "1", "0", "1"]


def test_non_integer_label_is_an_error(tmp_path):
    root = tmp_path / "img"
    imagegen.write_image(root / "a" / "x.jpg", imagegen.index_pixels(0, 16, 16))
    lst = tmp_path / "l.lst"
    write_im2rec_list(lst, [(0, (0.5,), "a/x.jpg")])
    with pytest.raises(PackError, match="not a non-negative integer"):
        pack(None, root, opts(tmp_path / "s", lists=(lst,)))


def test_second_split_keeps_class_map_and_conflict_errors(tmp_path):
    # ImageNet style: train and val in separate folders with the same class directories.
    train_prefix, train_root = make_dataset(tmp_path, per_class=3, name="train")
    val_prefix, val_root = make_dataset(tmp_path, per_class=2, name="val")
    out = tmp_path / "shards"
    pack(train_prefix, train_root, opts(out))
    res = run_cli("pack", val_prefix, val_root, "--out", out, "--split", "val", "-q")
    assert res.exit_code == 0, res.output
    ds = recordkit.open(out)
    assert ds.classes == ["c0", "c1", "c2"]
    assert (len(ds["train"]), len(ds["val"])) == (9, 6)
    assert verify(out).ok

    # same class count, other names: refused, nothing changes
    bad_root = tmp_path / "bad_img"
    for k, name in enumerate(["c0", "dog", "c2"]):
        imagegen.write_image(bad_root / name / "a.jpg", imagegen.index_pixels(k, 16, 16))
    bad_prefix = tmp_path / "bad"
    make_lists(bad_prefix, bad_root, recursive=True)
    before = (out / MANIFEST_NAME).read_bytes()
    res = run_cli("pack", bad_prefix, bad_root, "--out", out, "--split", "test", "-q")
    assert_one_line_error(res, "class map conflicts", "label 1")
    assert (out / MANIFEST_NAME).read_bytes() == before
    assert not list(out.glob("test-*"))


def test_repacking_a_split_needs_overwrite(tmp_path):
    prefix, root = make_dataset(tmp_path, classes=2, per_class=3)
    out = tmp_path / "shards"
    assert run_cli("pack", prefix, root, "--out", out, "--shard-size", "2", "-q").exit_code == 0
    res = run_cli("pack", prefix, root, "--out", out, "--shard-size", "3", "-q")
    assert_one_line_error(res, "already packed", "--overwrite")
    res = run_cli("pack", prefix, root, "--out", out, "--shard-size", "3", "--overwrite", "-q")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.glob("*.tfrecord")) == [
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
    ]
    assert verify(out).ok
    # --resume of a finished split with the same options does nothing
    res = run_cli("pack", prefix, root, "--out", out, "--shard-size", "3", "--resume")
    assert res.exit_code == 0 and "packed nothing" in res.output


# --------------------------------------------------------------------------------------------
# odd but valid images


def test_special_images_come_out_upright_8bit_rgb(tmp_path):
    root = tmp_path / "img"
    made = {
        "exif6.jpg": imagegen.make_exif_rotated_jpeg(root / "a" / "exif6.jpg", 6),
        "exif3.jpg": imagegen.make_exif_rotated_jpeg(root / "a" / "exif3.jpg", 3),
        "exif8.jpg": imagegen.make_exif_rotated_jpeg(root / "a" / "exif8.jpg", 8),
        "cmyk.jpg": imagegen.make_cmyk_jpeg(root / "a" / "cmyk.jpg"),
        "gray.jpg": imagegen.make_grayscale_jpeg(root / "a" / "gray.jpg"),
        "pal.png": imagegen.make_palette_png(root / "a" / "pal.png"),
        "png16.png": imagegen.make_png16(root / "a" / "png16.png"),
        "rgba.png": imagegen.make_png_rgba(root / "a" / "rgba.png"),
    }
    prefix = tmp_path / "odd"
    make_lists(prefix, root, recursive=True, shuffle=False)
    out = tmp_path / "shards"
    res = pack(prefix, root, opts(out, img={"encoding": ".png"}))
    assert not res.skipped
    recs = {Path(r.filename).name: r for r in recordkit.open(out)["train"]}
    assert set(recs) == set(made)

    def px(name: str, y: int, x: int) -> tuple[int, ...]:
        with Image.open(io.BytesIO(recs[name].image)) as im:
            assert im.mode == "RGB", (name, im.mode)
            assert im.size == (64, 48), (name, im.size)  # upright: 64 wide, 48 tall
            return tuple(int(v) for v in np.asarray(im)[y, x])

    def near(a, b, tol=40):
        return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))

    for name in ("exif6.jpg", "exif3.jpg", "exif8.jpg", "cmyk.jpg"):
        assert near(px(name, 24, 8), (255, 0, 0)), name  # left: red
        assert near(px(name, 6, 56), (0, 255, 0)), name  # right top: green
        assert near(px(name, 42, 56), (0, 0, 255)), name  # right bottom: blue
    assert near(px("gray.jpg", 24, 8), (50, 50, 50), 6)
    assert near(px("gray.jpg", 24, 56), (200, 200, 200), 6)
    assert px("pal.png", 24, 8) == (255, 0, 0) and px("pal.png", 24, 56) == (0, 0, 255)
    assert near(px("png16.png", 24, 8), (64, 64, 64), 1)
    assert near(px("png16.png", 24, 56), (192, 192, 192), 1)
    assert px("rgba.png", 24, 8) == (255, 0, 0)
    assert recs["rgba.png"].channels == 3


# --------------------------------------------------------------------------------------------
# bad input


def bad_dataset(tmp_path: Path, unreadable: bool) -> tuple[Path, Path, dict[str, str]]:
    prefix, root = make_dataset(tmp_path, classes=2, per_class=4)
    bad = {
        "c0/zero.jpg": imagegen.make_zero_byte(root / "c0" / "zero.jpg"),
        "c0/trunc.jpg": imagegen.make_truncated_jpeg(root / "c0" / "trunc.jpg"),
        "c1/text.jpg": imagegen.make_text_as_jpg(root / "c1" / "text.jpg"),
        "c1/bomb.png": imagegen.make_bomb_png(root / "c1" / "bomb.png"),
        "c1/gone.jpg": imagegen.make_zero_byte(root / "c1" / "gone.jpg"),
    }
    if unreadable:
        bad["c0/secret.jpg"] = imagegen.write_image(
            root / "c0" / "secret.jpg", imagegen.index_pixels(1, 16, 16)
        )
    make_lists(prefix, root, recursive=True)
    bad["c1/gone.jpg"].unlink()  # listed, then deleted
    if unreadable:
        os.chmod(bad["c0/secret.jpg"], 0)
    return prefix, root, {k: str(v) for k, v in bad.items()}


def test_bad_inputs_are_skipped_and_recorded(tmp_path):
    unreadable = os.geteuid() != 0  # root reads mode-000 files, so that case needs non-root
    prefix, root, bad = bad_dataset(tmp_path, unreadable)
    out = tmp_path / "shards"
    res = run_cli("pack", prefix, root, "--out", out, "--shard-size", "3")
    assert res.exit_code == 0, res.output
    m = recordkit.read_manifest(out)
    skipped = {s["path"]: s["reason"] for s in m.skipped}
    assert set(skipped) == set(bad)
    assert all(s["split"] == "train" for s in m.skipped)
    assert skipped["c0/zero.jpg"] == "empty file (0 bytes)"
    assert skipped["c1/gone.jpg"] == "file not found"
    if unreadable:
        assert "Permission denied" in skipped["c0/secret.jpg"]
    lines = res.output.strip().splitlines()
    assert f"skipped {len(bad)} input(s)" in lines[-1]
    for path in bad:
        assert any(path in line for line in lines[:-1]), path
    ds = recordkit.open(out)
    assert len(ds["train"]) == 8
    # Some shards are empty (all their inputs were bad); index access skips them.
    assert 0 in [s.records for s in m.splits["train"].shards]
    recs = [ds["train"][i] for i in range(8)]
    assert all(imagegen.decode_index(decode(r)) == index_of(r.filename) for r in recs)
    assert verify(out).ok
    # the same skips on another run, with other threads: same bytes
    again = tmp_path / "again"
    pack(prefix, root, opts(again, threads=1, shard_size=3))
    assert shard_bytes(again) == shard_bytes(out)


def test_unreadable_file_is_skipped_when_not_root(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: root can read a mode-000 file, nothing to test")
    prefix, root, _ = bad_dataset(tmp_path, unreadable=True)
    res = pack(prefix, root, opts(tmp_path / "s"))
    assert any(s["path"] == "c0/secret.jpg" for s in res.skipped)


def test_strict_fails_with_one_line_and_leaves_nothing_finished(tmp_path):
    prefix, root, _ = bad_dataset(tmp_path, unreadable=False)
    out = tmp_path / "shards"
    res = CliRunner().invoke(
        main, ["pack", str(prefix), str(root), "--out", str(out), "--strict", "--shard-size", "2"]
    )
    assert_one_line_error(res, "(--strict)")
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert not (out / MANIFEST_NAME).exists()
    assert not list(out.glob("*.tmp"))
    for f in out.glob("*.tfrecord"):  # shards finished before the bad input are complete
        assert verify(f).ok, f


# --------------------------------------------------------------------------------------------
# CLI surface


def test_cli_pack_then_verify_and_summary(tmp_path):
    prefix, root = make_dataset(tmp_path, per_class=4, train_ratio=0.75)
    out = tmp_path / "shards"
    res = run_cli(
        "pack",
        prefix,
        root,
        "--out",
        out,
        "--resize",
        "32",
        "--quality",
        "90",
        "--num-thread",
        "2",
        "--shard-size",
        "4",
    )
    assert res.exit_code == 0, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("packed train 9 records in 3 shard(s); val 3 records in 1 shard(s)")
    assert "MB in ->" in last and "images/s" in last
    m = recordkit.read_manifest(out)
    assert m.pack["resize"] == 32 and m.pack["quality"] == 90
    assert m.pack["splits"]["train"]["lists"] == ["data_train.lst"]
    res = run_cli("verify", out, "-q")
    assert res.exit_code == 0, res.output
    assert res.output.strip().endswith("OK")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["nolists"], "no list files"),
        (["data", "missing_root"], "ROOT is not a directory"),
    ],
)
def test_cli_user_errors(tmp_path, args, needle):
    make_dataset(tmp_path, classes=1, per_class=2)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        if args == ["nolists"]:
            args = ["nolists", "data_img"]
        res = run_cli("pack", *args, "--out", "shards", "-q")
    finally:
        os.chdir(cwd)
    assert_one_line_error(res, needle)


def test_cli_usage_errors(tmp_path):
    res = CliRunner().invoke(main, ["pack", "onlyone"])
    assert res.exit_code == 2
    res = CliRunner().invoke(main, ["pack", "a", "b", "--part", "3/2"])
    assert res.exit_code == 2 and "0 <= K < N" in res.output
    res = CliRunner().invoke(main, ["pack", "a", "b", "--shard-bytes", "lots"])
    assert res.exit_code == 2 and "not a size" in res.output
    res = run_cli("pack", tmp_path, tmp_path, "--split", "my split")
    assert_one_line_error(res, "invalid split name")


def test_overwrite_of_the_only_split_may_change_the_class_map(tmp_path):
    prefix, root = make_dataset(tmp_path, classes=2, per_class=2)
    out = tmp_path / "shards"
    pack(prefix, root, opts(out))
    other = tmp_path / "other_img"
    for k, name in enumerate(["x", "y"]):
        imagegen.write_image(other / name / "a.jpg", imagegen.index_pixels(k, 16, 16))
    make_lists(tmp_path / "other", other, recursive=True)
    with pytest.raises(PackError, match="class map conflicts"):
        pack(tmp_path / "other", other, opts(out, split="val"))
    pack(tmp_path / "other", other, opts(out, overwrite=True))
    ds = recordkit.open(out)
    assert ds.classes == ["x", "y"] and len(ds["train"]) == 2
    assert verify(out).ok


def test_resample_flag_reaches_the_manifest_and_opencv_threads_are_restored(tmp_path):
    import cv2

    prefix, root = make_dataset(tmp_path, size=(96, 128))
    before = cv2.getNumThreads()
    result = run_cli("pack", prefix, root, "--out", tmp_path / "s", "--resize", "40",
                     "--resample", "area")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert cv2.getNumThreads() == before
    manifest = json.loads((tmp_path / "s" / MANIFEST_NAME).read_text())
    assert manifest["pack"]["resample"] == "area"
    rec = recordkit.open(tmp_path / "s")["train"][0]
    assert min(rec.width, rec.height) == 40
    assert decode(rec).shape[:2] == (rec.height, rec.width)
