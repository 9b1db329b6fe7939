"""What the header bytes of a JPEG or PNG say, without decoding.

Pure Python on the bytes (no Pillow, no OpenCV):

- :func:`image_info`: format, size and channel count. Converting a ``.rec`` copies image bytes
  unchanged, so this is all the image work it does. The channel count follows
  :class:`recordkit.imaging.EncodedImage` for kept files: what a decoder returns unchanged
  (1 gray, 2 gray + alpha, 3 colour, 4 colour + alpha or CMYK).
- :func:`jpeg_header`: everything a JPEG's markers say before its first scan (coding process,
  precision, components and their sampling factors, JFIF / Adobe / EXIF orientation), which the
  torch loader's GPU decode uses to send the images nvJPEG cannot decode to the CPU. It never
  raises: bytes it cannot read to the first scan give ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ImageInfo", "JpegHeader", "NotAnImage", "image_info", "jpeg_header"]

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


# --------------------------------------------------------------------------------------------
# The JPEG header up to the first scan
# --------------------------------------------------------------------------------------------

# Start-of-frame marker -> (coding process, arithmetic coding). 0xC4 (DHT), 0xC8 (JPG) and 0xCC
# (DAC) are not frames.
_SOF = {
    0xC0: ("baseline", False),
    0xC1: ("extended", False),
    0xC2: ("progressive", False),
    0xC3: ("lossless", False),
    0xC5: ("hierarchical", False),
    0xC6: ("hierarchical", False),
    0xC7: ("hierarchical", False),
    0xC9: ("extended", True),
    0xCA: ("progressive", True),
    0xCB: ("lossless", True),
    0xCD: ("hierarchical", True),
    0xCE: ("hierarchical", True),
    0xCF: ("hierarchical", True),
}
_DHP = 0xDE  # define hierarchical progression: a hierarchical JPEG
_SOS = 0xDA
_MAX_SEGMENTS = 1024  # markers (and fill bytes) read before giving up on a header
_EOI_WINDOW = 64  # the end-of-image marker must lie within the last bytes
_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class JpegHeader:
    """What a JPEG's markers say before its first scan (:func:`jpeg_header`).

    Attributes:
        width: Frame width in pixels, as stored (before EXIF orientation); 0 if undefined.
        height: Frame height as stored; 0 when a DNL marker defines it later.
        precision: Sample precision in bits (8, or 12 for extended JPEGs; 2-16 lossless).
        process: ``"baseline"``, ``"extended"``, ``"progressive"``, ``"lossless"`` or
            ``"hierarchical"``.
        arithmetic: Arithmetic instead of Huffman entropy coding.
        component_ids: The frame's component identifiers, in order.
        sampling: ``(horizontal, vertical)`` sampling factors per component, in order.
        jfif: A JFIF APP0 marker is present (which implies YCbCr for 3 components).
        adobe_transform: The Adobe APP14 marker's colour transform (0: none, i.e. RGB or
            CMYK; 1: YCbCr; 2: YCCK), or ``None`` without that marker.
        orientation: EXIF orientation (1 when there is no EXIF orientation tag; 0 when an EXIF
            block is present but unreadable; otherwise the tag's value, which may be out of the
            valid 1-8).
        eoi: An end-of-image marker lies within the data's last 64 bytes (False for most
            truncated files).
    """

    width: int
    height: int
    precision: int
    process: str
    arithmetic: bool
    component_ids: tuple[int, ...]
    sampling: tuple[tuple[int, int], ...]
    jfif: bool
    adobe_transform: int | None
    orientation: int
    eoi: bool


def _exif_orientation(tiff: bytes) -> int:
    """The Orientation tag of IFD0 in an EXIF TIFF block: 1 if absent, 0 if unreadable."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 0
    order = "little" if tiff[:2] == b"II" else "big"

    def num(at: int, size: int) -> int:
        return int.from_bytes(tiff[at : at + size], order)  # type: ignore[arg-type]

    ifd = num(4, 4)
    if num(2, 2) != 42 or ifd < 8 or ifd + 2 > len(tiff):
        return 0
    for k in range(num(ifd, 2)):
        entry = ifd + 2 + 12 * k
        if entry + 12 > len(tiff):
            return 0
        if num(entry, 2) == _ORIENTATION_TAG:
            kind = num(entry + 2, 2)
            if kind == 3:  # SHORT, left-justified in the value field
                return num(entry + 8, 2)
            return num(entry + 8, 4) if kind == 4 else 0  # LONG; anything else is broken
    return 1


def jpeg_header(data: bytes) -> JpegHeader | None:
    """Read a JPEG's markers up to its first scan (SOS), without decoding.

    Bounded: at most 1,024 markers are read, each segment must lie inside ``data``, and reading
    stops at the first start-of-scan marker. Never raises.

    Args:
        data: Encoded image bytes.

    Returns:
        The :class:`JpegHeader`, or ``None`` when ``data`` is not a JPEG whose markers can be
        read up to a start of scan after exactly one frame header (not a JPEG, damaged or
        truncated before the first scan, a second frame header).
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    n, pos = len(data), 2
    frame: tuple[int, int, int, str, bool, tuple[int, ...], tuple[tuple[int, int], ...]] | None
    frame = None
    jfif, adobe, orientation, hierarchical = False, None, 1, False
    for _ in range(_MAX_SEGMENTS):
        if pos + 2 > n or data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers
            pos += 2
            continue
        if marker in (0x00, 0xD8, 0xD9) or pos + 4 > n:
            return None
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        start, end = pos + 4, pos + 2 + length
        if length < 2 or end > n:
            return None
        if marker == _SOS:
            if frame is None:
                return None
            width, height, precision, process, arithmetic, ids, sampling = frame
            return JpegHeader(
                width=width,
                height=height,
                precision=precision,
                process="hierarchical" if hierarchical else process,
                arithmetic=arithmetic,
                component_ids=ids,
                sampling=sampling,
                jfif=jfif,
                adobe_transform=adobe,
                orientation=orientation,
                eoi=b"\xff\xd9" in data[-_EOI_WINDOW:],
            )
        if marker in _SOF:
            count = data[start + 5] if start + 6 <= end else 0
            if frame is not None or count == 0 or length != 8 + 3 * count:
                return None
            comps = data[start + 6 : end]
            frame = (
                int.from_bytes(data[start + 3 : start + 5], "big"),
                int.from_bytes(data[start + 1 : start + 3], "big"),
                data[start],
                *_SOF[marker],
                tuple(comps[0::3]),
                tuple((f >> 4, f & 0x0F) for f in comps[1::3]),
            )
        elif marker == 0xE0 and data[start : start + 5] == b"JFIF\x00":
            jfif = True
        elif marker == 0xE1 and data[start : start + 6] == b"Exif\x00\x00" and orientation == 1:
            orientation = _exif_orientation(data[start + 6 : end])
        elif marker == 0xEE and length >= 14 and data[start : start + 5] == b"Adobe":
            adobe = data[start + 11]
        elif marker == _DHP:
            hierarchical = True
        pos = end
    return None
