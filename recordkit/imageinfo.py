"""Format, size and channel count of a JPEG or PNG from its header bytes, without decoding.

Pure Python on the bytes (no Pillow, no OpenCV): converting a ``.rec`` copies image bytes
unchanged, so this is all the image work it does. The channel count follows
:class:`recordkit.imaging.EncodedImage` for kept files: what a decoder returns unchanged
(1 gray, 2 gray + alpha, 3 colour, 4 colour + alpha or CMYK).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ImageInfo", "NotAnImage", "image_info"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> channels (palette: 3, or 4 with a tRNS chunk).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


class NotAnImage(ValueError):
    """The bytes are not a JPEG or PNG whose header can be read; the message says why."""


@dataclass(frozen=True)
class ImageInfo:
    """What the header of an encoded image says.

    Attributes:
        format: ``"jpeg"`` or ``"png"``.
        width: Width in pixels, as stored (before any EXIF orientation).
        height: Height in pixels, as stored.
        channels: Channels a decoder returns unchanged.
    """

    format: str
    width: int
    height: int
    channels: int


def _png(data: bytes) -> ImageInfo:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise NotAnImage("PNG without an IHDR header (truncated or damaged)")
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    color_type = data[25]
    if color_type not in _PNG_CHANNELS:
        raise NotAnImage(f"PNG with invalid colour type {color_type}")
    channels = _PNG_CHANNELS[color_type]
    if color_type == 3:  # palette: transparency makes it RGBA
        pos = 33  # after the signature and the IHDR chunk (4 + 4 + 13 + 4)
        while pos + 8 <= len(data):
            length = int.from_bytes(data[pos : pos + 4], "big")
            kind = data[pos + 4 : pos + 8]
            if kind == b"tRNS":
                channels = 4
                break
            if kind in (b"IDAT", b"IEND"):
                break
            pos += 12 + length
    return ImageInfo("png", width, height, channels)


def _jpeg(data: bytes) -> ImageInfo:
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            raise NotAnImage(f"JPEG marker expected at byte {pos} (damaged header)")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            if pos + 10 > n:
                break
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return ImageInfo("jpeg", width, height, data[pos + 9])
        if marker in (0xDA, 0xD9) or length < 2:
            break
        pos += 2 + length
    raise NotAnImage("JPEG without a frame header (truncated or damaged)")


def image_info(data: bytes) -> ImageInfo:
    """Read format, size and channels from the header of JPEG or PNG bytes.

    Args:
        data: Encoded image bytes.

    Returns:
        The :class:`ImageInfo`.

    Raises:
        NotAnImage: Empty data, another format, or a header too damaged to read.
    """
    if not data:
        raise NotAnImage("empty image (0 bytes)")
    if data.startswith(_PNG_SIGNATURE):
        return _png(data)
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg(data)
    shown = data[:8].hex(" ")
    raise NotAnImage(f"not a JPEG or PNG (first bytes {shown})")
