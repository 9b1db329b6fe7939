"""Decode, orient, convert, crop, resize and encode one image: pure functions.

:func:`process_image` turns the bytes of one image file into the bytes to store in a record,
following MXNet ``im2rec.py`` semantics for ``--resize`` / ``--center-crop`` / ``--quality`` /
``--encoding`` / ``--color``, with three deliberate differences: EXIF orientation is applied,
every mode (CMYK, palette, alpha, 16-bit, 1-bit, YCbCr, ...) becomes clean 8-bit RGB or L,
and images are not enlarged unless :attr:`ImageOptions.upscale` is set.

Pipeline (all steps release the GIL in C, so a thread pool scales with cores):

1. ``PIL.Image.open`` reads the header only. Empty, unidentifiable and oversized inputs are
   refused here; a decompression bomb (``width * height > max_pixels``) is refused *before*
   any pixel is decoded. Pillow's global ``MAX_IMAGE_PIXELS`` is never changed (Pillow's own
   hard limit, ``2 * Image.MAX_IMAGE_PIXELS``, applies as well and reads the same).
2. For JPEG, when the result is at least 2x smaller than the source, ``Image.draft`` makes
   libjpeg decode straight to 1/2, 1/4 or 1/8 scale in the DCT domain, choosing the largest
   reduction whose output is still >= the final size (in stored coordinates, so EXIF-rotated
   images are handled). ``Image.load()`` then decodes fully; truncated or corrupt data raises.
3. EXIF orientation is applied with ``Image.transpose`` (same table as
   ``ImageOps.exif_transpose``), then the mode is converted (see :func:`_to_8bit`).
4. im2rec's centre crop and shorter-edge resize (integer division for the longer edge) run on
   a numpy view with OpenCV (see :attr:`ImageOptions.resample`): by default a Gaussian
   prefilter (``sigma = 0.4 * sqrt(f**2 - 1)`` per axis) then bilinear sampling — antialiased
   at a quarter of ``INTER_AREA``'s cost at non-integer factors; ``resample="area"`` uses
   ``INTER_AREA``; enlarging is ``INTER_CUBIC``.
5. Pillow encodes: JPEG with ``quality``, 4:2:0 chroma subsampling at every quality (what
   libjpeg, OpenCV and so im2rec use by default), baseline, ``optimize=False``; PNG with
   ``compress_level = min(quality, 9)`` (OpenCV, hence im2rec, clamps the same way).
   The same bytes and options always give the same output bytes, in any thread.

Fast path. A plain JPEG (RGB or L, EXIF orientation 1, ending with its EOI marker) that is to be
stored as JPEG skips Pillow's decoder: ``cv2.imdecode`` (with ``IMREAD_REDUCED_*`` under the same
1/2, 1/4, 1/8 rule as ``draft``), the same resize, and ``cv2.imencode`` with the same JPEG
settings. OpenCV releases the GIL in all three calls, BGR in and BGR out needs no channel swap,
while Pillow's JPEG encoder holds the GIL (1.0x from 1 to 2 threads against 1.7x for
``cv2.imencode``, ``tools/bench_pack.py``). This is the path of nearly every ImageNet image.

A plain PNG stored as JPEG takes OpenCV too (:func:`_fast_png`): 8-bit gray or RGB, every chunk
CRC intact, and only chunks that change neither Pillow's pixels nor its orientation (no
``tRNS``, palette, ``eXIf``, EXIF/XMP text, compressed text or ICC profile, APNG). libpng and
Pillow decode such a file to the same samples and both libjpeg-turbo encoders give files that
decode to the same pixels (``tests/test_imaging_fast.py``); Pillow's PNG path cost ~220 us of
GIL-held Python per 28x28 thumbnail against ~50 us for OpenCV's decode and encode.

Measured choice (1 core of the dev machine, opencv-python 5.0, Pillow 13.0, photo-like JPEG
from ``tests/imagegen.make_big_jpeg``, q90; milliseconds per image, best of 3, output JPEG
q95; PSNR against a full Pillow decode + LANCZOS resize to the same size)::

    A: Pillow draft + Pillow BICUBIC + Pillow encode
    B: Pillow full decode + Pillow BICUBIC + Pillow encode
    C: Pillow draft + cv2.resize INTER_AREA + cv2.imencode
    D: cv2.imdecode IMREAD_REDUCED_COLOR_2/4/8 + INTER_AREA + cv2.imencode
    E: cv2.imdecode full + INTER_AREA + cv2.imencode

    ms (PSNR dB)        A             B             C             D             E
    1600x1200 -> 480    10.5 (44.7)   19.3 (51.6)    9.0 (43.2)    7.7 (43.2)   11.5 (46.1)
    1600x1200 -> 256     6.3 (43.1)   17.1 (51.8)    5.7 (40.9)    5.2 (40.9)   11.4 (46.2)
    500x375   -> 256     2.4 (50.7)    2.5 (50.7)    2.0 (46.2)    1.6 (46.2)    1.6 (46.2)

    components, 1600x1200 source:  decode 1/4 draft: Pillow 4.59 / cv2 REDUCED_4 4.60;
    full decode: Pillow 5.95 / cv2 6.24; resize 400x300 -> 341x256: Pillow BICUBIC 1.16 /
    cv2 INTER_AREA 0.94; 800x600 -> 640x480: Pillow BICUBIC 4.28 / cv2 INTER_AREA 1.85;
    JPEG encode 341x256: Pillow 0.26 / cv2 0.23 (+ RGB->BGR); np.asarray / fromarray 0.05.

Decoding costs the same in both libraries and dominates; DCT-domain reduction cuts the cost
of a large source 2-3x; ``cv2.resize(INTER_AREA)`` is 1.2-2.3x faster than Pillow's BICUBIC at
a PSNR 1.5-2 dB lower (still > 40 dB); the encoders are the same libjpeg-turbo. So the
pipeline is Pillow decode (+ draft), which also gives uniform handling of EXIF, modes and every
file format, then OpenCV resize, then Pillow encode (no RGB->BGR copy). The cv2-only pipeline
is ~10% faster still but would need a second decoder for the non-JPEG and odd-mode cases.
The table was made with this snippet (``cv2.setNumThreads(1)``, ``tgt`` = im2rec's size formula)::

    im = Image.open(io.BytesIO(data)); W, H = im.size; tw, th = tgt(W, H, r)
    _, box = im.draft("RGB", (tw, th)); im.load()                    # DCT-domain 1/k
    a = cv2.resize(np.asarray(im), (tw, th), interpolation=cv2.INTER_AREA)
    buf = io.BytesIO(); Image.fromarray(a).save(buf, "JPEG", quality=95, subsampling=2)

End to end, :func:`process_image` (pipeline C with Pillow encoding) takes 7.9 ms for
1600x1200 -> 480, 6.1 ms for 1600x1200 -> 256 and 1.95 ms for 500x375 -> 256, and validating a
kept 1600x1200 JPEG takes 4.3 ms; two threads on two cores give 336 img/s against 162 img/s for
one (1600x1200 -> 256), so the GIL is not a bottleneck. Drafting to >= 2x the final size
(``thumbnail``'s ``reducing_gap=2``) gained only 0.4-0.8 dB PSNR for 20-45% more time, so the
draft targets >= 1x. PNG encoding (341x256) costs 6.6 / 42 / 55 ms at levels 1 / 6 / 9 with
Pillow against 4.9 / 30 / 54 ms with OpenCV, but Pillow's files are 8% smaller at level 6.

Keeping the source JPEG (no re-encode). The input bytes are stored untouched when
``pass_through`` is set (JPEG and PNG only; other formats are re-encoded), or when *all* of:
the file is a baseline/progressive JPEG (not MPO), ``encoding == ".jpg"``, no centre crop, no
resize is needed (``resize == 0``, the shorter edge already equals it, or it is smaller and
``upscale`` is off), the colour mode already matches ``color`` (RGB for 1, L for 0, either for
-1; never CMYK), the EXIF orientation is 1 or absent, and the source's estimated quality is
<= the requested ``quality``. The estimate is the IJG quality 1..100 whose standard luminance
table is nearest (sum of absolute differences, ties to the higher quality) to the file's first
quantization table; it is exact for libjpeg/Pillow/OpenCV files. Kept bytes are still decoded
fully (at 1/8 scale for JPEG, which still reads every entropy-coded byte) so truncated and
corrupt files are refused; PNG chunk CRCs (IDAT included, which Pillow's ``load`` does not
check) are verified for every PNG input.
"""

from __future__ import annotations

import io
import logging
import math
import struct
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from recordkit.errors import RecordkitError
from recordkit.imageinfo import NotAnImage, image_info

__all__ = [
    "EncodedImage",
    "ImageError",
    "ImageOptions",
    "probe",
    "process_image",
    "validate_image",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 178_956_970
"""Pillow's decompression-bomb error threshold (``2 * Image.MAX_IMAGE_PIXELS``)."""

_ENCODINGS = {".jpg": ".jpg", ".jpeg": ".jpg", ".png": ".png"}

# Decoded JPEGs are at least _DRAFT_GAP times the final size before the area resize.
_DRAFT_GAP = 1.0

_ORIENTATION_TAG = 0x0112
# What ImageOps.exif_transpose applies for each EXIF orientation value.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"})
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"LA", "La", "RGBA", "RGBa", "PA"})
_TO_RGB_MODES = frozenset({"CMYK", "YCbCr", "LAB", "HSV", "RGBX"})
_STORED_CHANNELS = {"1": 1, "L": 1, "I": 1, "I;16": 1, "I;16B": 1, "I;16L": 1, "LA": 2}

# IJG (libjpeg) standard luminance quantization table, natural order (ITU T.81 Annex K).
_IJG_LUMA = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
     14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
     18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
    dtype=np.int64,
)  # fmt: skip


def _ijg_tables() -> np.ndarray:
    """Luminance tables libjpeg writes for quality 1..100 (``jpeg_set_quality``, baseline)."""
    qs = np.arange(1, 101, dtype=np.int64)
    scale = np.where(qs < 50, 5000 // qs, 200 - 2 * qs)
    return np.clip((_IJG_LUMA[None, :] * scale[:, None] + 50) // 100, 1, 255)


_IJG_TABLES = _ijg_tables()


class ImageError(RecordkitError):
    """An input that cannot be turned into a stored image; the message is a one-line reason.

    Attributes:
        reason: The same one-line reason (``"empty file"``, ``"truncated or corrupt image
            data: ..."``, ``"decompression bomb: 30000x30000 pixels exceeds the limit of
            178956970"``, ...).
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class ImageOptions:
    """How :func:`process_image` transforms an image (im2rec's options plus a few).

    Attributes:
        resize: Resize the shorter edge to this many pixels (the longer edge by im2rec's
            integer formula); 0 keeps the size.
        center_crop: Crop the centre square before resizing (im2rec ``--center-crop``).
        quality: JPEG quality 1..100; for ``.png`` the zlib compression level, where values
            above 9 mean 9 (as in im2rec, whose ``--quality`` reaches OpenCV's PNG encoder).
        encoding: ``".jpg"`` or ``".png"`` (``".jpeg"`` is accepted and stored as ``".jpg"``).
        color: 1: 8-bit RGB; 0: 8-bit grayscale; -1: grayscale sources stay grayscale and
            everything else becomes RGB. Alpha is composited on white in every mode.
        upscale: Enlarge images whose shorter edge is below ``resize`` (im2rec always does).
        pass_through: Store the original JPEG/PNG bytes untouched (still fully validated).
        max_pixels: Refuse images with more than this many pixels, from the header, before
            decoding (decompression-bomb guard). Pillow's own limit applies too.
        resample: How to shrink. ``"fast"`` (default): a Gaussian prefilter with
            ``sigma = 0.4 * sqrt(f**2 - 1)`` for a shrink factor ``f`` per axis, then bilinear
            sampling — antialiased, 43.9-44.7 dB PSNR against Pillow's LANCZOS at factors
            1.1-3, about a quarter of the cost of ``"area"`` (``cv2.INTER_AREA``, 44.5-46.3 dB)
            at non-integer factors. Enlarging (``upscale``) is bicubic either way.
    """

    resize: int = 0
    center_crop: bool = False
    quality: int = 95
    encoding: str = ".jpg"
    color: int = 1
    upscale: bool = False
    pass_through: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    resample: str = "fast"

    def __post_init__(self) -> None:
        if self.resample not in ("fast", "area"):
            raise ValueError(f"resample must be 'fast' or 'area', got {self.resample!r}")
        if self.resize < 0:
            raise ValueError(f"resize must be >= 0 (0 keeps the size), got {self.resize}")
        encoding = _ENCODINGS.get(str(self.encoding).lower())
        if encoding is None:
            raise ValueError(f"encoding must be '.jpg' or '.png', got {self.encoding!r}")
        object.__setattr__(self, "encoding", encoding)
        if encoding == ".jpg" and not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {self.quality}")
        if encoding == ".png" and not 0 <= self.quality <= 100:
            raise ValueError(f"PNG compression (quality) must be in 0..9, got {self.quality}")
        if self.color not in (-1, 0, 1):
            raise ValueError(f"color must be 1 (RGB), 0 (grayscale) or -1, got {self.color}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")


@dataclass(frozen=True)
class EncodedImage:
    """The bytes to store for one image and what they decode to.

    Attributes:
        data: Encoded image file bytes.
        format: ``"jpeg"`` or ``"png"``.
        height: Height of the stored pixel grid (kept files: as stored, before any EXIF
            orientation a decoder might apply).
        width: Width of the stored pixel grid.
        channels: 1 (grayscale) or 3 (RGB) for re-encoded images; for kept files the channels
            a decoder returns unchanged (e.g. 4 for a kept RGBA PNG).
        reencoded: False when ``data`` is the input bytes.
    """

    data: bytes
    format: str
    height: int
    width: int
    channels: int
    reencoded: bool


# --------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------


def probe(data: bytes) -> tuple[str, int, int]:
    """Format and stored size from the header, without decoding pixels.

    Args:
        data: Image file bytes.

    Returns:
        ``(format, width, height)``, format lower-case as Pillow names it (``"jpeg"``,
        ``"png"``, ``"gif"``, ...). The size ignores EXIF orientation.

    Raises:
        ImageError: Empty or unidentifiable data. PNG and JPEG sizes are read by recordkit
            and never refused; other formats past Pillow's own hard limit raise the
            decompression-bomb reason.
    """
    size = _header_size(data)
    if size is not None:
        return size
    img = _open(data, max_pixels=None)
    with img:
        return (img.format or "unknown").lower(), img.size[0], img.size[1]


def validate_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, int, int]:
    """Decode an image fully to prove it intact, as :func:`process_image` checks kept bytes.

    JPEGs are decoded at 1/8 scale (every entropy-coded byte is still read); PNG chunk CRCs
    are checked, IDAT's included.

    Args:
        data: Image file bytes.
        max_pixels: Refuse images with more pixels than this, from the header.

    Returns:
        ``(format, width, height)``: format lower-case as Pillow names it, the stored size.

    Raises:
        ImageError: Empty, not an image, truncated or corrupt, or too many pixels.
    """
    img = _open(data, max_pixels)
    with img:
        fmt = (img.format or "unknown").lower()
        size = img.size
        if fmt == "png":
            _check_png_chunks(data)
        _validate(img)
    return fmt, size[0], size[1]


def process_image(data: bytes, opts: ImageOptions) -> EncodedImage:
    """Turn one image file's bytes into the bytes to store.

    Args:
        data: The image file bytes (any format Pillow reads).
        opts: What to do (see :class:`ImageOptions`).

    Returns:
        The stored image: upright, 8-bit, RGB or grayscale, resized/cropped as asked; or the
        input bytes when they may be kept (see the module docstring).

    Raises:
        ImageError: Empty, not an image, truncated/corrupt, too many pixels, or a mode that
            cannot be converted to 8 bit.
    """
    if not opts.pass_through and data.startswith(_PNG_SIGNATURE):
        fast = _fast_png(data, opts)
        if fast is not None:
            return fast
    img = _open(data, opts.max_pixels)
    with img:
        orientation = _orientation(img)
        fmt = img.format
        if fmt == "PNG":
            _check_png_chunks(data)
        if (opts.pass_through and fmt in ("JPEG", "PNG")) or _keep_jpeg(img, opts, orientation):
            (width, height), channels = img.size, _stored_channels(img)
            _validate(img)
            return EncodedImage(
                data=bytes(data),
                format=fmt.lower(),
                height=height,
                width=width,
                channels=channels,
                reencoded=False,
            )
        if opts.pass_through:
            logger.debug("pass_through: %s is re-encoded (only JPEG/PNG are kept)", fmt)
        fast = _fast_jpeg(data, img, opts, orientation)
        if fast is not None:
            return fast
        arr = _decode(img, opts, orientation)
    out = _encode(arr, opts)
    return EncodedImage(
        data=out,
        format="jpeg" if opts.encoding == ".jpg" else "png",
        height=arr.shape[0],
        width=arr.shape[1],
        channels=1 if arr.ndim == 2 else arr.shape[2],
        reencoded=True,
    )


# --------------------------------------------------------------------------------------------
# Opening and validating
# --------------------------------------------------------------------------------------------


def _pillow_limit() -> int | None:
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * int(limit)


def _bomb(size: tuple[int, int] | None, pixels: int | None, limit: int) -> ImageError:
    if size is not None:
        what = f"{size[0]}x{size[1]} pixels"
    elif pixels is not None:
        what = f"{pixels} pixels"
    else:
        what = "image size"
    return ImageError(f"decompression bomb: {what} exceeds the limit of {limit}")


def _open(data: bytes, max_pixels: int | None) -> Image.Image:
    """``Image.open`` on bytes with recordkit's error reasons and the size check."""
    if not data:
        raise ImageError("empty file")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not an image (cannot identify format)") from None
    except Image.DecompressionBombError:
        header = _header_size(data)
        limit = _pillow_limit() or 0
        if max_pixels is not None:
            limit = min(limit, max_pixels) if limit else max_pixels
        raise _bomb(header[1:] if header else None, None, limit) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"truncated or corrupt image data: {_one_line(e)}") from None
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        img.close()
        raise _bomb((w, h), None, max_pixels)
    return img


def _load(img: Image.Image) -> None:
    try:
        img.load()
    except Image.DecompressionBombError as e:
        raise ImageError(f"decompression bomb: {_one_line(e)}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"truncated or corrupt image data: {_one_line(e)}") from None


def _validate(img: Image.Image) -> None:
    """Decode fully to catch truncation; JPEGs at 1/8 scale (every byte is still read)."""
    if img.format == "JPEG":
        w, h = img.size
        img.draft(None, (max(1, w // 8), max(1, h // 8)))
    _load(img)


def _check_png_chunks(data: bytes) -> None:
    """Verify every PNG chunk's CRC up to ``IEND`` (Pillow's ``load`` skips IDAT's CRCs)."""
    pos, n = 8, len(data)
    while pos + 12 <= n:
        length = int.from_bytes(data[pos : pos + 4], "big")
        end = pos + 8 + length
        if end + 4 > n:
            break
        tag = data[pos + 4 : pos + 8]
        if zlib.crc32(data[pos + 4 : end]) != int.from_bytes(data[end : end + 4], "big"):
            name = tag.decode("latin-1")
            raise ImageError(f"truncated or corrupt image data: CRC mismatch in PNG chunk {name}")
        if tag == b"IEND":
            return
        pos = end + 4
    raise ImageError("truncated or corrupt image data: PNG ends before its IEND chunk")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _header_size(data: bytes) -> tuple[str, int, int] | None:
    """``(format, width, height)`` of a PNG or JPEG from its header, else None."""
    try:
        info = image_info(data)
    except NotAnImage:
        return None
    return info.format, info.width, info.height


def _orientation(img: Image.Image) -> int:
    """EXIF orientation 1..8; 1 when absent or unreadable (a broken EXIF block is ignored)."""
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError):
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _stored_channels(img: Image.Image) -> int:
    if img.mode == "P":
        return 4 if "transparency" in img.info else 3
    return _STORED_CHANNELS.get(img.mode, len(img.getbands()))


# --------------------------------------------------------------------------------------------
# Keep rule
# --------------------------------------------------------------------------------------------


def _estimate_jpeg_quality(img: Image.Image) -> int | None:
    """IJG quality (1..100) whose luminance table is nearest to the file's, or None."""
    tables = getattr(img, "quantization", None)
    if not tables:
        return None
    first = tables.get(0, next(iter(tables.values())))
    table = np.asarray(first, dtype=np.int64)
    if table.size != 64:
        return None
    dist = np.abs(_IJG_TABLES - table[None, :]).sum(axis=1)
    # Ties go to the higher quality: argmin over reversed rows.
    return int(100 - np.argmin(dist[::-1]))


def _output_mode(mode: str, color: int) -> str:
    if color == 0 or (color == -1 and mode in _GRAY_MODES):
        return "L"
    return "RGB"


def _keep_jpeg(img: Image.Image, opts: ImageOptions, orientation: int) -> bool:
    if img.format != "JPEG" or opts.encoding != ".jpg" or opts.center_crop or orientation != 1:
        return False
    if img.mode not in ("RGB", "L") or _output_mode(img.mode, opts.color) != img.mode:
        return False
    w, h = img.size
    if _final_size(w, h, opts) != (w, h):
        return False
    quality = _estimate_jpeg_quality(img)
    return quality is not None and quality <= opts.quality


# --------------------------------------------------------------------------------------------
# Decoding, converting, resizing
# --------------------------------------------------------------------------------------------


def _crop_box(w: int, h: int, opts: ImageOptions) -> tuple[int, int, int, int]:
    """im2rec's centre square ``(x0, y0, cw, ch)``, or the whole image."""
    if not opts.center_crop:
        return 0, 0, w, h
    if h > w:
        return 0, (h - w) // 2, w, w
    return (w - h) // 2, 0, h, h


def _final_size(cw: int, ch: int, opts: ImageOptions) -> tuple[int, int]:
    """im2rec's resize of a ``cw`` x ``ch`` image: ``(width, height)``."""
    r = opts.resize
    short = min(cw, ch)
    if not r or short == r or (short < r and not opts.upscale):
        return cw, ch
    if ch > cw:
        return r, ch * r // cw
    return cw * r // ch, r


def _decode(img: Image.Image, opts: ImageOptions, orientation: int) -> np.ndarray:
    """Decode, orient, convert, crop and resize: ``(h, w)`` uint8 or ``(h, w, 3)`` uint8."""
    sw, sh = img.size
    swapped = orientation >= 5
    w, h = (sh, sw) if swapped else (sw, sh)
    x0, y0, cw, ch = _crop_box(w, h, opts)
    fw, fh = _final_size(cw, ch, opts)
    want = _output_mode(img.mode, opts.color)

    scale = 1.0
    if img.format in ("JPEG", "MPO") and fw * 2 <= cw and fh * 2 <= ch:
        # Smallest decode that still covers the final size, in stored coordinates.
        need_w = math.ceil(w * fw * _DRAFT_GAP / cw)
        need_h = math.ceil(h * fh * _DRAFT_GAP / ch)
        if swapped:
            need_w, need_h = need_h, need_w
        mode = "L" if want == "L" and img.mode == "RGB" else None
        drafted = img.draft(mode, (need_w, need_h))
        if drafted is not None:
            scale = sw / drafted[1][2]
    _load(img)
    if orientation in _TRANSPOSE:
        img = img.transpose(_TRANSPOSE[orientation])
    img = _to_8bit(img, want)
    arr = np.asarray(img)

    if scale != 1.0:  # crop box in decoded coordinates, rounded half up
        dh, dw = arr.shape[:2]
        x0, cw = _scaled(x0, cw, scale, dw)
        y0, ch = _scaled(y0, ch, scale, dh)
    if (x0, y0, cw, ch) != (0, 0, arr.shape[1], arr.shape[0]):
        arr = arr[y0 : y0 + ch, x0 : x0 + cw]
    if (fw, fh) != (cw, ch):
        try:
            arr = _resize(arr, fw, fh, opts.resample)
        except cv2.error as e:
            raise ImageError(f"cannot resize image: {_one_line(e)}") from None
    return np.ascontiguousarray(arr)


def _resize(arr: np.ndarray, fw: int, fh: int, resample: str) -> np.ndarray:
    """Antialiased resize to ``fw`` x ``fh`` (see :attr:`ImageOptions.resample`)."""
    h, w = arr.shape[:2]
    if fw > w or fh > h:
        return cv2.resize(arr, (fw, fh), interpolation=cv2.INTER_CUBIC)
    if resample == "area":
        return cv2.resize(arr, (fw, fh), interpolation=cv2.INTER_AREA)
    # Gaussian prefilter with sigma = 0.4 * sqrt(f^2 - 1) per axis, then bilinear sampling.
    sx = 0.4 * math.sqrt(max((w / fw) ** 2 - 1.0, 0.0))
    sy = 0.4 * math.sqrt(max((h / fh) ** 2 - 1.0, 0.0))
    if sx > 0.25 or sy > 0.25:
        arr = cv2.GaussianBlur(arr, (0, 0), sigmaX=max(sx, 0.01), sigmaY=max(sy, 0.01))
    return cv2.resize(arr, (fw, fh), interpolation=cv2.INTER_LINEAR)


def _scaled(start: int, length: int, scale: float, limit: int) -> tuple[int, int]:
    s = int(math.floor(start / scale + 0.5))
    n = max(1, int(math.floor(length / scale + 0.5)))
    s = min(s, max(0, limit - n))
    return s, min(n, limit - s)


def _to_8bit(img: Image.Image, want: str) -> Image.Image:
    """Convert any Pillow mode to 8-bit ``want`` (``"RGB"`` or ``"L"``).

    16-bit grayscale (``I;16*``) is scaled with rounding, ``v * 255 / 65535``; 32-bit ``I`` is
    clipped to 0..65535 first. 16-bit RGB(A) PNGs arrive from Pillow as the high byte of each
    sample (``v // 256``), a proper scaling too (never more than 1 off ``v / 257``). Alpha
    (``LA``, ``RGBA``, ``PA`` and palettes with ``tRNS``) is composited on white; ``1`` becomes
    0/255; CMYK, YCbCr, LAB and HSV use Pillow's conversions. ``F`` (float) is refused.
    """
    mode = img.mode
    try:
        if mode in _SIXTEEN_BIT_MODES:
            a = np.clip(np.asarray(img), 0, 65535).astype(np.uint32)
            img = Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8))
        elif mode == "1":
            img = img.convert("L")
        elif mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif mode in _TO_RGB_MODES:
            img = img.convert("RGB")
        if img.mode in _ALPHA_MODES:
            rgba = img.convert("LA").convert("RGBA") if img.mode == "La" else img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(white, rgba).convert("RGB")
        if img.mode not in ("RGB", "L"):
            raise ValueError(img.mode)
        if img.mode != want:
            img = img.convert(want)
    except ValueError:
        raise ImageError(f"unsupported image mode {mode}") from None
    return img


# --------------------------------------------------------------------------------------------
# The OpenCV fast path: plain JPEG in, JPEG out
# --------------------------------------------------------------------------------------------

_CV2_FLAGS = {  # (colour, grayscale) imdecode flags per libjpeg scale denominator
    1: (cv2.IMREAD_COLOR, cv2.IMREAD_GRAYSCALE),
    2: (cv2.IMREAD_REDUCED_COLOR_2, cv2.IMREAD_REDUCED_GRAYSCALE_2),
    4: (cv2.IMREAD_REDUCED_COLOR_4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
    8: (cv2.IMREAD_REDUCED_COLOR_8, cv2.IMREAD_REDUCED_GRAYSCALE_8),
}


def _fast_jpeg(
    data: bytes, img: Image.Image, opts: ImageOptions, orientation: int
) -> EncodedImage | None:
    """Decode, resize and encode a plain JPEG entirely in OpenCV, or return None.

    Taken for the common case only: a baseline/progressive JPEG in RGB or L, EXIF orientation 1,
    JPEG output, and data that ends with the EOI marker (OpenCV 4.x decodes a truncated JPEG
    with a warning instead of failing; Pillow's path reports it). OpenCV holds no GIL in
    ``imdecode`` / ``resize`` / ``imencode`` — Pillow's JPEG encoder runs under the GIL and
    does not scale with threads (tools/bench_pack.py, ``jpeg_encoder_thread_scaling``) — and
    BGR in, BGR out needs no channel swap. Every other input takes the Pillow path.
    """
    if (
        img.format != "JPEG"
        or img.mode not in ("RGB", "L")
        or orientation != 1
        or opts.encoding != ".jpg"
        or not data.endswith(b"\xff\xd9")
    ):
        return None
    w, h = img.size
    x0, y0, cw, ch = _crop_box(w, h, opts)
    fw, fh = _final_size(cw, ch, opts)
    gray = _output_mode(img.mode, opts.color) == "L"
    k = 1
    if fw * 2 <= cw and fh * 2 <= ch:  # DCT-domain 1/2, 1/4, 1/8: same rule as Pillow's draft
        need_w, need_h = math.ceil(w * fw / cw), math.ceil(h * fh / ch)
        k = next((d for d in (8, 4, 2) if -(-w // d) >= need_w and -(-h // d) >= need_h), 1)
    flag = _CV2_FLAGS[k][gray] | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    except cv2.error:
        arr = None
    if arr is None:
        return None  # let Pillow decode it and name the problem
    if k != 1:
        scale = w / arr.shape[1]
        x0, cw = _scaled(x0, cw, scale, arr.shape[1])
        y0, ch = _scaled(y0, ch, scale, arr.shape[0])
    return _cv2_finish(arr, (x0, y0, cw, ch), (fw, fh), opts)


def _cv2_finish(
    arr: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int], opts: ImageOptions
) -> EncodedImage | None:
    """Crop ``box`` (``x0, y0, cw, ch``), resize to ``size`` and encode as JPEG, in OpenCV.

    ``arr`` is BGR or gray as ``cv2.imdecode`` gives it. None when OpenCV refuses (the caller's
    Pillow path then decodes again and names the problem).
    """
    x0, y0, cw, ch = box
    fw, fh = size
    if (x0, y0, cw, ch) != (0, 0, arr.shape[1], arr.shape[0]):
        arr = arr[y0 : y0 + ch, x0 : x0 + cw]
    try:
        if (fw, fh) != (cw, ch):
            arr = _resize(arr, fw, fh, opts.resample)
        ok, buf = cv2.imencode(".jpg", arr, _jpeg_params(opts.quality))
    except cv2.error:
        return None
    if not ok:  # pragma: no cover - libjpeg does not fail on a valid array
        return None
    return EncodedImage(
        data=buf.tobytes(),
        format="jpeg",
        height=arr.shape[0],
        width=arr.shape[1],
        channels=1 if arr.ndim == 2 else 3,
        reencoded=True,
    )


def _jpeg_params(quality: int) -> list[int]:
    """``cv2.imencode`` settings equal to :func:`_encode`'s Pillow ones (4:2:0, baseline)."""
    return [
        cv2.IMWRITE_JPEG_QUALITY, quality,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
        cv2.IMWRITE_JPEG_OPTIMIZE, 0,
        cv2.IMWRITE_JPEG_PROGRESSIVE, 0,
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# The OpenCV fast path: plain 8-bit PNG in, JPEG out
# --------------------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks that change neither the pixels Pillow decodes nor the orientation it reads. Not here
# (so such files take the Pillow path): tRNS (transparency), PLTE, eXIf (orientation), iCCP /
# zTXt / iTXt (compressed, which Pillow refuses past its size limits), APNG's acTL / fcTL /
# fdAT, and anything unknown.
_PLAIN_PNG_CHUNKS = frozenset(
    {b"IHDR", b"IDAT", b"IEND", b"gAMA", b"cHRM", b"sRGB", b"pHYs", b"sBIT", b"tIME", b"bKGD",
     b"tEXt"}
)  # fmt: skip
_PLAIN_TEXT_BYTES = 1 << 20  # Pillow's MAX_TEXT_CHUNK; more text takes the Pillow path


def _plain_png(data: bytes) -> bool:
    """True when Pillow would read these PNG bytes as plain 8-bit gray or RGB, upright.

    That is: bit depth 8, colour type 0 (gray) or 2 (RGB), standard compression and filter
    method, every chunk's CRC intact up to ``IEND``, only chunks of :data:`_PLAIN_PNG_CHUNKS`,
    and no ``tEXt`` that Pillow's ``getexif`` reads (keywords with "exif" or "xmp", which can
    carry an orientation). Anything else is False and takes the Pillow path, which also names
    what is wrong with a damaged file.
    """
    if len(data) < 45 or data[12:16] != b"IHDR" or data[24:29] not in _PLAIN_IHDR:
        return False
    pos, n, text = 8, len(data), 0
    crc32, chunk = zlib.crc32, _PNG_CHUNK.unpack_from
    view = memoryview(data)
    while pos + 12 <= n:
        length, tag = chunk(data, pos)
        end = pos + 8 + length
        if end + 4 > n or tag not in _PLAIN_PNG_CHUNKS:
            return False
        if crc32(view[pos + 4 : end]) != _U32BE.unpack_from(data, end)[0]:
            return False
        if tag == b"IEND":
            return True
        if tag == b"tEXt":
            text += length
            keyword = data[pos + 8 : min(end, pos + 88)].split(b"\0", 1)[0].lower()
            if text > _PLAIN_TEXT_BYTES or b"exif" in keyword or b"xmp" in keyword:
                return False
        pos = end + 4
    return False


_PNG_CHUNK = struct.Struct(">I4s")
_U32BE = struct.Struct(">I")
# IHDR bytes 24..28: bit depth 8, colour type 0 or 2, compression 0, filter 0, interlace 0/1.
_PLAIN_IHDR = frozenset(bytes((8, t, 0, 0, i)) for t in (0, 2) for i in (0, 1))


def _fast_png(data: bytes, opts: ImageOptions) -> EncodedImage | None:
    """Decode a plain 8-bit gray or RGB PNG with OpenCV, resize and encode as JPEG, or None.

    Same pixels as the Pillow path (``tests/test_imaging_fast.py`` checks it): libpng and
    Pillow decode such a PNG to the same samples, gray to RGB is channel replication in both,
    the resize is the same OpenCV call, and the two libjpeg-turbo encoders, given the same
    pixels and settings, give files that decode to the same pixels. Not taken (None) for PNG
    output, for RGB sources stored as gray (Pillow's and libpng's luma weights differ), above
    the pixel limit, or when :func:`_plain_png` says no. OpenCV releases the GIL while it
    decodes and encodes; Pillow's JPEG encoder holds it.
    """
    if opts.encoding != ".jpg":
        return None
    w = int.from_bytes(data[16:20], "big")
    h = int.from_bytes(data[20:24], "big")
    limit = _pillow_limit()
    if w * h > opts.max_pixels or (limit is not None and w * h > limit) or not w or not h:
        return None
    if not _plain_png(data):
        return None
    rgb_source = data[25] == 2
    gray = _output_mode("RGB" if rgb_source else "L", opts.color) == "L"
    if gray and rgb_source:
        return None
    flag = (cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    except cv2.error:
        arr = None
    if arr is None or arr.shape[:2] != (h, w):
        return None
    box = _crop_box(w, h, opts)
    return _cv2_finish(arr, box, _final_size(box[2], box[3], opts), opts)


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


_JPEG_MAX_SIDE = 65535


def _encode(arr: np.ndarray, opts: ImageOptions) -> bytes:
    h, w = arr.shape[:2]
    if opts.encoding == ".jpg" and max(h, w) > _JPEG_MAX_SIDE:
        raise ImageError(f"cannot encode a {w}x{h} image as JPEG (at most {_JPEG_MAX_SIDE} a side)")
    img = Image.fromarray(arr)
    buf = io.BytesIO()
    try:
        if opts.encoding == ".jpg":
            img.save(
                buf,
                "JPEG",
                quality=opts.quality,
                subsampling=2,  # 4:2:0 (ignored for grayscale)
                optimize=False,
                progressive=False,
            )
        else:
            img.save(buf, "PNG", compress_level=min(opts.quality, 9), optimize=False)
    except (OSError, ValueError) as e:  # Pillow's encoder refusing the image
        raise ImageError(f"cannot encode image: {_one_line(e)}") from None
    return buf.getvalue()
