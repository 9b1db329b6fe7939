"""The idx (MNIST format) reader and folder writer, and the pack of what it writes."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import recordkit
from recordkit.interop.idx import (
    FASHION_MNIST_CLASSES,
    IdxFormatError,
    class_folder,
    read_idx,
    write_idx_split,
)
from recordkit.listing import read_list

ROOT = Path(__file__).resolve().parent.parent


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _images(n: int, rows: int = 5, cols: int = 4) -> np.ndarray:
    """Image ``i`` holds ``(i * 7 + r * cols + c) % 256``: every pixel names its image."""
    r = np.arange(rows * cols).reshape(rows, cols)
    return np.stack([(i * 7 + r) % 256 for i in range(n)]).astype(np.uint8)


def _write(path: Path, array: np.ndarray) -> Path:
    data = _idx_bytes(array)
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_read_idx_round_trip(tmp_path: Path, name: str) -> None:
    images = _images(6)
    got = read_idx(_write(tmp_path / name, images))
    assert got.dtype == np.uint8 and got.shape == (6, 5, 4)
    np.testing.assert_array_equal(got, images)
    labels = read_idx(_write(tmp_path / "labels", np.array([3, 1, 0], np.uint8)))
    assert labels.tolist() == [3, 1, 0]


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    good = _idx_bytes(_images(3))
    cases = {
        "magic": b"\x01" + good[1:],
        "type": good[:2] + b"\x0d" + good[3:],
        "truncated": good[:-1],
        "trailing": good + b"\x00",
        "short": b"\x00\x00",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(IdxFormatError, match=name if name != "magic" else "not an idx"):
            read_idx(tmp_path / name)
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(IdxFormatError, match="gzip"):
        read_idx(tmp_path / "bad.gz")


def test_class_folder_names() -> None:
    assert class_folder(0, "T-shirt/top") == "00_T-shirt_top"
    assert class_folder(9, "Ankle boot") == "09_Ankle_boot"
    folders = [class_folder(i, n) for i, n in enumerate(FASHION_MNIST_CLASSES)]
    assert folders == sorted(folders)  # folder order is label order


def test_write_split_pixels_and_list(tmp_path: Path) -> None:
    images, labels = _images(7), np.array([2, 0, 1, 2, 0, 1, 1], np.uint8)
    lst = write_idx_split(images, labels, tmp_path / "img", tmp_path / "ds", "val", "abc")
    assert lst == tmp_path / "ds_val.lst"
    entries = read_list(lst)
    assert [e.index for e in entries] == list(range(7))
    assert [int(e.label) for e in entries] == labels.tolist()
    for e in entries:
        assert e.path == f"{class_folder(int(e.label), 'abc'[int(e.label)])}/val_{e.index:05d}.png"
        png = cv2.imread(str(tmp_path / "img" / e.path), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(png, images[e.index])
    assert not list((tmp_path / "img").rglob("*.tmp"))


def test_write_split_rejects_mismatch(tmp_path: Path) -> None:
    with pytest.raises(IdxFormatError, match="3 images"):
        write_idx_split(_images(3), np.zeros(2, np.uint8), tmp_path, tmp_path / "p", "train", "ab")
    with pytest.raises(IdxFormatError, match="label 5"):
        write_idx_split(
            _images(1), np.array([5], np.uint8), tmp_path, tmp_path / "p", "train", "ab"
        )


def test_make_fashion_mnist_tool_packs_both_splits(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    train, val = _images(12, 6, 6), _images(5, 6, 6)[::-1]
    train_labels = np.arange(12, dtype=np.uint8) % 10
    val_labels = np.array([9, 8, 0, 1, 2], np.uint8)
    _write(src / "train-images-idx3-ubyte.gz", train)
    _write(src / "train-labels-idx1-ubyte.gz", train_labels)
    _write(src / "t10k-images-idx3-ubyte", val)  # plain files are found too
    _write(src / "t10k-labels-idx1-ubyte", val_labels)
    work = tmp_path / "work"
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "make_fashion_mnist.py"), "--src", str(src),
         "--work", str(work)],
        capture_output=True, text=True, cwd=ROOT, check=False,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    ds = recordkit.open(work / "shards")
    assert ds.classes == [class_folder(i, n) for i, n in enumerate(FASHION_MNIST_CLASSES)]
    for split, images, labels in (("train", train, train_labels), ("val", val, val_labels)):
        assert len(ds[split]) == len(images)
        for i in range(len(images)):
            rec = ds[split][i]
            assert rec.labels[0] == labels[rec.index]
            pixels = cv2.imdecode(np.frombuffer(rec.image, np.uint8), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(pixels, images[rec.index])


def test_missing_source_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "make_fashion_mnist.py"), "--src", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, check=False,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().startswith("Error: ") and "dataset-fashion-mnist" in done.stderr
    assert "Traceback" not in done.stderr
