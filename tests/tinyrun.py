"""Tiny trained models for the predict / export / fine-tuning tests (CPU, resnet18 at 32 px).

Each class is a flat colour (with a little per-image jitter), so one epoch of a few steps
already separates the classes somewhat and the checkpoints are real ``recordkit-train run``
outputs, ``classes`` and ``config`` included.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from recordkit import Record
from recordkit_train.config import TrainConfig
from recordkit_train.engine import train
from tests.conftest import write_shards

COLOURS = [(220, 30, 30), (30, 220, 30), (30, 30, 220), (220, 220, 30), (30, 220, 220)]


def colour_image(label: int, i: int, size: tuple[int, int] = (40, 32)) -> Image.Image:
    """Class ``label``'s colour, jittered by ``i``, with a dark bar so crops are not flat."""
    jitter = (i * 7) % 25
    colour = tuple(min(255, c + jitter) for c in COLOURS[label])
    img = Image.new("RGB", size, colour)
    img.paste((i * 5 % 60,) * 3, (0, 0, size[0] // 5, size[1]))
    return img


def encode(img: Image.Image, fmt: str) -> bytes:
    """``img`` as JPEG or PNG bytes."""
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def colour_record(i: int, num_classes: int) -> Record:
    """Record ``i``: label ``i % num_classes``, PNG every fourth record, else JPEG."""
    label = i % num_classes
    fmt = "PNG" if i % 4 == 0 else "JPEG"
    img = colour_image(label, i)
    return Record(
        image=encode(img, fmt),
        labels=(label,),
        filename=f"class{label}/{i:03d}.{fmt.lower()}",
        index=i,
        format=fmt.lower(),
        height=img.height,
        width=img.width,
        channels=3,
    )


def colour_shards(
    root: Path,
    classes: Sequence[str],
    n_train: int = 24,
    n_val: int = 7,
    records_per_shard: int = 8,
) -> Path:
    """A train/val shard directory of :func:`colour_record` images."""
    k = len(classes)
    splits = {
        "train": [colour_record(i, k) for i in range(n_train)],
        "val": [colour_record(i, k) for i in range(n_train, n_train + n_val)],
    }
    return write_shards(root, splits, records_per_shard=records_per_shard, classes=list(classes))


def tiny_config(data: Path, out: Path, **overrides: object) -> TrainConfig:
    """One epoch of resnet18 at 32 px, batch 8, fp32, torch loader without workers."""
    values: dict[str, object] = {
        "data": str(data),
        "out": str(out),
        "arch": "resnet18",
        "epochs": 1,
        "batch_size": 8,
        "image_size": 32,
        "small_input": False,  # the ImageNet stem: 16x less compute at 32 px
        "precision": "fp32",
        "lr": 0.05,
        "warmup_epochs": 0.0,
        "backend": "torch",
        "workers": 0,
        "print_freq": 100,
    }
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


def train_tiny(data: Path, out: Path, **overrides: object) -> Path:
    """Train :func:`tiny_config` on the CPU; returns ``out`` (``best.pt``, ``last.pt``)."""
    train(tiny_config(data, out, **overrides), device="cpu")
    return out
