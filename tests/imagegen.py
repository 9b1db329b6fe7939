"""Generators of small test images whose pixels say what they are.

Import it from a test module in ``tests/`` as ``import imagegen`` (pytest's default
``prepend`` import mode puts ``tests/`` on ``sys.path`` because the folder has no
``__init__.py``).

Index-encoded images (ffcv's trick): :func:`index_pixels` paints image ``i`` in one colour
built from the base-7 digits of ``i`` in steps of 40 per channel,

    ``(R, G, B) = (40 * (i // 49), 40 * (i // 7 % 7), 40 * (i % 7))``,   ``0 <= i <= 342``,

and marks the top-left corner block (``h // 4`` x ``w // 4`` pixels, at least one) with the
colour ``(c + 128) % 256`` per channel, so a flipped or rotated image is detectable.
:func:`decode_index` reads the centre pixel ``array[h // 2, w // 2]`` back: each channel is
rounded to the nearest multiple of 40, so JPEG noise up to +-19 per channel is tolerated (at
any quality >= 50 on these flat images) and PNG is exact. Resizing and centre-cropping keep the
centre pixel's colour.

Special inputs: each ``make_*`` writes one file and returns its path. Their docstrings say
what the upright, 8-bit RGB decoding looks like so tests can check pixel colours.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "MAX_INDEX",
    "STEP",
    "decode_index",
    "index_colour",
    "index_pixels",
    "make_big_jpeg",
    "make_bomb_png",
    "make_cmyk_jpeg",
    "make_exif_rotated_jpeg",
    "make_grayscale_jpeg",
    "make_palette_png",
    "make_png16",
    "make_png16_rgb",
    "make_png_rgba",
    "make_text_as_jpg",
    "make_tree",
    "make_truncated_jpeg",
    "make_zero_byte",
    "psnr",
    "upright_pattern",
    "write_image",
]

STEP = 40
"""Colour step between index digits."""
MAX_INDEX = 7**3 - 1
"""Largest index :func:`index_pixels` can encode (342)."""

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)

_EXT = {"JPEG": ".jpg", "PNG": ".png"}


# --------------------------------------------------------------------------------------------
# Index-encoded pixels
# --------------------------------------------------------------------------------------------


def index_colour(i: int) -> tuple[int, int, int]:
    """The flat RGB colour of image ``i`` (see the module docstring)."""
    if not 0 <= i <= MAX_INDEX:
        raise ValueError(f"index {i} outside 0..{MAX_INDEX}")
    return (STEP * (i // 49), STEP * (i // 7 % 7), STEP * (i % 7))


def index_pixels(i: int, h: int, w: int) -> np.ndarray:
    """An ``h`` x ``w`` RGB uint8 image encoding ``i``.

    The whole image is :func:`index_colour` ``(i)`` except the top-left block of
    ``max(1, h // 4)`` x ``max(1, w // 4)`` pixels, which is ``(c + 128) % 256`` per channel.

    Args:
        i: Index, ``0 <= i <= MAX_INDEX``.
        h: Height in pixels (>= 2 so the centre pixel is not in the marker block).
        w: Width in pixels (>= 2).

    Returns:
        Array of shape ``(h, w, 3)``, dtype uint8.
    """
    if h < 2 or w < 2:
        raise ValueError("index images need h >= 2 and w >= 2")
    colour = np.array(index_colour(i), dtype=np.uint8)
    arr = np.empty((h, w, 3), dtype=np.uint8)
    arr[...] = colour
    arr[: max(1, h // 4), : max(1, w // 4)] = (colour.astype(np.int32) + 128) % 256
    return arr


def decode_index(rgb: Any) -> int:
    """Recover ``i`` from an image made by :func:`index_pixels` (possibly JPEG'd or resized).

    Args:
        rgb: An ``(h, w, 3)`` array or anything ``np.asarray`` turns into one (a PIL RGB image).

    Returns:
        The index, from the centre pixel rounded to multiples of :data:`STEP`.
    """
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise ValueError(f"expected an (h, w, 3) RGB array, got shape {arr.shape}")
    h, w = arr.shape[:2]
    r, g, b = (int(v) for v in arr[h // 2, w // 2, :3])
    digits = [min(6, max(0, (v + STEP // 2) // STEP)) for v in (r, g, b)]
    return digits[0] * 49 + digits[1] * 7 + digits[2]


def psnr(a: Any, b: Any) -> float:
    """Peak signal-to-noise ratio in dB between two uint8 arrays of equal shape (inf if equal)."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch {x.shape} vs {y.shape}")
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_image(
    path: str | Path,
    array: np.ndarray | Image.Image,
    fmt: str = "JPEG",
    quality: int = 95,
    **pil_kwargs: Any,
) -> Path:
    """Write an array (``(h, w)``, ``(h, w, 3)`` or ``(h, w, 4)`` uint8) or PIL image.

    Args:
        path: Destination; parent folders are created.
        array: Pixels.
        fmt: ``"JPEG"`` or ``"PNG"`` (any Pillow format name works).
        quality: JPEG quality; ignored for other formats.
        **pil_kwargs: Passed to ``Image.save`` (``subsampling=``, ``exif=``, ``compress_level=``).

    Returns:
        ``Path(path)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = array if isinstance(array, Image.Image) else Image.fromarray(np.asarray(array))
    fmt = fmt.upper()
    if fmt == "JPEG":
        pil_kwargs.setdefault("quality", quality)
    img.save(path, fmt, **pil_kwargs)
    return path


def photo_array(
    h: int, w: int, seed: int, *, checker: tuple[int, int] = (37, 31), noise: float = 6.0
) -> np.ndarray:
    """A photo-like ``(h, w, 3)`` uint8 RGB picture: smooth waves, a diagonal gradient, a
    darkened checkerboard of ``checker`` (x, y) cells for edges, and Gaussian noise.

    Used where a crop/resize must be compared on something with real texture (flat colours
    hide filter differences). Deterministic in ``seed``.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    arr = np.stack(
        [
            128 + 100 * np.sin(x / (w / 7.0)) * np.cos(y / (h / 5.0)),
            128 + 100 * np.sin((x + y) / (w / 11.0)),
            255.0 * (x / max(1, w - 1)) * (y / max(1, h - 1)),
        ],
        axis=-1,
    )
    arr[(x // checker[0] + y // checker[1]) % 2 == 0] *= 0.6
    arr += rng.normal(0, noise, size=arr.shape).astype(np.float32)
    return np.clip(arr, 0, 255).astype(np.uint8)


def upright_pattern(h: int = 48, w: int = 64) -> np.ndarray:
    """The reference upright picture used by the orientation makers.

    Left half red; right half green on top, blue at the bottom. Every one of the eight EXIF
    orientations maps it to a distinguishable picture.

    Returns:
        ``(h, w, 3)`` uint8 RGB array.
    """
    arr = np.empty((h, w, 3), dtype=np.uint8)
    arr[:, : w // 2] = RED
    arr[: h // 2, w // 2 :] = GREEN
    arr[h // 2 :, w // 2 :] = BLUE
    return arr


# --------------------------------------------------------------------------------------------
# Special inputs
# --------------------------------------------------------------------------------------------


def make_grayscale_jpeg(path: str | Path, h: int = 48, w: int = 64) -> Path:
    """Mode ``L`` JPEG: left half 50, right half 200 (grey levels), quality 95."""
    arr = np.empty((h, w), dtype=np.uint8)
    arr[:, : w // 2] = 50
    arr[:, w // 2 :] = 200
    return write_image(path, arr, "JPEG", 95)


def make_png_rgba(path: str | Path, h: int = 48, w: int = 64) -> Path:
    """RGBA PNG: left half opaque red; right half fully transparent *blue*.

    Composited on white it reads left red, right white (dropping alpha would show blue).
    """
    arr = np.zeros((h, w, 4), dtype=np.uint8)
    arr[:, : w // 2] = (255, 0, 0, 255)
    arr[:, w // 2 :] = (0, 0, 255, 0)
    return write_image(path, arr, "PNG")


def make_cmyk_jpeg(path: str | Path, h: int = 48, w: int = 64) -> Path:
    """CMYK JPEG of :func:`upright_pattern` (Pillow's RGB->CMYK, quality 95).

    Converted back to RGB it reads left red, right green top / blue bottom.
    """
    img = Image.fromarray(upright_pattern(h, w)).convert("CMYK")
    return write_image(path, img, "JPEG", 95)


# The transpose that, applied to the upright picture, gives the stored one: the inverse of
# what ImageOps.exif_transpose applies for each orientation.
_STORE_OP = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def make_exif_rotated_jpeg(
    path: str | Path, orientation: int = 6, h: int = 48, w: int = 64, quality: int = 95
) -> Path:
    """JPEG stored sideways/flipped with an EXIF Orientation tag.

    After ``ImageOps.exif_transpose`` it is upright: the wide ``w`` x ``h`` (64 x 48)
    :func:`upright_pattern` -- left half red, right half green on top and blue at the bottom.
    For orientations 5..8 the stored pixel grid is ``h`` wide and ``w`` tall.

    Args:
        path: Destination.
        orientation: EXIF orientation 1..8.
        h: Upright height.
        w: Upright width.
        quality: JPEG quality.
    """
    if not 1 <= orientation <= 8:
        raise ValueError(f"orientation must be 1..8, got {orientation}")
    img = Image.fromarray(upright_pattern(h, w))
    if orientation != 1:
        img = img.transpose(_STORE_OP[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    return write_image(path, img, "JPEG", quality, exif=exif.tobytes())


def make_palette_png(path: str | Path, h: int = 48, w: int = 64, transparent: bool = False) -> Path:
    """Palette (``P``) PNG: left half red (index 0), right half blue (index 1).

    With ``transparent=True`` palette index 1 is transparent (``tRNS``), so the right half
    composites to white.
    """
    img = Image.new("P", (w, h), 0)
    img.paste(1, (w // 2, 0, w, h))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    kwargs: dict[str, Any] = {"transparency": 1} if transparent else {}
    return write_image(path, img, "PNG", **kwargs)


def make_png16(path: str | Path, h: int = 48, w: int = 64) -> Path:
    """16-bit grayscale PNG (Pillow mode ``I;16``): left half 16448, right half 49344.

    Properly scaled to 8 bit (``v / 257``) that is 64 and 192; clipping would give 255 twice.
    """
    arr = np.empty((h, w), dtype=np.uint16)
    arr[:, : w // 2] = 64 * 257
    arr[:, w // 2 :] = 192 * 257
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, "PNG")  # uint16 -> mode I;16
    return path


def make_png16_rgb(path: str | Path, h: int = 48, w: int = 64) -> Path:
    """16-bit-per-channel RGB PNG written by OpenCV (``cv2.imwrite`` of a uint16 array).

    Left half (64, 128, 192) * 257, right half (192, 64, 128) * 257: scaled to 8 bit that is
    (64, 128, 192) and (192, 64, 128).
    """
    import cv2

    arr = np.empty((h, w, 3), dtype=np.uint16)
    arr[:, : w // 2] = np.array([64, 128, 192], dtype=np.uint16) * 257
    arr[:, w // 2 :] = np.array([192, 64, 128], dtype=np.uint16) * 257
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr[:, :, ::-1]))  # RGB -> BGR
    if not ok:
        raise RuntimeError("cv2.imencode failed for a 16-bit PNG")
    path.write_bytes(buf.tobytes())
    return path


def make_zero_byte(path: str | Path) -> Path:
    """An empty file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def make_truncated_jpeg(path: str | Path, h: int = 96, w: int = 128) -> Path:
    """A noisy JPEG cut to half its length (header intact, scan data missing)."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


def make_text_as_jpg(path: str | Path) -> Path:
    """The bytes ``b"hello"`` in a file (name it ``*.jpg``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"hello")
    return path


def make_big_jpeg(path: str | Path, w: int = 1600, h: int = 1200, quality: int = 90) -> Path:
    """A photo-like ``w`` x ``h`` RGB JPEG (smooth gradients, edges and mild noise; seed 0)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 128 + 100 * np.sin(x / (w / 7.0)) * np.cos(y / (h / 5.0))
    g = 128 + 100 * np.sin((x + y) / (w / 11.0))
    b = 255.0 * (x / max(1, w - 1)) * (y / max(1, h - 1))
    arr = np.stack([r, g, b], axis=-1)
    arr[(x // 97 + y // 89) % 2 == 0] *= 0.6  # hard edges
    arr += rng.normal(0, 6, size=arr.shape).astype(np.float32)
    return write_image(path, np.clip(arr, 0, 255).astype(np.uint8), "JPEG", quality)


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


@functools.lru_cache(maxsize=4)
def _bomb_png_bytes(side: int) -> bytes:
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + 1-bit pixels
    comp = zlib.compressobj(9)
    parts = [comp.compress(row * 1000) for _ in range(side // 1000)]
    parts.append(comp.compress(row * (side % 1000)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def make_bomb_png(path: str | Path, side: int = 30000) -> Path:
    """A valid, all-black 1-bit PNG of ``side`` x ``side`` pixels (default 900 Mpx, ~110 KB).

    900 000 000 pixels exceed both Pillow's error threshold and recordkit's default limit
    (178 956 970); decoding it would take ~900 MB.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_bomb_png_bytes(side))
    return path


# --------------------------------------------------------------------------------------------
# Trees
# --------------------------------------------------------------------------------------------


def make_tree(
    root: str | Path,
    classes: int = 3,
    per_class: int = 5,
    size: Sequence[int] = (48, 64),
    fmt: str = "JPEG",
) -> list[Path]:
    """An image folder ``root/c0 .. root/c{classes-1}``, ``per_class`` images each.

    Files are ``c{k}/img_{i:05d}.jpg`` (or ``.png``) where ``i`` is a global running index
    (class-major: ``c0`` holds 0..per_class-1) that the pixels encode (:func:`index_pixels`).

    Args:
        root: Folder to fill (created).
        classes: Number of class folders.
        per_class: Images per class.
        size: ``(h, w)`` of every image.
        fmt: ``"JPEG"`` (quality 95) or ``"PNG"``.

    Returns:
        The paths, in index order (``paths[i]`` encodes ``i``).
    """
    fmt = fmt.upper()
    if classes * per_class - 1 > MAX_INDEX:
        raise ValueError(f"at most {MAX_INDEX + 1} index-encoded images per tree")
    h, w = size
    root = Path(root)
    paths = []
    for k in range(classes):
        for j in range(per_class):
            i = k * per_class + j
            p = root / f"c{k}" / f"img_{i:05d}{_EXT.get(fmt, '.' + fmt.lower())}"
            paths.append(write_image(p, index_pixels(i, h, w), fmt, 95))
    return paths
