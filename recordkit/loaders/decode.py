"""Per-sample decode + augment for the torch backend (runs in DataLoader workers).

Measured on this project's 2-core CPU box with ~500x375 quality-90 JPEGs, one thread, per
224-px training sample (decode + random resized crop + flip; ``docs/LOADERS.md``):

=============================================================  =======
OpenCV ``imdecode(IMREAD_COLOR_RGB)`` + v2 ``resized_crop``      1.06 ms
``torchvision.io.decode_jpeg`` + v2 ``resized_crop``             1.07 ms
PIL ``draft()`` (reduced DCT decode for the crop) + ``resize``   1.46 ms
OpenCV ``IMREAD_REDUCED_*`` + ``cv2.resize(INTER_AREA)``         1.45 ms
PIL full decode + ``resize(box=…)``                              1.58 ms
=============================================================  =======

Reduced decoding only pays off when the crop is at least twice the output size on both sides,
which at 224 px is rare for ImageNet-sized sources, and PIL's / OpenCV's resamplers are slower
than torch's antialiased bilinear kernel. OpenCV decodes (libjpeg-turbo; PNG, grayscale and
CMYK to RGB; EXIF orientation applied, as DALI does) and the crop is resized on the uint8 HWC
buffer viewed as CHW (no copy); ``torchvision.io.decode_jpeg`` is as fast but deprecated for
CPU decoding since torchvision 0.29, so it is used only for batched GPU decoding. Normalization
happens later, on the target device.

At 480-px quality-95 records the decode dominates (1.9 ms of a 2.5 ms sample), so
:class:`TrainDecode` decodes only the crop's window when nvImageCodec is installed
(:mod:`recordkit.loaders.roi_decode`: 1.45 ms, identical pixels), and the plain-bilinear
resize (``Augment(train_antialias=False)``) is OpenCV's ``INTER_LINEAR`` (0.19 vs 0.56 ms),
whose result stays HWC in memory; the antialiased one is torchvision's kernel.

With ``gpu_decode``, :class:`EncodedDecode` reads only the JPEG header and sends the bytes and
the chosen crop on for nvJPEG, or decodes here the images nvJPEG cannot take
(:mod:`recordkit.loaders.nvjpeg`).

Each callable here is a small picklable class, so DataLoader workers started with ``fork`` or
``spawn`` get their own copy.
"""

from __future__ import annotations

import io
import logging
import random
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

from recordkit.errors import RecordkitError
from recordkit.format.example import Record
from recordkit.imageinfo import jpeg_header
from recordkit.loaders.augment import (
    Augment,
    CropBox,
    center_crop_box,
    pad_crop_offsets,
    random_resized_crop_box,
    val_resize_size,
)
from recordkit.loaders.nvjpeg import nvjpeg_refusal
from recordkit.loaders.roi_decode import decode_window, window_header

__all__ = [
    "EncodedDecode",
    "EncodedSample",
    "PendingCrop",
    "TrainDecode",
    "ValDecode",
    "crop_resize",
    "decode_rgb",
    "decode_rgb_bytes",
    "auto_augment_transform",
    "image_size_of",
    "pad_crop",
    "pil_rgb",
    "val_transform_tensor",
]

log = logging.getLogger(__name__)


def _rng(seed: int | None) -> random.Random:
    return random.Random(seed) if seed is not None else random._inst  # type: ignore[attr-defined]


_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.10


def decode_rgb(record: Record) -> torch.Tensor:
    """Decode a record's image to a uint8 ``(3, H, W)`` RGB tensor (a view of an HWC buffer).

    Grayscale, palette and CMYK images come out as RGB; 16-bit PNGs are scaled to 8 bits; the
    EXIF orientation is applied.

    Raises:
        RecordkitError: The bytes are not a decodable image (names the record's filename).
    """
    return decode_rgb_bytes(record.image, record.filename)


def decode_rgb_bytes(data: bytes, name: str = "") -> torch.Tensor:
    """:func:`decode_rgb` for encoded bytes; ``name`` (e.g. the filename) is used in errors.

    Raises:
        RecordkitError: The bytes are not a decodable image.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    arr = cv2.imdecode(buf, _IMREAD_RGB if _IMREAD_RGB is not None else cv2.IMREAD_COLOR)
    if arr is None:
        try:
            with Image.open(io.BytesIO(data)) as im:
                arr = np.asarray(im.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            # Pillow names the BytesIO object ("cannot identify image file <_io.BytesIO …>").
            why = "unknown image format" if isinstance(exc, UnidentifiedImageError) else exc
            raise RecordkitError(f"{name or 'record'}: cannot decode image ({why})") from None
    elif _IMREAD_RGB is None:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    return torch.from_numpy(arr).permute(2, 0, 1)


def pil_rgb(record: Record) -> Image.Image:
    """Decode a record's image with Pillow as an RGB ``PIL.Image`` (RecordDataset's default)."""
    with Image.open(io.BytesIO(record.image)) as im:
        return im.convert("RGB")


def image_size_of(record: Record) -> tuple[int, int]:
    """``(width, height)`` from the record's features, or from the image header if missing."""
    if record.width > 0 and record.height > 0:
        return record.width, record.height
    with Image.open(io.BytesIO(record.image)) as im:
        return im.size


PENDING_MAX_BYTES = 2 << 20
"""Largest decoded window :class:`TrainDecode` leaves pending (held until the batch is
collated): a batch holds at most ``batch_size`` of them; larger crops are resized at once."""


@dataclass
class PendingCrop:
    """A training crop whose plain-bilinear resize and flip are still to be done.

    What :class:`TrainDecode` returns with ``pending=True``: the loader's collate resizes it
    straight into the batch (into the worker's shared-memory block) instead of into a sample
    of its own that is then copied there, and mirrors it on the way. :meth:`finish` is the
    only implementation of that resize, so a pending crop gives the pixels :func:`crop_resize`
    gives, bit for bit.

    Attributes:
        window: The crop, uint8 ``(h, w, 3)`` RGB (a view of the decoded image or the decoded
            window itself; rows may be strided).
        size: Output side in pixels.
        flip: Mirror after resizing.
    """

    window: np.ndarray
    size: int
    flip: bool

    def finish(self, out: np.ndarray | None = None) -> np.ndarray:
        """Resize to ``size`` x ``size`` (OpenCV ``INTER_LINEAR``), mirror if ``flip``.

        Args:
            out: Where to write: a C-contiguous uint8 ``(size, size, 3)`` array (e.g. a slot
                of a batch); default a new one.

        Returns:
            ``out`` (or the new array) holding the sample, HWC.
        """
        shape = (self.size, self.size)
        if not self.flip:
            return cv2.resize(self.window, shape, dst=out, interpolation=cv2.INTER_LINEAR)
        resized = cv2.resize(self.window, shape, interpolation=cv2.INTER_LINEAR)
        return cv2.flip(resized, 1, dst=out)

    def tensor(self) -> torch.Tensor:
        """The finished sample as a uint8 ``(3, S, S)`` view of an HWC array."""
        return torch.from_numpy(self.finish()).permute(2, 0, 1)


def crop_resize(
    img: torch.Tensor, box: CropBox, size: int, flip: bool, antialias: bool = True
) -> torch.Tensor:
    """Crop ``box`` out of a ``(C, H, W)`` uint8 tensor, resize to ``size`` square (bilinear).

    ``antialias``: torch's antialiased bilinear kernel (torchvision's ``resized_crop``),
    contiguous ``(C, S, S)`` out. Without it, an image held in HWC memory (what
    :func:`decode_rgb` returns) is resized by OpenCV's ``INTER_LINEAR`` — the same sample
    positions as torch's bilinear, within one level (fixed-point rounding), 3x cheaper
    (190 vs 560 us for a ~400-px crop, ``docs/LOADERS.md``) — and comes out as a ``(C, S, S)``
    view of an HWC array, as the workers hand it on (:class:`~recordkit.loaders.torch_loader.
    TorchLoader` collates HWC samples into an NHWC batch).
    """
    pending = _pending_crop(img, box, size, flip, antialias)
    if pending is not None:
        return pending.tensor()
    out = TF.resized_crop(
        img, box.top, box.left, box.height, box.width, [size, size], antialias=antialias
    )
    return out.flip(-1) if flip else out


def _pending_crop(
    img: torch.Tensor, box: CropBox, size: int, flip: bool, antialias: bool
) -> PendingCrop | None:
    """:func:`crop_resize`'s OpenCV case as a :class:`PendingCrop`; ``None`` for the others
    (antialiased, not uint8 RGB in HWC memory)."""
    hwc = img.permute(1, 2, 0)
    if antialias or img.dtype != torch.uint8 or hwc.stride(-1) != 1 or img.shape[0] != 3:
        return None
    crop = hwc.numpy()[box.top : box.top + box.height, box.left : box.left + box.width]
    return PendingCrop(crop, size, flip)


def val_transform_tensor(img: torch.Tensor, image_size: int, augment: Augment) -> torch.Tensor:
    """Resize the shorter side to ``image_size / val_resize_ratio``, then centre-crop."""
    img = TF.resize(img, [val_resize_size(image_size, augment.val_resize_ratio)], antialias=True)
    h, w = img.shape[-2:]
    box = center_crop_box(w, h, image_size)
    if box.left < 0 or box.top < 0:  # resize gives shorter side >= image_size; defensive
        return TF.center_crop(img, [image_size, image_size])
    return img[..., box.top : box.top + image_size, box.left : box.left + image_size]


def pad_crop(img: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Shift a ``(C, H, W)`` image by ``(dx, dy)`` with zeros coming in: output pixel
    ``(y, x)`` is ``img[:, y + dy, x + dx]``, 0 outside the image.

    The same as zero-padding by ``p >= max(|dx|, |dy|)`` on every side and cropping ``H x W``
    at ``(p + dy, p + dx)`` (torchvision's ``RandomCrop(size, padding=p)``), without building
    the padded image. Returns a new contiguous tensor.
    """
    _, h, w = img.shape
    out = torch.zeros(img.shape, dtype=img.dtype)
    y0, y1 = max(0, -dy), min(h, h - dy)
    x0, x1 = max(0, -dx), min(w, w - dx)
    if y0 < y1 and x0 < x1:
        out[:, y0:y1, x0:x1] = img[:, y0 + dy : y1 + dy, x0 + dx : x1 + dx]
    return out


AUTO_AUGMENT_FILL = 128
"""Fill value for pixels that a geometric auto-augment operation uncovers (DALI's default)."""


def auto_augment_transform(augment: Augment) -> Any:
    """The torchvision v2 transform for ``augment.auto_augment`` (None when off).

    ``autoaugment``: ``AutoAugment(IMAGENET)``; ``randaugment``: ``RandAugment(ra_n, ra_m)``;
    ``trivialaugment``: ``TrivialAugmentWide()``; all with fill :data:`AUTO_AUGMENT_FILL`,
    on uint8 ``(3, S, S)`` tensors.
    """
    from torchvision.transforms import v2

    kind, fill = augment.auto_augment, AUTO_AUGMENT_FILL
    if kind is None:
        return None
    if kind == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, fill=fill)
    if kind == "randaugment":
        return v2.RandAugment(num_ops=augment.ra_n, magnitude=augment.ra_m, fill=fill)
    return v2.TrivialAugmentWide(fill=fill)


def _apply_auto_augment(transform: Any, img: torch.Tensor, seed: int | None) -> torch.Tensor:
    """``transform(img)`` with torch's CPU RNG seeded from ``seed`` (its state restored
    afterwards), so the sample is reproducible; with no seed, from the process's RNG.

    On the default generator directly: ``torch.manual_seed`` / ``fork_rng`` also visit every
    accelerator backend and cost ~1 ms a call here, as much as the policy on a 32-px image;
    this costs ~60 us."""
    img = img.contiguous()
    if seed is None:
        return transform(img)
    gen = torch.default_generator
    state = gen.get_state()
    try:
        gen.manual_seed((seed ^ 0x5EED) & 0xFFFF_FFFF_FFFF_FFFF)
        return transform(img)
    finally:
        gen.set_state(state)


@dataclass(frozen=True)
class TrainDecode:
    """Record -> uint8 ``(3, S, S)`` tensor: random resized crop + flip (training).

    ``roi_decode``: decode only the crop's window when nvImageCodec is installed and the JPEG
    qualifies (:mod:`recordkit.loaders.roi_decode`; identical pixels, ~25 % less decode time);
    False always decodes the whole image with OpenCV.

    ``pending``: return a window-decoded plain-bilinear crop (``Augment(train_antialias=
    False)``, no auto-augment, at most :data:`PENDING_MAX_BYTES`) as a :class:`PendingCrop`,
    resized later straight into the batch by the loader's collate (the same pixels); other
    samples are tensors as usual.
    """

    image_size: int
    augment: Augment = Augment()
    roi_decode: bool = True
    pending: bool = False

    def __call__(self, record: Record, seed: int | None = None) -> torch.Tensor | PendingCrop:
        defer = self.pending and self.augment.auto_augment is None
        img = self._crop(record, seed, defer)
        if isinstance(img, PendingCrop):
            return img
        if self.augment.auto_augment is not None:
            transform = _AUTO_AUGMENT.get(self.augment)
            if transform is None:
                transform = _AUTO_AUGMENT[self.augment] = auto_augment_transform(self.augment)
            img = _apply_auto_augment(transform, img, seed)
        return img

    def _crop(
        self, record: Record, seed: int | None, defer: bool = False
    ) -> torch.Tensor | PendingCrop:
        """The training crop (mode ``rrc``, ``pad-crop`` or ``none``), flipped or not; with
        ``defer``, a window-decoded plain-bilinear crop of at most :data:`PENDING_MAX_BYTES`
        as a :class:`PendingCrop` (a whole decoded image is never held for the collate)."""
        rng = _rng(seed)
        aug = self.augment
        if aug.mode != "rrc":
            img = val_transform_tensor(decode_rgb(record), self.image_size, aug)
            if aug.mode == "none":
                return img
            dx, dy = pad_crop_offsets(aug.pad, rng)
            out = pad_crop(img, dx, dy)
            return out.flip(-1) if rng.random() < aug.flip else out
        header = window_header(record.image) if self.roi_decode else None
        if header is not None:  # decode only the crop's window (the same pixels, less work)
            box = random_resized_crop_box(header.width, header.height, aug.scale, aug.ratio, rng)
            flip = rng.random() < aug.flip
            window = decode_window(record.image, box)
            if window is not None:
                if defer and not aug.train_antialias and window.nbytes <= PENDING_MAX_BYTES:
                    return PendingCrop(window, self.image_size, flip)  # = _pending_crop's
                img = torch.from_numpy(window).permute(2, 0, 1)
                whole = CropBox(0, 0, box.width, box.height)
                return crop_resize(img, whole, self.image_size, flip, aug.train_antialias)
            rng = _rng(seed)  # the OpenCV path below draws the same crop again
        img = decode_rgb(record)
        h, w = img.shape[-2:]
        box = random_resized_crop_box(w, h, aug.scale, aug.ratio, rng)
        flip = rng.random() < aug.flip
        return crop_resize(img, box, self.image_size, flip, aug.train_antialias)


_AUTO_AUGMENT: dict[Augment, Any] = {}  # one transform per settings, per process


@dataclass(frozen=True)
class ValDecode:
    """Record -> uint8 ``(3, S, S)`` tensor: shorter side resize + centre crop (validation)."""

    image_size: int
    augment: Augment = Augment()

    def __call__(self, record: Record, seed: int | None = None) -> torch.Tensor:
        return val_transform_tensor(decode_rgb(record), self.image_size, self.augment)


@dataclass
class EncodedSample:
    """What a worker hands the main process when decoding happens there (``gpu_decode``).

    JPEGs that nvJPEG can decode (:func:`~recordkit.loaders.nvjpeg.nvjpeg_refusal`) travel
    encoded with their crop decided; all other images are decoded and transformed on the CPU in
    the worker and travel as ``pixels``.

    Attributes:
        data: The encoded JPEG, or ``None`` when the sample was decoded in the worker.
        box: Training crop in the stored image's coordinates (from the JPEG header's size), or
            ``None`` for the validation transform.
        flip: Mirror after resizing.
        pixels: The finished uint8 ``(3, S, S)`` sample when ``data`` is ``None``.
        name: The record's filename (for the warning when the GPU decode fails).
    """

    data: bytes | None
    box: CropBox | None
    flip: bool
    pixels: torch.Tensor | None = None
    name: str = ""


@dataclass(frozen=True)
class EncodedDecode:
    """Record -> :class:`EncodedSample` (training or validation geometry) for batch decoding.

    Reads the JPEG header (never the pixels) to route the image: to nvJPEG with the crop chosen
    from the header's size, or, for CMYK/YCCK, unusual subsampling, 12-bit, lossless/arithmetic/
    hierarchical, EXIF-rotated, truncated, non-JPEG or unreadable data, decoded here exactly as
    :class:`TrainDecode` / :class:`ValDecode` do (same seed, same crop). Training samples of
    modes other than ``rrc`` or with an ``auto_augment`` policy are always decoded here (the
    batched GPU path does random-resized-crop + flip only).
    """

    image_size: int
    augment: Augment = Augment()
    train: bool = True

    def __call__(self, record: Record, seed: int | None = None) -> EncodedSample:
        name = record.filename or f"record {record.index}"
        header = jpeg_header(record.image)
        why = nvjpeg_refusal(header)
        aug = self.augment
        if self.train and (aug.mode != "rrc" or aug.auto_augment is not None):
            why = why or f"training mode {aug.mode}, auto-augment {aug.auto_augment}"
        if why is not None or header is None:
            log.debug("%s: decoded on the CPU (%s)", name, why)
            make = TrainDecode if self.train else ValDecode
            pixels = make(self.image_size, self.augment)(record, seed)
            return EncodedSample(None, None, False, pixels, name)
        if not self.train:
            return EncodedSample(record.image, None, False, None, name)
        rng = _rng(seed)  # the same draws, in the same order, as TrainDecode
        box = random_resized_crop_box(
            header.width, header.height, self.augment.scale, self.augment.ratio, rng
        )
        return EncodedSample(record.image, box, rng.random() < self.augment.flip, None, name)
