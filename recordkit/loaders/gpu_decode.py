"""The torch backend's batch decode (``gpu_decode=True``): nvJPEG, streams, fallbacks, devices.

Workers (:class:`~recordkit.loaders.decode.EncodedDecode`) send the JPEGs nvJPEG can take, with
their crops, and decode every other image themselves; :meth:`EncodedBatch.collate` packs a batch
into one byte tensor for the JPEGs and one uint8 tensor for the worker-decoded samples. In the
main process :class:`BatchDecoder`:

1. decodes the JPEGs with one ``torchvision.io.decode_jpeg(list, device=…)`` call
   (:func:`decode_jpegs`). That call returns nothing if one image fails, so on failure the images
   are decoded one by one, and any that still fails is decoded on the CPU (OpenCV, as the
   workers do) and transformed there, with a warning naming the file;
2. on CUDA runs that decode on a side stream (:func:`decode_on_side_stream`, reasons there);
3. crops, resizes and flips all decoded images in chunks (:func:`~recordkit.loaders.crops.
   crop_resize_batch`), then adds the worker-decoded samples with one host-to-device copy and
   one ``index_copy_``.

:func:`on_device` is the CUDA device context the loader creates its DataLoader iterator (and
its pin-memory thread) in. Everything here runs on CPU too (the tests run it there).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.io import ImageReadMode, decode_jpeg

from recordkit.loaders.augment import Augment, CropBox, val_crop_region
from recordkit.loaders.crops import crop_resize_batch
from recordkit.loaders.decode import (
    EncodedSample,
    crop_resize,
    decode_rgb_bytes,
    val_transform_tensor,
)

__all__ = [
    "BatchDecoder",
    "EncodedBatch",
    "decode_jpegs",
    "decode_on_side_stream",
    "on_device",
]

log = logging.getLogger(__name__)

Decoded = list[torch.Tensor | None]


@dataclass
class EncodedBatch:
    """A ``gpu_decode`` batch as a worker hands it to the main process.

    Attributes:
        size: Samples in the batch.
        jpeg: The JPEGs for nvJPEG, concatenated: uint8 ``(total bytes,)``. One tensor, so one
            shared-memory handle through the worker queue instead of one per image.
        lengths: Byte length of each JPEG in ``jpeg``.
        jpeg_index: Each JPEG's position in the batch.
        boxes: Each JPEG's training crop (``None``: validation transform).
        flips: Each JPEG's mirror flag.
        names: Each JPEG's filename, for the warning when its GPU decode fails.
        pixels: The worker-decoded samples, uint8 ``(k, 3, S, S)``, or ``None`` if none.
        pixel_index: Their positions in the batch, int64 ``(k,)``, or ``None``.
    """

    size: int
    jpeg: torch.Tensor
    lengths: list[int]
    jpeg_index: list[int]
    boxes: list[CropBox | None]
    flips: list[bool]
    names: list[str]
    pixels: torch.Tensor | None = None
    pixel_index: torch.Tensor | None = None

    @classmethod
    def collate(cls, samples: Sequence[EncodedSample]) -> EncodedBatch:
        """Pack worker samples (runs in the worker, as part of the DataLoader's collate)."""
        coded = [(i, s) for i, s in enumerate(samples) if s.data is not None]
        done = [(i, s.pixels) for i, s in enumerate(samples) if s.data is None]
        raw = b"".join(s.data for _, s in coded)  # type: ignore[misc]
        batch = cls(
            size=len(samples),
            jpeg=torch.frombuffer(bytearray(raw), dtype=torch.uint8)
            if raw
            else torch.empty(0, dtype=torch.uint8),
            lengths=[len(s.data) for _, s in coded],  # type: ignore[arg-type]
            jpeg_index=[i for i, _ in coded],
            boxes=[s.box for _, s in coded],
            flips=[s.flip for _, s in coded],
            names=[s.name for _, s in coded],
        )
        if done:
            batch.pixels = torch.stack([p for _, p in done])  # type: ignore[misc]
            batch.pixel_index = torch.tensor([i for i, _ in done], dtype=torch.int64)
        return batch

    def pin_memory(self) -> EncodedBatch:
        """Pin the worker-decoded pixels (DataLoader's pin-memory thread calls this).

        The JPEG bytes stay in pageable memory: nvJPEG reads them on the host.
        """
        if self.pixels is not None and self.pixel_index is not None:
            self.pixels = self.pixels.pin_memory()
            self.pixel_index = self.pixel_index.pin_memory()
        return self


def on_device(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """``torch.cuda.device(device)`` for a CUDA device with an index, else a no-op context.

    DataLoader's pin-memory thread pins for the device that is current when the iterator is
    created (``torch.accelerator.current_device_index()``); a user on ``cuda:3`` who never
    called ``set_device`` would otherwise get a pin thread creating a context on GPU 0.
    """
    if device.type == "cuda" and device.index is not None:
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def _decode_list(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)  # type: ignore[return-value]


def decode_jpegs(data: list[torch.Tensor], device: torch.device) -> tuple[Decoded, dict[int, str]]:
    """Decode JPEGs to RGB uint8 ``(3, H, W)`` on ``device``: batched, then one by one on failure.

    Args:
        data: Encoded JPEGs, 1-D uint8 CPU tensors (non-empty).
        device: Where to decode (CUDA: nvJPEG).

    Returns:
        The images (``None`` where decoding failed) and, for those, the error message.
    """
    if not data:
        return [], {}
    try:
        return list(_decode_list(data, device)), {}
    except RuntimeError:  # one bad image fails the whole call; find it
        pass
    images: Decoded = []
    errors: dict[int, str] = {}
    for i, d in enumerate(data):
        try:
            images.append(_decode_list([d], device)[0])
        except RuntimeError as exc:
            images.append(None)
            errors[i] = " ".join(str(exc).split())[-200:]
    return images, errors


def decode_on_side_stream(
    decode: Callable[[], tuple[Decoded, dict[int, str]]],
    side: Any,
    consumer: Any,
) -> tuple[Decoded, dict[int, str]]:
    """Run a torchvision GPU decode so its outputs are safe to use on ``consumer``.

    torchvision allocates the outputs with the caching allocator on the caller's *current*
    stream, but nvJPEG writes them on torchvision's own pool stream, which it synchronizes (and
    makes the current stream wait on) only at the end. Called on the training stream, a block
    that stream freed while its kernels are still pending can be handed to the outputs and
    overwritten by the decoder before those kernels ran. Under ``side`` (a stream that runs no
    kernels of its own) the outputs come from ``side``'s pool instead, where a block returns
    only after all the work recorded on it finished; ``consumer`` waits for ``side``, and each
    output is recorded on ``consumer`` so its memory is not reused while ``consumer``'s
    kernels that read it are pending.

    Args:
        decode: Does the decode (e.g. ``lambda: decode_jpegs(data, device)``).
        side: The side stream (``torch.cuda.Stream``).
        consumer: The stream that uses the outputs (``torch.cuda.current_stream()``).

    Returns:
        What ``decode`` returned.
    """
    with torch.cuda.stream(side):
        images, errors = decode()
    consumer.wait_stream(side)
    for img in images:
        if img is not None:
            img.record_stream(consumer)
    return images, errors


class BatchDecoder:
    """:class:`EncodedBatch` -> float32 ``(B, 3, S, S)`` pixels (0-255, not normalized).

    Args:
        device: Where to decode and where the result lives.
        image_size: Output side ``S``.
        augment: Transform settings (``train_antialias``, ``val_resize_ratio``).
        train: Training batches (crops from the workers) or validation (centre crop).
    """

    def __init__(self, device: torch.device, image_size: int, augment: Augment, train: bool):
        self.device = device
        self.image_size = image_size
        self.augment = augment
        self.train = train
        self._side: Any = None

    def _decode(self, data: list[torch.Tensor]) -> tuple[Decoded, dict[int, str]]:
        if self.device.type != "cuda":
            return decode_jpegs(data, self.device)
        if self._side is None:
            self._side = torch.cuda.Stream(device=self.device)
        return decode_on_side_stream(
            lambda: decode_jpegs(data, self.device),
            self._side,
            torch.cuda.current_stream(self.device),
        )

    def _region(self, img: torch.Tensor, box: CropBox | None) -> tuple[float, float, float, float]:
        h, w = int(img.shape[-2]), int(img.shape[-1])
        if box is None:
            return val_crop_region(w, h, self.image_size, self.augment.val_resize_ratio)
        return (box.left, box.top, box.left + box.width, box.top + box.height)

    def _on_cpu(self, data: torch.Tensor, box: CropBox | None, flip: bool, name: str) -> Any:
        """The worker path for one JPEG whose GPU decode failed: uint8 ``(3, S, S)`` on CPU."""
        img = decode_rgb_bytes(data.numpy().tobytes(), name)
        if box is None:
            return val_transform_tensor(img, self.image_size, self.augment)
        h, w = img.shape[-2:]
        left, top = min(box.left, w - 1), min(box.top, h - 1)
        box = CropBox(left, top, min(box.width, w - left), min(box.height, h - top))
        return crop_resize(img, box, self.image_size, flip, self.augment.train_antialias)

    def __call__(self, batch: EncodedBatch) -> torch.Tensor:
        """Decode and transform one batch (see the module docstring)."""
        size = self.image_size
        out = torch.empty((batch.size, 3, size, size), dtype=torch.float32, device=self.device)
        data = list(torch.split(batch.jpeg, batch.lengths)) if batch.lengths else []
        images, errors = self._decode(data)
        ok = [k for k, img in enumerate(images) if img is not None]
        crop_resize_batch(
            [images[k] for k in ok],  # type: ignore[misc]
            [self._region(images[k], batch.boxes[k]) for k in ok],  # type: ignore[arg-type]
            [batch.flips[k] for k in ok],
            out,
            [batch.jpeg_index[k] for k in ok],
            antialias=self.augment.train_antialias if self.train else True,
            crop_first=self.train,
        )
        del images  # recorded on the consumer stream: freed once its kernels have run
        fallback = []
        for k, why in errors.items():
            log.warning("%s: GPU JPEG decode failed (%s); decoded on the CPU", batch.names[k], why)
            fallback.append(self._on_cpu(data[k], batch.boxes[k], batch.flips[k], batch.names[k]))
        nb = self.device.type == "cuda"
        if fallback:
            where = torch.tensor([batch.jpeg_index[k] for k in errors], dtype=torch.int64)
            pixels = torch.stack(fallback).to(self.device, non_blocking=nb)
            out.index_copy_(0, where.to(self.device, non_blocking=nb), pixels.float())
        if batch.pixels is not None and batch.pixel_index is not None:
            pixels = batch.pixels.to(self.device, non_blocking=nb)
            where = batch.pixel_index.to(self.device, non_blocking=nb)
            out.index_copy_(0, where, pixels.to(torch.float32))
        return out
