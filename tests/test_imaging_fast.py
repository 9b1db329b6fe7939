"""The OpenCV fast path for plain JPEGs and the resample filters, against the Pillow path."""

from __future__ import annotations

import io

import cv2
import imagegen
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from recordkit import imaging
from recordkit.imaging import ImageError, ImageOptions, process_image


@pytest.fixture
def big_jpeg(tmp_path) -> bytes:
    return imagegen.make_big_jpeg(tmp_path / "big.jpg", w=900, h=600, quality=90).read_bytes()


def _rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _pillow_path(data: bytes, opts: ImageOptions, monkeypatch) -> bytes:
    with monkeypatch.context() as m:
        m.setattr(imaging, "_fast_jpeg", lambda *a: None)
        return process_image(data, opts).data


@pytest.mark.parametrize("resize", [0, 480, 256, 100])  # no resize, < 2x, 2-4x (draft), > 4x
@pytest.mark.parametrize("resample", ["fast", "area"])
def test_fast_path_matches_pillow_path(big_jpeg, monkeypatch, resize, resample):
    # quality 85 < the source's 90, so even resize=0 re-encodes (no keep rule)
    opts = ImageOptions(resize=resize, quality=85, resample=resample)
    calls = []
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda *a: calls.append(a[1]) or real(*a))
    fast = process_image(big_jpeg, opts)
    assert calls, "a plain JPEG must take the OpenCV path"
    assert fast.reencoded and fast.format == "jpeg" and fast.channels == 3
    slow = _pillow_path(big_jpeg, opts, monkeypatch)
    a, b = _rgb(fast.data), _rgb(slow)
    assert a.shape == b.shape == (fast.height, fast.width, 3)
    expect_short = resize or 600
    assert min(a.shape[:2]) == expect_short
    assert imagegen.psnr(a, b) > 38


def test_fast_path_grayscale_output(big_jpeg):
    out = process_image(big_jpeg, ImageOptions(resize=256, color=0))
    with Image.open(io.BytesIO(out.data)) as im:
        assert im.mode == "L" and out.channels == 1 and min(im.size) == 256


def test_fast_path_is_deterministic(big_jpeg):
    opts = ImageOptions(resize=300)
    assert process_image(big_jpeg, opts).data == process_image(big_jpeg, opts).data


def test_truncated_jpeg_is_refused_not_decoded_by_opencv(tmp_path):
    data = imagegen.make_truncated_jpeg(tmp_path / "t.jpg").read_bytes()
    with pytest.raises(ImageError, match="truncated or corrupt"):
        process_image(data, ImageOptions(resize=32))


def test_jpeg_with_trailing_bytes_still_packs(big_jpeg):
    out = process_image(big_jpeg + b"trailing junk", ImageOptions(resize=200))
    assert min(_rgb(out.data).shape[:2]) == 200


@pytest.mark.parametrize("factor", [1.9, 3.0])
def test_fast_resample_is_antialiased(factor):
    """A pixel checkerboard shrunk by f must average to grey, not alias into a pattern.

    (Near f = 1 the prefilter is deliberately weak: there the filter barely differs from
    bilinear, and bilinear samples every source pixel anyway.)
    """
    tile = np.indices((300, 300)).sum(axis=0) % 2 * 255
    arr = np.repeat(tile[..., None], 3, axis=2).astype(np.uint8)
    size = int(300 / factor)
    fast = imaging._resize(arr, size, size, "fast").astype(float)
    plain = cv2.resize(arr, (size, size), interpolation=cv2.INTER_LINEAR).astype(float)
    assert abs(fast.mean() - 127.5) < 3
    assert plain.std() > 40  # bilinear alone aliases the pattern into stripes
    assert fast.std() < 5


def test_resample_option_is_validated():
    with pytest.raises(ValueError, match="resample"):
        ImageOptions(resample="lanczos")


# --------------------------------------------------------------------------------------------
# The OpenCV path for plain 8-bit PNGs: same pixels as the Pillow path


def _png(arr: np.ndarray, pnginfo=None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", pnginfo=pnginfo)
    return buf.getvalue()


def _chunk(tag: bytes, body: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def _with_chunk(png: bytes, tag: bytes, body: bytes) -> bytes:
    """``png`` with one more chunk right after IHDR (CRC correct)."""
    return png[:33] + _chunk(tag, body) + png[33:]


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def _pillow_only(data: bytes, opts: ImageOptions, monkeypatch) -> imaging.EncodedImage:
    with monkeypatch.context() as m:
        m.setattr(imaging, "_fast_png", lambda *a: None)
        return process_image(data, opts)


PNG_OPTIONS = [
    ImageOptions(),
    ImageOptions(quality=80, color=-1),
    ImageOptions(color=0),
    ImageOptions(resize=40),
    ImageOptions(resize=40, resample="area", center_crop=True),
    ImageOptions(resize=300, upscale=True),
]


@pytest.mark.parametrize("gray", [True, False])
@pytest.mark.parametrize("k", range(len(PNG_OPTIONS)))
def test_plain_png_takes_opencv_and_gives_pillows_pixels(monkeypatch, gray, k):
    opts = PNG_OPTIONS[k]
    rgb = imagegen.photo_array(90, 130, seed=k)
    src = np.asarray(Image.fromarray(rgb).convert("L")) if gray else rgb
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "made by a test")
    data = _with_chunk(_png(src, info), b"gAMA", (100000).to_bytes(4, "big"))  # not applied
    fast = imaging._fast_png(data, opts)
    if opts.color == 0 and not gray:  # luma weights differ between libpng and Pillow
        assert fast is None
        return
    assert fast is not None
    assert process_image(data, opts) == fast
    slow = _pillow_only(data, opts, monkeypatch)
    assert (fast.height, fast.width, fast.channels) == (slow.height, slow.width, slow.channels)
    np.testing.assert_array_equal(_pixels(fast.data), _pixels(slow.data))


def test_png_in_png_out_keeps_pillows_encoder():
    data = _png(imagegen.photo_array(40, 50, seed=1))
    assert imaging._fast_png(data, ImageOptions(encoding=".png")) is None


def _exif_orientation_6() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return exif.tobytes()


@pytest.mark.parametrize(
    "case",
    ["tRNS", "eXIf", "xmp-text", "exif-text", "iCCP", "palette", "16-bit", "gray+alpha", "zTXt"],
)
def test_other_pngs_take_the_pillow_path(tmp_path, case):
    rgb = imagegen.photo_array(40, 60, seed=3)
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    if case == "tRNS":
        data = _with_chunk(_png(gray), b"tRNS", b"\x00\x10")
    elif case == "eXIf":  # orientation 6: Pillow's path turns the picture upright
        data = _with_chunk(_png(rgb), b"eXIf", _exif_orientation_6()[6:])
        out = process_image(data, ImageOptions())
        assert (out.height, out.width) == (60, 40)
    elif case in ("xmp-text", "exif-text"):
        info = PngImagePlugin.PngInfo()
        key = "XML:com.adobe.xmp" if case == "xmp-text" else "Raw profile type exif"
        info.add_text(key, "x")
        data = _png(rgb, info)
    elif case == "iCCP":
        data = _with_chunk(_png(rgb), b"iCCP", b"p\x00\x00" + __import__("zlib").compress(b"x"))
    elif case == "palette":
        data = imagegen.make_palette_png(tmp_path / "p.png").read_bytes()
    elif case == "16-bit":
        data = imagegen.make_png16(tmp_path / "g.png").read_bytes()
    elif case == "gray+alpha":
        data = _png(np.dstack([gray, gray]))
    else:
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", "compressed", zip=True)
        data = _png(rgb, info)
    assert not imaging._plain_png(data) or imaging._fast_png(data, ImageOptions()) is None
    process_image(data, ImageOptions())  # and the Pillow path takes it


def test_damaged_png_gives_the_same_outcome_as_before(monkeypatch):
    data = bytearray(_png(imagegen.photo_array(60, 80, seed=4)))
    idat = data.index(b"IDAT")
    data[idat + 40 : idat + 60] = b"\x00" * 20  # zlib data broken, chunk CRC now wrong
    with pytest.raises(ImageError, match="^truncated or corrupt image data: CRC mismatch"):
        process_image(bytes(data), ImageOptions())
    # broken zlib data behind a correct CRC: OpenCV refuses, so Pillow's path decides, as
    # before (Pillow 13 decodes what it can of such a file)
    length = int.from_bytes(data[idat - 4 : idat], "big")
    body = bytes(data[idat + 4 : idat + 4 + length])
    fixed = bytes(data[: idat - 4]) + _chunk(b"IDAT", body) + bytes(data[idat + 8 + length :])
    assert imaging._plain_png(fixed)
    assert imaging._fast_png(fixed, ImageOptions()) is None
    assert process_image(fixed, ImageOptions()) == _pillow_only(fixed, ImageOptions(), monkeypatch)
