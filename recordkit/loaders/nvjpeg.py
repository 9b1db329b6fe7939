"""Which JPEGs the torch loader hands to nvJPEG (``torchvision.io.decode_jpeg(device="cuda")``).

torchvision decodes a list of JPEGs on the GPU in one call that returns nothing if any one image
fails, and nvJPEG cannot decode CMYK/YCCK, 12-bit, lossless, arithmetic-coded or hierarchical
JPEGs, rejects chroma subsamplings it does not know (torchvision checks
``subsampling != NVJPEG_CSS_UNKNOWN``) and applies no EXIF orientation. So the worker reads each
JPEG's header (:func:`recordkit.imageinfo.jpeg_header`, pure Python, bounded, stops at the first
scan) and decodes on the CPU, as the plain torch path does, every image :func:`nvjpeg_refusal`
gives a reason for. Torch-free, so it runs in workers at header-parsing cost.
"""

from __future__ import annotations

from recordkit.imageinfo import JpegHeader

__all__ = ["NVJPEG_SUBSAMPLING", "nvjpeg_refusal"]

NVJPEG_SUBSAMPLING: dict[tuple[int, int], str] = {
    (1, 1): "4:4:4",
    (2, 1): "4:2:2",
    (2, 2): "4:2:0",
    (1, 2): "4:4:0",
    (4, 1): "4:1:1",
    (4, 2): "4:1:0",
}
"""Luma ``(horizontal, vertical)`` sampling factors of the subsamplings nvJPEG names
(``NVJPEG_CSS_444`` … ``NVJPEG_CSS_410``), each with Cb and Cr at 1x1; plus grayscale."""

_RGB_IDS = (ord("R"), ord("G"), ord("B"))


def _factors(sampling: tuple[tuple[int, int], ...]) -> str:
    return " ".join(f"{h}x{v}" for h, v in sampling)


def nvjpeg_refusal(header: JpegHeader | None) -> str | None:
    """Why an image must be decoded on the CPU rather than by nvJPEG, or ``None`` if it need not.

    Conservative: anything nvJPEG might decode differently from the CPU path (OpenCV), or not
    at all, goes to the CPU; that costs CPU time for rare files, never a wrong or missing image.

    Args:
        header: The image's :func:`~recordkit.imageinfo.jpeg_header` (``None``: not a JPEG
            whose header could be read, e.g. a PNG or damaged bytes).

    Returns:
        A short reason (for logs), or ``None`` when the image can go to nvJPEG.
    """
    if header is None:
        return "not a JPEG whose header reads up to its first scan"
    if not header.eoi:
        return "no end-of-image marker (truncated?)"
    if header.arithmetic:
        return "arithmetic-coded JPEG"
    if header.process not in ("baseline", "progressive"):
        return f"{header.process} JPEG"
    if header.precision != 8:
        return f"{header.precision}-bit JPEG"
    if header.width == 0 or header.height == 0:
        return "no size in the frame header (DNL marker)"
    count = len(header.sampling)
    if count == 4:
        return "YCCK JPEG" if header.adobe_transform == 2 else "CMYK JPEG"
    if count == 3:
        if header.adobe_transform == 0:
            return "RGB-coded JPEG (Adobe transform 0)"
        if header.adobe_transform is None and not header.jfif and header.component_ids == _RGB_IDS:
            return "RGB-coded JPEG (components named R, G, B)"
        luma, cb, cr = header.sampling
        if cb != (1, 1) or cr != (1, 1) or luma not in NVJPEG_SUBSAMPLING:
            return f"chroma subsampling nvJPEG does not know ({_factors(header.sampling)})"
    elif count != 1:
        return f"{count}-component JPEG"
    if header.orientation != 1:
        return f"EXIF orientation {header.orientation}"
    return None
