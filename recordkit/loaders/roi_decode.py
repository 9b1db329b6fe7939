"""Decode only the training crop's window of a JPEG (region-of-interest decode) on the CPU.

A random resized crop covers 8-100 % of the image, yet a full decode pays for every pixel.
libjpeg-turbo can skip the inverse DCT, upsampling and colour conversion of the columns left and
right of a window (``jpeg_crop_scanline``) and stop after its last row; the entropy decoding of
the rows above it remains. That is what DALI's ``decoders.image_random_crop`` does on the CPU.
Here it comes from NVIDIA nvImageCodec's CPU backend (``nvidia-nvimgcodec-cu12``, installed with
DALI: ``pip install recordkit[dali]``) — a CPU-only decoder (``NVIMGCODEC_DEVICE_CPU_ONLY``,
libjpeg-turbo), no GPU needed. Measured on the 480-px, quality-95 benchmark records
(``docs/LOADERS.md``): 1.45 ms per training crop against 1.95 ms for OpenCV's full decode.

The pixels are the same: the window of the full decode, bit for bit (ISLOW IDCT and fancy
upsampling in both; tested against OpenCV on 4:2:0, 4:2:2, 4:4:4, progressive and grayscale
JPEGs, ``tests/test_loaders.py``). So whether nvImageCodec is installed changes the speed of
the torch backend, never its batches. Images the gate sends elsewhere (the same conservative
list as for nvJPEG, :func:`~recordkit.loaders.nvjpeg.nvjpeg_refusal`: CMYK/YCCK, RGB-coded,
unusual subsampling, 12-bit, arithmetic/lossless/hierarchical, EXIF-rotated, truncated,
non-JPEG) and any decode nvImageCodec fails go through OpenCV as before.

Torch-free; one decoder per process, created lazily after ``fork`` (DataLoader workers).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from recordkit.imageinfo import JpegHeader, jpeg_header
from recordkit.loaders.augment import CropBox
from recordkit.loaders.nvjpeg import nvjpeg_refusal

__all__ = ["decode_window", "roi_available", "window_header"]

log = logging.getLogger(__name__)

_state: dict[str, Any] = {"pid": None, "decoder": None}


def _decoder() -> Any:
    """This process's nvImageCodec CPU decoder, or ``None`` when nvImageCodec is unusable."""
    if _state["pid"] == os.getpid():
        return _state["decoder"]
    _state["pid"], _state["decoder"] = os.getpid(), None
    try:
        from nvidia import nvimgcodec

        cpu = nvimgcodec.Backend(nvimgcodec.BackendKind.CPU_ONLY)
        _state["decoder"] = (
            nvimgcodec.Decoder(
                device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY,
                backends=[cpu],
                max_num_cpu_threads=1,
            ),
            nvimgcodec,
            nvimgcodec.DecodeParams(apply_exif_orientation=False),
        )
    except (ImportError, RuntimeError, AttributeError, TypeError) as exc:
        log.debug("no region-of-interest JPEG decode (nvImageCodec: %s)", exc)
    return _state["decoder"]


def roi_available() -> bool:
    """Whether this process can decode JPEG windows (nvImageCodec's CPU decoder loads)."""
    return _decoder() is not None


def window_header(data: bytes) -> JpegHeader | None:
    """The JPEG header when ``data`` can be window-decoded here, else ``None``.

    ``None`` when nvImageCodec is missing or the image is one that must take the OpenCV path
    (see the module docstring). The header's ``width`` x ``height`` is the decoded size (EXIF
    orientation 1), so the crop can be chosen before decoding.
    """
    if _decoder() is None:
        return None
    header = jpeg_header(data)
    if header is None or nvjpeg_refusal(header) is not None:
        return None
    return header


def decode_window(data: bytes, box: CropBox) -> np.ndarray | None:
    """Decode only ``box`` of a JPEG that :func:`window_header` accepted.

    Returns:
        ``(box.height, box.width, 3)`` uint8 RGB, C-contiguous; ``None`` if nvImageCodec fails
        (the caller decodes the whole image with OpenCV then, which reports damage as usual).
    """
    state = _decoder()
    if state is None:
        return None
    dec, nvimgcodec, params = state
    try:
        region = nvimgcodec.Region(
            start=(box.top, box.left), end=(box.top + box.height, box.left + box.width)
        )
        stream = nvimgcodec.CodeStream(data).get_sub_code_stream(region=region)
        img = dec.decode(stream, params=params)
        if img is None:
            return None
        arr = np.asarray(img.cpu())
    except (RuntimeError, ValueError) as exc:
        log.debug("window decode failed (%s); decoding the whole image", exc)
        return None
    if arr.shape != (box.height, box.width, 3) or arr.dtype != np.uint8:
        return None
    return np.ascontiguousarray(arr)
