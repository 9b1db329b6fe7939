"""The OpenCV fast path for plain JPEGs and the resample filters, against the Pillow path."""

from __future__ import annotations

import io

import cv2
import imagegen
import numpy as np
import pytest
from PIL import Image

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
