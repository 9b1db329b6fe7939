"""The batched crop + resize + flip of the GPU-decode path (``recordkit/loaders/crops.py``), on CPU.

roi_align runs on CPU in float32, so every property is checked here: flat colours stay exact at
padded edges, flips are exact mirrors, upscaling matches torchvision's bilinear, downscaling
agrees with the worker path within the measured filter difference, and roi_align runs once per
chunk.
"""

from __future__ import annotations

import random
from typing import Any

import imagegen
import numpy as np
import pytest
import torch

import recordkit.loaders.crops as crops
from recordkit.loaders.augment import Augment, CropBox, random_resized_crop_box, val_crop_region
from recordkit.loaders.decode import crop_resize, val_transform_tensor

AUG = Augment()


def _photo(h: int, w: int, seed: int) -> torch.Tensor:
    """Photo-like uint8 ``(3, h, w)`` (:func:`imagegen.photo_array`)."""
    return torch.from_numpy(imagegen.photo_array(h, w, seed)).permute(2, 0, 1).contiguous()


def _noise(h: int, w: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, h, w), np.uint8))


def _region(box: CropBox) -> tuple[float, float, float, float]:
    return (box.left, box.top, box.left + box.width, box.top + box.height)


def test_flat_colours_stay_exact_at_right_and_bottom_edges() -> None:
    """Crops touching an image's right/bottom edge, in a chunk padded to a bigger image, must
    not blend in the padding: the output stays exactly the image's colour."""
    sizes = [(10, 13), (37, 21), (5, 40), (64, 64), (23, 9)]
    images = [
        torch.full((3, h, w), 50 + 40 * k, dtype=torch.uint8) for k, (h, w) in enumerate(sizes)
    ]
    regions = [
        (3, 2, 13, 10),  # upscale, touches right and bottom
        (4.5, 20.2, 21, 37),  # fractional start, touches both
        (0, 0, 40, 5),  # whole image, 2.5x down / 3.2x up
        (17, 29, 64, 64),  # fills the canvas edge itself
        (0, 11.5, 9, 23),  # narrow, touches right and bottom
    ]
    out = torch.full((5, 3, 16, 16), -1.0)
    n = crops.crop_resize_batch(images, regions, [k % 2 == 0 for k in range(5)], out, range(5))
    assert n == 1
    for k in range(5):  # exact up to float32 rounding of the bilinear weights
        assert (out[k] - (50 + 40 * k)).abs().max() < 1e-4, (k, out[k].unique())


def test_flip_is_an_exact_mirror() -> None:
    img = _noise(30, 41, 0)
    out = torch.empty(2, 3, 16, 16)
    crops.crop_resize_batch([img, img], [(3, 4, 40, 29)] * 2, [False, True], out, [0, 1])
    assert torch.equal(out[1], out[0].flip(-1))


@pytest.mark.parametrize("train", [True, False])
def test_upscaling_matches_torchvision_bilinear(train: bool) -> None:
    """Where no filter is involved (upscaling) the batched geometry is torchvision's, sample
    positions included: noise would expose any half-pixel shift."""
    rng = random.Random(1)
    images = [_noise(rng.randint(9, 14), rng.randint(9, 14), k) for k in range(6)]
    regions, ref = [], []
    for img in images:
        h, w = img.shape[-2:]
        if train:
            box = random_resized_crop_box(w, h, AUG.scale, AUG.ratio, rng)
            regions.append(_region(box))
            ref.append(crop_resize(img, box, 24, False))
        else:
            regions.append(val_crop_region(w, h, 24, AUG.val_resize_ratio))
            ref.append(val_transform_tensor(img, 24, AUG))
    out = torch.empty(6, 3, 24, 24)
    crops.crop_resize_batch(images, regions, [False] * 6, out, range(6), crop_first=train)
    # torchvision rounds to uint8 (validation: after the resize, before the crop) with
    # fixed-point weights; a misplaced sample would be off by tens of levels on noise.
    assert (out - torch.stack(ref).float()).abs().max() < 1.01


@pytest.mark.parametrize("kind", ["photo", "noise"])
@pytest.mark.parametrize("train", [True, False])
def test_agrees_with_the_worker_path(kind: str, train: bool) -> None:
    """Box average (roi_align, adaptive sampling) vs torchvision's antialiased triangle filter.

    Measured here (70-130 px images, 32-px output, 12 samples, output rounded): photo-like
    mean PSNR 45.6 / 44.1 dB (train / val), mean |diff| 0.86 / 0.98 levels; uniform noise, the
    worst case (all its energy near the sampling limit, where the filters differ most),
    30.1 / 29.2 dB, 6.4 / 7.1 levels. At 224 px on 300-520 px images (24 samples each):
    photo-like 52.6 / 50.9 dB (0.33 / 0.43 levels), noise 40.8 / 33.4 dB (2.8 / 4.5 levels).
    """
    make = _photo if kind == "photo" else _noise
    rng = random.Random(2)
    images, regions, flips, ref = [], [], [], []
    for k in range(12):
        img = make(rng.randint(70, 130), rng.randint(70, 130), k)
        h, w = img.shape[-2:]
        if train:
            box = random_resized_crop_box(w, h, AUG.scale, AUG.ratio, rng)
            flip = rng.random() < 0.5
            regions.append(_region(box))
            ref.append(crop_resize(img, box, 32, flip))
        else:
            flip = False
            regions.append(val_crop_region(w, h, 32, AUG.val_resize_ratio))
            ref.append(val_transform_tensor(img, 32, AUG))
        images.append(img)
        flips.append(flip)
    out = torch.empty(12, 3, 32, 32)
    crops.crop_resize_batch(images, regions, flips, out, range(12), crop_first=train)
    got = out.round().numpy()
    want = torch.stack(ref).numpy()
    mean_psnr = np.mean([imagegen.psnr(a, b) for a, b in zip(got, want, strict=True)])
    assert mean_psnr > (42 if kind == "photo" else 27), mean_psnr
    assert np.abs(got - want).mean() < (1.3 if kind == "photo" else 8.5)


def test_roi_align_runs_once_per_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = crops.roi_align

    def counting(canvas: torch.Tensor, rois: torch.Tensor, **kw: Any) -> torch.Tensor:
        calls.append(canvas.shape[0])
        return real(canvas, rois, **kw)

    monkeypatch.setattr(crops, "roi_align", counting)
    images = [_noise(20 + k % 5, 30, k) for k in range(10)]
    regions = [(0, 0, 30, 20)] * 10
    out = torch.empty(10, 3, 8, 8)
    n = crops.crop_resize_batch(images, regions, [False] * 10, out, range(10), max_images=4)
    assert n == 3 and calls == [4, 4, 2]
    calls.clear()  # a pixel budget of 3 canvases of 24 x 30 -> chunks of 3
    n = crops.crop_resize_batch(
        images, regions, [False] * 10, out, range(10), max_pixels=3 * 24 * 30
    )
    assert n == 4 and sum(calls) == 10 and max(calls) == 3
    calls.clear()  # a source budget of two 3 x 20-24 x 30 images -> chunks of 2
    n = crops.crop_resize_batch(images, regions, [False] * 10, out, range(10), max_source=4400)
    assert n == 5 and calls == [2] * 5
    calls.clear()
    big = [_noise(40, 40, 0)] + images[:3]  # an image over the budget gets a chunk of its own
    whole = [(0, 0, im.shape[2], im.shape[1]) for im in big]
    crops.crop_resize_batch(big, whole, [False] * 4, out, range(4), max_pixels=900)
    assert sorted(calls) == [1, 1, 1, 1]


def test_results_land_at_their_index_and_boxes_are_clamped() -> None:
    images = [torch.full((3, 10, 12), v, dtype=torch.uint8) for v in (10, 20, 30)]
    out = torch.zeros(5, 3, 4, 4)
    regions = [(-5, -5, 50, 50), (3, 3, 3, 3), (11.5, 9.5, 20, 20)]  # outside, empty, corner
    crops.crop_resize_batch(images, regions, [False] * 3, out, [4, 0, 2])
    assert [out[i].unique().tolist() for i in range(5)] == [[20.0], [0.0], [30.0], [0.0], [10.0]]


def test_val_crop_region_is_resize_then_centre_crop() -> None:
    for w, h in [(64, 48), (48, 64), (500, 375), (17, 300), (224, 224)]:
        x0, y0, x1, y1 = val_crop_region(w, h, 224, 0.875)
        short = 256
        new_w, new_h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        assert x1 - x0 == pytest.approx(224 * w / new_w)
        assert y1 - y0 == pytest.approx(224 * h / new_h)
        assert x0 == pytest.approx(round((new_w - 224) / 2) * w / new_w)
        assert y0 == pytest.approx(round((new_h - 224) / 2) * h / new_h)
        assert 0 <= x0 < x1 <= w + 1e-9 and 0 <= y0 < y1 <= h + 1e-9
