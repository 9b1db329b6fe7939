"""The pure-Python JPEG header reader (``jpeg_header``) and the nvJPEG routing built on it.

Each case is a real file from ``imagegen`` / Pillow, or one with a single header byte patched to
make a JPEG Pillow cannot write (YCCK, 12-bit, lossless, arithmetic, unusual subsampling); only
the routing decision and the header fields are checked, so patched scan data does not matter.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from pathlib import Path

import imagegen
import numpy as np
import pytest
from PIL import Image

from recordkit.imageinfo import JpegHeader, jpeg_header
from recordkit.loaders.nvjpeg import nvjpeg_refusal


def _jpeg(**kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(imagegen.upright_pattern()).save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _segment(data: bytes, marker: int) -> int:
    """Offset of the first ``FF marker`` segment before the first scan (test-side walker)."""
    pos = 2
    while data[pos + 1] != 0xDA:
        if data[pos + 1] == marker:
            return pos
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    raise AssertionError(f"no marker {marker:#x}")


def _patched(data: bytes, marker: int, offset: int, value: int) -> bytes:
    """``data`` with the byte at ``offset`` into the segment of ``marker`` set to ``value``."""
    out = bytearray(data)
    out[_segment(data, marker) + offset] = value
    return bytes(out)


def _sof_marker(data: bytes, value: int) -> bytes:
    out = bytearray(data)
    out[_segment(data, 0xC0) + 1] = value
    return bytes(out)


def _file(make: Callable[..., Path], tmp: Path, *args: object) -> bytes:
    return make(tmp / "f", *args).read_bytes()


# Offsets inside the SOF0 segment: FF C0, length (2), precision (+4), height, width, count (+9),
# then (id, HxV, table) per component: component 1's sampling byte is at +11, component 2's +14.
CASES = {
    "cmyk": (lambda t: _file(imagegen.make_cmyk_jpeg, t), "CMYK JPEG"),
    "ycck": (lambda t: _patched(_file(imagegen.make_cmyk_jpeg, t), 0xEE, 15, 2), "YCCK JPEG"),
    "rgb-adobe": (lambda t: _jpeg(keep_rgb=True), "RGB-coded JPEG (Adobe transform 0)"),
    "exif-6": (lambda t: _file(imagegen.make_exif_rotated_jpeg, t, 6), "EXIF orientation 6"),
    "exif-1": (lambda t: _file(imagegen.make_exif_rotated_jpeg, t, 1), None),
    "gray": (lambda t: _file(imagegen.make_grayscale_jpeg, t), None),
    "progressive": (lambda t: _jpeg(progressive=True), None),
    "4:4:4": (lambda t: _jpeg(subsampling=0), None),
    "4:2:2": (lambda t: _jpeg(subsampling=1), None),
    "4:2:0": (lambda t: _jpeg(subsampling=2), None),
    "12-bit": (lambda t: _patched(_jpeg(), 0xC0, 4, 12), "12-bit JPEG"),
    "lossless": (lambda t: _sof_marker(_jpeg(), 0xC3), "lossless JPEG"),
    "arithmetic": (lambda t: _sof_marker(_jpeg(), 0xC9), "arithmetic-coded JPEG"),
    "extended": (lambda t: _sof_marker(_jpeg(), 0xC1), "extended JPEG"),
    "luma-3x1": (
        lambda t: _patched(_jpeg(subsampling=0), 0xC0, 11, 0x31),
        "chroma subsampling nvJPEG does not know (3x1 1x1 1x1)",
    ),
    "chroma-2x1": (
        lambda t: _patched(_jpeg(subsampling=2), 0xC0, 14, 0x21),
        "chroma subsampling nvJPEG does not know (2x2 2x1 1x1)",
    ),
    "png": (lambda t: _file(imagegen.make_png_rgba, t), "not a JPEG whose header"),
    "truncated": (lambda t: _file(imagegen.make_truncated_jpeg, t), "no end-of-image marker"),
    "header-cut": (lambda t: _jpeg()[:300], "not a JPEG whose header"),
    "text": (lambda t: b"hello", "not a JPEG whose header"),
    "empty": (lambda t: b"", "not a JPEG whose header"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_routing_decision(tmp_path: Path, case: str) -> None:
    make, want = CASES[case]
    why = nvjpeg_refusal(jpeg_header(make(tmp_path)))
    if want is None:
        assert why is None
    else:
        assert why is not None and why.startswith(want), why


def test_header_fields(tmp_path: Path) -> None:
    sub = {k: jpeg_header(_jpeg(subsampling=k)) for k in (0, 1, 2)}
    assert [h.sampling for h in sub.values()] == [  # type: ignore[union-attr]
        ((1, 1), (1, 1), (1, 1)),
        ((2, 1), (1, 1), (1, 1)),
        ((2, 2), (1, 1), (1, 1)),
    ]
    h = sub[2]
    assert h == JpegHeader(
        width=64,
        height=48,
        precision=8,
        process="baseline",
        arithmetic=False,
        component_ids=(1, 2, 3),
        sampling=((2, 2), (1, 1), (1, 1)),
        jfif=True,
        adobe_transform=None,
        orientation=1,
        eoi=True,
    )
    exif = jpeg_header(_file(imagegen.make_exif_rotated_jpeg, tmp_path, 8))
    assert exif is not None and (exif.orientation, exif.width, exif.height) == (8, 48, 64)
    cmyk = jpeg_header(_file(imagegen.make_cmyk_jpeg, tmp_path))
    assert cmyk is not None and (len(cmyk.sampling), cmyk.adobe_transform) == (4, 0)
    prog = jpeg_header(_jpeg(progressive=True))
    assert prog is not None and prog.process == "progressive"
    gray = jpeg_header(_file(imagegen.make_grayscale_jpeg, tmp_path))
    assert gray is not None and gray.sampling == ((1, 1),)


def test_exif_orientation_big_endian_and_broken() -> None:
    """A Motorola-order EXIF block is read; an unreadable one reports 0 (-> CPU)."""

    def with_app1(tiff: bytes) -> bytes:
        body = b"Exif\x00\x00" + tiff
        seg = b"\xff\xe1" + (2 + len(body)).to_bytes(2, "big") + body
        plain = _jpeg()
        return plain[:2] + seg + plain[2:]

    entry = (0x0112).to_bytes(2, "big") + (3).to_bytes(2, "big") + (1).to_bytes(4, "big")
    tiff = b"MM\x00\x2a" + (8).to_bytes(4, "big") + (1).to_bytes(2, "big")
    tiff += entry + (3).to_bytes(2, "big") + b"\x00\x00" + b"\x00" * 4
    assert jpeg_header(with_app1(tiff)).orientation == 3  # type: ignore[union-attr]
    assert jpeg_header(with_app1(b"MM\x00\x2a\xff\xff\xff\xff")).orientation == 0  # type: ignore[union-attr]
    assert nvjpeg_refusal(jpeg_header(with_app1(b"junk"))) == "EXIF orientation 0"


def test_garbage_never_raises(tmp_path: Path) -> None:
    """Every prefix of a real header, random byte flips and random bytes give a header or None."""
    data = _file(imagegen.make_exif_rotated_jpeg, tmp_path, 6)
    sos = data.index(b"\xff\xda")
    end = sos + 20
    for n in range(end):
        header = jpeg_header(data[:n])
        assert header is None if n <= sos else header is None or not header.eoi
    rng = random.Random(0)
    for _ in range(300):
        bad = bytearray(data[:end])
        for _ in range(rng.randint(1, 8)):
            bad[rng.randrange(2, end)] = rng.randrange(256)
        jpeg_header(bytes(bad))
        jpeg_header(b"\xff\xd8" + bytes(rng.randrange(256) for _ in range(rng.randint(0, 64))))
    huge = b"\xff\xd8" + b"\xff" * 100_000  # fill bytes only: bounded, gives up
    assert jpeg_header(huge) is None
    assert jpeg_header(np.zeros(10, np.uint8).tobytes()) is None
