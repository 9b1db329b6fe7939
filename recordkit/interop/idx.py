"""The MNIST "idx" format (``train-images-idx3-ubyte[.gz]``) → an image folder with ``.lst`` files.

MNIST, Fashion-MNIST, KMNIST and EMNIST ship as idx files (LeCun's format): a big-endian
header ``0x00 0x00 <type> <ndim>`` followed by ``ndim`` uint32 sizes, then the values in C
order. ``type`` 0x08 is unsigned bytes, the only type these datasets use (and the only one
read here). An images file is ``(N, rows, cols)``, a labels file ``(N,)``. Gzipped files
(``.gz``, as distributed) are read directly.

:func:`write_idx_split` writes one split as PNG files under ``ROOT/<class>/<split>_<i>.png``
and the im2rec list ``PREFIX_<split>.lst`` next to them, with the dataset's own labels and
order (not a re-split), so ``recordkit pack PREFIX ROOT`` packs the official train/test
split unchanged. Needs numpy and OpenCV (for the PNG encoder), not torch.

>>> images = read_idx("train-images-idx3-ubyte.gz")          # doctest: +SKIP
>>> labels = read_idx("train-labels-idx1-ubyte.gz")          # doctest: +SKIP
>>> write_idx_split(images, labels, "fmnist/images", "fmnist/fm", "train",
...                 FASHION_MNIST_CLASSES)                     # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recordkit.errors import RecordkitError
from recordkit.listing import ListEntry, write_list

__all__ = [
    "FASHION_MNIST_CLASSES",
    "MNIST_CLASSES",
    "IdxFormatError",
    "class_folder",
    "read_idx",
    "write_idx_split",
]

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Fashion-MNIST's class names in label order (its README)."""

MNIST_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
"""MNIST's class names: the digits."""

_UBYTE = 0x08
_MAX_DIMS = 4


class IdxFormatError(RecordkitError, ValueError):
    """A file that is not an unsigned-byte idx file, or images and labels that do not match."""


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an unsigned-byte idx file (plain or gzipped) into a uint8 array.

    Args:
        path: The file; a name ending in ``.gz`` is decompressed.

    Returns:
        The array, shaped as the header says (``(N, rows, cols)`` or ``(N,)``).

    Raises:
        IdxFormatError: Bad magic, an unsupported value type, or a size that does not match
            the header (truncated or trailing bytes).
        OSError: The file cannot be read.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (gzip.BadGzipFile, EOFError) as exc:
        raise IdxFormatError(f"{path}: not a readable gzip file ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise IdxFormatError(f"{path}: not an idx file (its first two bytes are not zero)")
    kind, ndim = data[2], data[3]
    if kind != _UBYTE:
        raise IdxFormatError(f"{path}: idx value type 0x{kind:02x}; only 0x08 (ubyte) is read")
    if not 1 <= ndim <= _MAX_DIMS:
        raise IdxFormatError(f"{path}: idx header says {ndim} dimensions (expected 1-4)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(f"{path}: truncated idx header ({len(data)} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        raise IdxFormatError(
            f"{path}: {len(data)} bytes, but its header {shape} needs {expected} "
            "(truncated or not an idx file)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def class_folder(label: int, name: str) -> str:
    """A folder name for class ``label`` called ``name``: ``03_Dress``, ``00_T-shirt_top``.

    The label prefix keeps the folders in label order (so ``recordkit list`` on the folder
    assigns the same labels); characters other than letters, digits, ``-`` and ``_`` become
    ``_``.
    """
    return f"{label:02d}_" + re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")


def write_idx_split(
    images: np.ndarray,
    labels: np.ndarray,
    root: str | os.PathLike[str],
    prefix: str | os.PathLike[str],
    split: str,
    classes: Sequence[str],
) -> Path:
    """Write one split as PNGs under ``root/<class folder>/`` and ``<prefix>_<split>.lst``.

    Image ``i`` becomes ``<class folder>/<split>_<i:05d>.png`` (grayscale, lossless) and list
    index ``i`` with its label; the list keeps the idx order. Each PNG is written under a
    temporary name and renamed; the list is written last (atomically), so a list on disk
    names only finished images.

    Args:
        images: ``(N, rows, cols)`` uint8 (from :func:`read_idx`).
        labels: ``(N,)`` uint8 labels in ``0..len(classes)-1``.
        root: The image folder (created).
        prefix: The list prefix (``fmnist`` writes ``fmnist_train.lst``).
        split: ``train``, ``val`` or ``test``.
        classes: Class names in label order (:data:`FASHION_MNIST_CLASSES`).

    Returns:
        The list file written.

    Raises:
        IdxFormatError: Shapes that do not fit together or a label outside ``classes``.
    """
    import cv2

    if images.ndim != 3:
        raise IdxFormatError(f"images must be (N, rows, cols), got shape {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise IdxFormatError(
            f"{len(images)} images but labels of shape {labels.shape}; pass the matching files"
        )
    if len(labels) and int(labels.max()) >= len(classes):
        raise IdxFormatError(f"label {int(labels.max())} but only {len(classes)} class names")
    root = Path(root)
    folders = [class_folder(i, name) for i, name in enumerate(classes)]
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        rel = f"{folders[int(label)]}/{split}_{i:05d}.png"
        ok, png = cv2.imencode(".png", np.ascontiguousarray(image))
        if not ok:  # pragma: no cover - OpenCV encodes any uint8 2-D array
            raise IdxFormatError(f"could not encode image {i} as PNG")
        target = root / rel
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(png.tobytes())
        os.replace(tmp, target)
        entries.append(ListEntry(index=i, labels=(float(label),), path=rel))
    lst = Path(f"{os.fspath(prefix)}_{split}.lst")
    lst.parent.mkdir(parents=True, exist_ok=True)
    write_list(lst, entries)
    return lst
