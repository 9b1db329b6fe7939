"""Sizes for the DALI backend, computed without DALI: decoder memory, reader batches, buffers.

The GPU contracts of :mod:`recordkit.loaders.dali` that are plain arithmetic live here so that
they are tested on any machine (contract 11), and so that :func:`recordkit.make_loader` can
size a loader before DALI is imported:

- :func:`decoder_memory`: which nvJPEG / hardware-decoder preallocation each decoder gets (the
  training one only), sized by :func:`pack_image_bound` from the manifest's pack parameters;
- :func:`reader_batches`: how many batches DALI's reader yields per shard epoch with
  ``pad_last_batch`` (a validation pipeline kept across passes relies on it);
- :func:`default_initial_fill`: the reader's shuffle buffer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "decoder_memory",
    "default_initial_fill",
    "pack_image_bound",
    "reader_batches",
]

# From DALI's ResNet-50 example: share of JPEG decoding sent to the A100/H100 hardware decoder.
HW_DECODER_LOAD = 0.65
# DALI's ResNet-50 example sizes the training decoder's nvJPEG buffers for ImageNet's largest
# image: one device buffer and two pinned host buffers per thread, and the hardware decoder's
# preallocation for the largest width and height in the data set. Used when the manifest does
# not bound the image size.
IMAGENET_DEVICE_MEMORY_PADDING = 211025920
IMAGENET_HOST_MEMORY_PADDING = 140544512
IMAGENET_WIDTH_HINT = 5980
IMAGENET_HEIGHT_HINT = 6430
# nvJPEG's hybrid decoder keeps the Huffman-decoded DCT coefficients (int16, three full-size
# components at worst, 4:4:4) in pinned memory: 6 bytes per pixel; on the device those plus the
# 8-bit planes: 9. (A model, not a measurement: the example's two paddings are 6 and 9 bytes
# per pixel of the same ~23.4-Mpx image, within 0.1 %.) This scales them to the data's
# largest image.
HOST_BYTES_PER_PIXEL = 6
DEVICE_BYTES_PER_PIXEL = 9
# ``pack --resize R`` bounds the shorter side; the longer one is assumed at most 2 R (4:3 and
# 16:9 photos fit; a wider panorama makes that thread's nvJPEG buffer grow once, no error).
MAX_ASPECT = 2.0


def default_initial_fill(records: int, batch_size: int) -> int:
    """Shuffle buffer size: ``max(1024, 4 * batch)`` records, capped at the rank's records.

    About 110 MB of encoded ImageNet JPEGs per rank at 1024; larger buffers buy little when the
    shards were packed from a shuffled list.
    """
    return max(1, min(records, max(1024, 4 * batch_size)))


def reader_batches(num_records: int, world_size: int, batch_size: int) -> int:
    """Batches DALI's reader yields per shard epoch with ``pad_last_batch``, on every rank.

    Every shard is padded (repeating its last record) to the batch count of the largest
    shard, ``ceil(N / world)`` records: a rank with fewer records may get a whole batch of
    padding. After that many batches the reader is back at the shard's first record.
    """
    return math.ceil(math.ceil(num_records / world_size) / batch_size)


def pack_image_bound(pack: Mapping[str, Any], split: str) -> tuple[int, int] | None:
    """The largest decoded image of ``split`` as ``(long side, short side)``, if the pack tells.

    Reads the manifest's pack parameters (``Manifest.pack``; per split under ``"splits"``, as
    ``recordkit pack`` and ``convert-rec`` write them, else the top-level ones):
    ``resize = R`` with ``center_crop`` stores at most ``R x R``; without it the shorter side is
    at most ``R`` and the longer side is assumed at most ``MAX_ASPECT * R``. ``resize = 0``,
    ``pass_through`` (original bytes) and converted splits give None (no bound known).
    """
    per_split = pack.get("splits")
    params = per_split.get(split) if isinstance(per_split, Mapping) else pack
    if not isinstance(params, Mapping) or params.get("pass_through"):
        return None
    try:
        r = int(params.get("resize") or 0)
    except (TypeError, ValueError):
        return None
    if r <= 0:
        return None
    if params.get("center_crop"):
        return r, r
    return math.ceil(MAX_ASPECT * r), r


def _mcu(n: int) -> int:
    """Round up to a JPEG MCU (16 px), the granularity nvJPEG allocates its planes in."""
    return -(-n // 16) * 16


def decoder_memory(
    *, train: bool, gpu: bool, max_image: tuple[int, int] | None = None
) -> dict[str, Any]:
    """The image decoder's memory arguments (a GPU contract, tested on CPU).

    Args:
        train: The training decoder (``image_random_crop``), else validation (``image``).
        gpu: ``"mixed"`` decoding on the GPU; the CPU decoder gets no memory arguments at all.
        max_image: ``(long side, short side)`` of the largest stored image
            (:func:`pack_image_bound`); None: DALI's ResNet-50 example values (ImageNet).

    Returns:
        ``{}`` for the CPU decoder. On a GPU ``hw_decoder_load``, and for training
        ``device_memory_padding`` (one device buffer per thread), ``host_memory_padding`` (two
        pinned buffers per thread) and ``preallocate_width_hint`` / ``_height_hint`` (the
        hardware decoder's pool; an image is either orientation, so both are the long side).
        Validation sets both paddings to 0 (DALI's defaults would preallocate 16 MiB + 2 x 8
        MiB per thread): its buffers grow to what its images need, no more.
    """
    if not gpu:
        return {}
    kw: dict[str, Any] = {"hw_decoder_load": HW_DECODER_LOAD}
    if not train:
        kw.update(device_memory_padding=0, host_memory_padding=0)
        return kw
    if max_image is None:
        kw.update(
            device_memory_padding=IMAGENET_DEVICE_MEMORY_PADDING,
            host_memory_padding=IMAGENET_HOST_MEMORY_PADDING,
            preallocate_width_hint=IMAGENET_WIDTH_HINT,
            preallocate_height_hint=IMAGENET_HEIGHT_HINT,
        )
        return kw
    long, short = max_image
    pixels = _mcu(long) * _mcu(short)
    kw.update(
        device_memory_padding=DEVICE_BYTES_PER_PIXEL * pixels,
        host_memory_padding=HOST_BYTES_PER_PIXEL * pixels,
        preallocate_width_hint=long,
        preallocate_height_hint=long,
    )
    return kw
