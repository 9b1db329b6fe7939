"""Augmentation settings shared by the DALI and torch backends, and the crop geometry.

Everything here is plain Python (no torch, no DALI) so that both backends, the tests and the
``show`` command agree on one definition of "the ImageNet training / validation transform":

- training, ``mode="rrc"`` (the default): a random crop covering ``scale`` of the image area
  with aspect ratio in ``ratio`` (torchvision's ``RandomResizedCrop`` algorithm, 10 attempts
  then a centre fallback), resized to ``image_size`` x ``image_size``, mirrored with
  probability ``flip``;
- training, ``mode="pad-crop"`` (CIFAR style, for small images): the validation transform,
  then ``pad`` zero pixels on every side and a random ``image_size`` crop of that (an offset of
  ``-pad .. pad`` pixels on each axis, :func:`pad_crop_offsets`), mirrored with probability
  ``flip``;
- training, ``mode="none"``: the validation transform, no mirror;
- then, on training crops, an optional ``auto_augment`` policy (``autoaugment``,
  ``randaugment`` with ``ra_n`` operations at magnitude ``ra_m``, ``trivialaugment``) on the
  uint8 ``image_size`` crop: torchvision v2 on the torch backend, ``nvidia.dali.auto_aug`` on
  DALI;
- validation: resize the shorter side to ``int(image_size / val_resize_ratio)`` (256 for 224),
  then a centre ``image_size`` x ``image_size`` crop;
- both: ``(pixel / 255 - mean) / std`` per channel, done on the target device.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Augment",
    "AUTO_AUGMENTS",
    "MODES",
    "CropBox",
    "center_crop_box",
    "pad_crop_offsets",
    "random_resized_crop_box",
    "val_crop_region",
    "val_resize_size",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

MODES = ("rrc", "pad-crop", "none")
"""Training crop modes: random-resized-crop, pad + random crop (CIFAR), none."""
AUTO_AUGMENTS = ("autoaugment", "randaugment", "trivialaugment")
"""Automatic augmentation policies (torchvision v2 / ``nvidia.dali.auto_aug``)."""


@dataclass(frozen=True)
class Augment:
    """The train/val image transform, as data (one object instead of a dozen loader flags).

    Attributes:
        scale: Range of the crop's area as a fraction of the image area (training).
        ratio: Range of the crop's aspect ratio, width / height (training; sampled log-uniform).
        flip: Probability of a horizontal mirror (training); 0 disables it.
        mean: Per-channel mean in 0-1 scale (RGB), subtracted after scaling pixels to 0-1.
        std: Per-channel standard deviation in 0-1 scale (RGB).
        val_resize_ratio: Validation resizes the shorter side to ``image_size / val_resize_ratio``
            before the centre crop (0.875: 256 -> 224, the ResNet convention).
        train_antialias: Antialias the training crop's resize (torchvision's default, and what
            DALI's ResNet-50 example gets from ``INTERP_TRIANGULAR``). False: plain bilinear,
            faster on DALI's CPU pipeline (docs/BENCHMARKS.md), slightly aliased.
        mode: Training crop: ``"rrc"`` (random resized crop with ``scale`` / ``ratio``),
            ``"pad-crop"`` (validation transform, then zero-pad by ``pad`` and take a random
            ``image_size`` crop), ``"none"`` (the validation transform, no flip).
        pad: ``pad-crop``: pixels of zero padding on each side (the largest shift).
        auto_augment: None, ``"autoaugment"`` (the ImageNet policy), ``"randaugment"`` or
            ``"trivialaugment"`` (TrivialAugment-Wide), applied to training crops.
        ra_n: RandAugment: operations per image.
        ra_m: RandAugment: magnitude, 0-30 (torchvision's ``num_magnitude_bins=31`` scale).
    """

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    val_resize_ratio: float = 0.875
    train_antialias: bool = True
    mode: str = "rrc"
    pad: int = 4
    auto_augment: str | None = None
    ra_n: int = 2
    ra_m: int = 9

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        lo, hi = self.ratio
        if not 0 < lo <= hi:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {self.ratio}")
        if not 0 <= self.flip <= 1:
            raise ValueError(f"flip is a probability, got {self.flip}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values each, std > 0")
        if not 0 < self.val_resize_ratio <= 1:
            raise ValueError(f"val_resize_ratio must be in (0, 1], got {self.val_resize_ratio}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.pad < 0:
            raise ValueError(f"pad must be >= 0, got {self.pad}")
        if self.auto_augment is not None and self.auto_augment not in AUTO_AUGMENTS:
            raise ValueError(
                f"auto_augment must be one of {', '.join(AUTO_AUGMENTS)} or None, "
                f"got {self.auto_augment!r}"
            )
        if self.ra_n < 0 or not 0 <= self.ra_m <= 30:
            raise ValueError(
                f"RandAugment needs ra_n >= 0 and 0 <= ra_m <= 30 ({self.ra_n}, {self.ra_m})"
            )

    @property
    def train_flip(self) -> float:
        """The mirror probability training uses: ``flip``, 0 in mode ``none``."""
        return 0.0 if self.mode == "none" else self.flip

    @property
    def mean255(self) -> tuple[float, float, float]:
        """``mean`` in 0-255 pixel scale (what DALI's ``crop_mirror_normalize`` takes)."""
        return tuple(255.0 * m for m in self.mean)  # type: ignore[return-value]

    @property
    def std255(self) -> tuple[float, float, float]:
        """``std`` in 0-255 pixel scale."""
        return tuple(255.0 * s for s in self.std)  # type: ignore[return-value]


@dataclass(frozen=True)
class CropBox:
    """A crop in the original image's pixel coordinates: top-left corner and size."""

    left: int
    top: int
    width: int
    height: int


def random_resized_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: random.Random,
) -> CropBox:
    """Sample a crop as torchvision's ``RandomResizedCrop.get_params`` does.

    Up to 10 attempts at an area in ``scale`` x image area and a log-uniform aspect ratio in
    ``ratio``; if none fits, the largest centred crop whose ratio is clamped into ``ratio``.

    Args:
        width: Image width in pixels.
        height: Image height in pixels.
        scale: Area fraction range.
        ratio: Aspect ratio (w / h) range.
        rng: The random source (one per sample for reproducibility).

    Returns:
        The crop box, inside the image.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return CropBox(left, top, w, h)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    w, h = max(1, min(w, width)), max(1, min(h, height))
    return CropBox((width - w) // 2, (height - h) // 2, w, h)


def pad_crop_offsets(pad: int, rng: random.Random) -> tuple[int, int]:
    """The ``(dx, dy)`` shift of a pad-crop: each uniform in ``-pad .. pad``.

    Output pixel ``(y, x)`` is input pixel ``(y + dy, x + dx)``, zero where that falls outside
    (torchvision's ``RandomCrop(size, padding=pad)``: a crop at ``(pad + dy, pad + dx)`` of the
    padded image). Drawn x first, then y.
    """
    dx = rng.randint(-pad, pad)
    dy = rng.randint(-pad, pad)
    return dx, dy


def val_resize_size(image_size: int, val_resize_ratio: float) -> int:
    """The shorter-side size validation resizes to: ``int(image_size / val_resize_ratio)``."""
    return max(image_size, int(image_size / val_resize_ratio))


def center_crop_box(width: int, height: int, size: int) -> CropBox:
    """The centred ``size`` x ``size`` box, as torchvision's ``center_crop`` places it."""
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return CropBox(left, top, size, size)


def val_crop_region(
    width: int, height: int, image_size: int, val_resize_ratio: float
) -> tuple[float, float, float, float]:
    """The validation crop as a region of the original image, for a one-step crop + resize.

    Resizing the shorter side to :func:`val_resize_size` (the longer side as torchvision
    computes it: ``int(size * long / short)``) and then taking :func:`center_crop_box` is the
    same as resizing this region, ``(x0, y0, x1, y1)`` in original pixel coordinates (pixel
    ``i`` spans ``[i, i + 1)``), to ``image_size`` x ``image_size``.

    Args:
        width: Original width in pixels.
        height: Original height in pixels.
        image_size: Output side.
        val_resize_ratio: As in :class:`Augment`.

    Returns:
        ``(x0, y0, x1, y1)`` as floats.
    """
    short = val_resize_size(image_size, val_resize_ratio)
    if width <= height:
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    box = center_crop_box(new_w, new_h, image_size)
    sx, sy = width / new_w, height / new_h
    return (
        box.left * sx,
        box.top * sy,
        (box.left + image_size) * sx,
        (box.top + image_size) * sy,
    )
