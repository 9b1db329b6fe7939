"""A small, learnable image dataset drawn on the fly, and the end-to-end data demo.

``python -m recordkit.demo [DIR]`` (what ``make demo`` runs) draws a folder of JPEGs — ten
classes of coloured shapes — and runs the data path a user runs on ImageNet:
``recordkit list`` → ``recordkit pack`` → ``recordkit verify`` → ``recordkit inspect`` →
``recordkit.open``. Nothing is downloaded.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

__all__ = ["SHAPES", "draw_shape", "make_shapes"]

SHAPES = (
    "circle",
    "square",
    "triangle",
    "diamond",
    "cross",
    "ring",
    "star",
    "hbar",
    "vbar",
    "hexagon",
)


def _polygon(cx: float, cy: float, r: float, n: int, phase: float) -> list[tuple[float, float]]:
    return [
        (
            cx + r * math.cos(phase + 2 * math.pi * k / n),
            cy + r * math.sin(phase + 2 * math.pi * k / n),
        )
        for k in range(n)
    ]


def draw_shape(shape: str, size: int, rng: random.Random):
    """Draw one ``shape`` on a noisy background and return it as a PIL RGB image.

    Position, scale, colour jitter and background vary with ``rng``; the class is the shape,
    and each shape has its own hue so that a small network learns the task in minutes.
    """
    from PIL import Image, ImageDraw

    k = SHAPES.index(shape)
    bg = tuple(rng.randrange(0, 90) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    for _ in range(6):  # clutter
        x, y = rng.randrange(size), rng.randrange(size)
        c = tuple(rng.randrange(0, 120) for _ in range(3))
        draw.line((x, y, x + rng.randrange(-20, 20), y + rng.randrange(-20, 20)), fill=c, width=2)
    hue = k / len(SHAPES)
    import colorsys

    rgb = colorsys.hsv_to_rgb(
        (hue + rng.uniform(-0.02, 0.02)) % 1.0, rng.uniform(0.7, 1.0), rng.uniform(0.8, 1.0)
    )
    fill = tuple(int(255 * v) for v in rgb)
    r = rng.uniform(0.22, 0.38) * size
    cx = rng.uniform(r, size - r)
    cy = rng.uniform(r, size - r)
    box = (cx - r, cy - r, cx + r, cy + r)
    phase = rng.uniform(0, 2 * math.pi)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, r * 1.2, 4, phase), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, r * 1.2, 3, phase), fill=fill)
    elif shape == "diamond":
        draw.polygon(
            [(cx, cy - r), (cx + r * 0.6, cy), (cx, cy + r), (cx - r * 0.6, cy)], fill=fill
        )
    elif shape == "cross":
        w = r * 0.35
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(r * 0.3)))
    elif shape == "star":
        pts = []
        for j in range(10):
            rr = r if j % 2 == 0 else r * 0.45
            a = phase + math.pi * j / 5
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        draw.polygon(pts, fill=fill)
    elif shape == "hbar":
        draw.rectangle((cx - r, cy - r * 0.3, cx + r, cy + r * 0.3), fill=fill)
    elif shape == "vbar":
        draw.rectangle((cx - r * 0.3, cy - r, cx + r * 0.3, cy + r), fill=fill)
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, phase), fill=fill)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(f"unknown shape {shape!r}")
    return img


def make_shapes(
    root: str | os.PathLike[str],
    *,
    per_class: int = 200,
    size: int = 96,
    seed: int = 0,
    quality: int = 90,
) -> list[Path]:
    """Write ``per_class`` JPEGs for each of the ten :data:`SHAPES` under ``root/<shape>/``.

    Deterministic for a given ``seed``. Existing files are overwritten.

    Args:
        root: Output folder (created).
        per_class: Images per class.
        size: Width and height in pixels.
        seed: Random seed.
        quality: JPEG quality.

    Returns:
        The files written, in class order.
    """
    rng = random.Random(seed)
    out: list[Path] = []
    for shape in SHAPES:
        d = Path(root) / shape
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            p = d / f"{shape}_{i:05d}.jpg"
            draw_shape(shape, size, rng).save(p, "JPEG", quality=quality)
            out.append(p)
    return out


def _run(*args: str) -> None:
    import shlex
    import subprocess
    import sys

    print(f"\n$ recordkit {shlex.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "recordkit", *args], check=True)


def main(argv: list[str] | None = None) -> int:
    """Draw the shapes image set and run list → pack → verify → inspect → recordkit.open."""
    import argparse
    import time

    ap = argparse.ArgumentParser(prog="python -m recordkit.demo", description=__doc__)
    ap.add_argument("dir", nargs="?", default="demo", help="work directory (default: demo)")
    ap.add_argument("--per-class", type=int, default=200, help="images per class (default 200)")
    ap.add_argument("--size", type=int, default=96, help="image size in pixels (default 96)")
    args = ap.parse_args(argv)
    work = Path(args.dir)
    images, prefix, shards = work / "images", work / "shapes", work / "shards"
    t0 = time.perf_counter()
    print(f"drawing {args.per_class} images of each of {len(SHAPES)} shapes under {images}/")
    make_shapes(images, per_class=args.per_class, size=args.size)
    _run("list", str(prefix), str(images), "--recursive", "--train-ratio", "0.9")
    _run(
        "pack", str(prefix), str(images), "--resize", "64", "--quality", "90",
        "--out", str(shards), "--overwrite",
    )  # fmt: skip
    _run("verify", str(shards))
    _run("inspect", str(shards), "--classes", "3")

    import recordkit

    print(f'\n>>> ds = recordkit.open("{shards}")')
    ds = recordkit.open(shards)
    val = ds["val"]
    rec = val[0]
    print(f">>> ds  → {ds!r}")
    print(
        f">>> ds['val'][0]  → label {rec.label} ({ds.classes[rec.label]}), "
        f"{rec.width}x{rec.height} {rec.format}, {len(rec.image)} bytes, from {rec.filename}"
    )
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f} s; everything is under {work}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
