"""How close the GPU-decode path's batched resize comes to the worker path's, as JSON.

The batched geometry (:func:`recordkit.loaders.crops.crop_resize_batch`: roi_align, box average
over each output pixel's footprint) and the per-sample worker path (torchvision's antialiased
bilinear resize: a triangle filter) are run on the same generated images and crops; per kind
(``photo``: smooth gradients, hard edges, noise sigma 6; ``noise``: uniform noise, the worst
case) and transform (training crops / validation) it prints the mean and minimum PSNR and the
mean absolute difference in levels of the rounded outputs. Runs on CPU (float32 roi_align).

    python tools/crop_filter_agreement.py --size 224 --images 24
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import imagegen  # noqa: E402

from recordkit.loaders.augment import (  # noqa: E402
    Augment,
    random_resized_crop_box,
    val_crop_region,
)
from recordkit.loaders.crops import crop_resize_batch  # noqa: E402
from recordkit.loaders.decode import crop_resize, val_transform_tensor  # noqa: E402


def photo(h: int, w: int, seed: int) -> torch.Tensor:
    """tests/imagegen.photo_array with checker cells sized for 224-px crops, ``(3, h, w)``."""
    arr = imagegen.photo_array(h, w, seed, checker=(97, 89))
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def noise(h: int, w: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, h, w), np.uint8))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def measure(kind: str, train: bool, size: int, images: int, lo: int, hi: int) -> dict:
    make = photo if kind == "photo" else noise
    aug = Augment()
    rng = random.Random(0)
    imgs, regions, flips, ref = [], [], [], []
    for k in range(images):
        h, w = rng.randint(lo, hi), rng.randint(lo, hi)
        img = make(h, w, k)
        if train:
            box = random_resized_crop_box(w, h, aug.scale, aug.ratio, rng)
            flip = rng.random() < aug.flip
            ref.append(crop_resize(img, box, size, flip, True))
            regions.append((box.left, box.top, box.left + box.width, box.top + box.height))
        else:
            flip = False
            ref.append(val_transform_tensor(img, size, aug))
            regions.append(val_crop_region(w, h, size, aug.val_resize_ratio))
        imgs.append(img)
        flips.append(flip)
    out = torch.empty(images, 3, size, size)
    crop_resize_batch(imgs, regions, flips, out, range(images), crop_first=train)
    got = out.round().numpy()
    want = torch.stack(ref).numpy()
    scores = [psnr(a, b) for a, b in zip(got, want, strict=True)]
    return {
        "kind": kind,
        "transform": "train" if train else "val",
        "psnr_mean_db": round(float(np.mean(scores)), 1),
        "psnr_min_db": round(float(np.min(scores)), 1),
        "mean_abs_diff": round(float(np.abs(got - want.astype(np.float64)).mean()), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=224, help="output side")
    ap.add_argument("--images", type=int, default=24, help="images per kind and transform")
    ap.add_argument("--min-side", type=int, default=300)
    ap.add_argument("--max-side", type=int, default=520)
    args = ap.parse_args()
    rows = [
        measure(kind, train, args.size, args.images, args.min_side, args.max_side)
        for kind in ("photo", "noise")
        for train in (True, False)
    ]
    print(json.dumps({"size": args.size, "images": args.images, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
