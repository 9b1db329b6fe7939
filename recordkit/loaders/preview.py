"""Contact sheets: a grid of loader output (optionally augmented) with class names, via Pillow."""

from __future__ import annotations

import math
import os

from PIL import Image, ImageDraw, ImageFont

from recordkit.dataset import Dataset, open_dataset
from recordkit.loaders.augment import Augment

__all__ = ["contact_sheet"]

LABEL_HEIGHT = 14


def contact_sheet(
    path: str | os.PathLike[str] | Dataset,
    split: str = "train",
    *,
    n: int = 16,
    cols: int = 4,
    augment: bool = False,
    image_size: int = 160,
    backend: str = "torch",
    seed: int = 0,
    settings: Augment | None = None,
) -> Image.Image:
    """Render the first ``n`` samples of a split as a labelled RGB grid.

    Samples go through :func:`~recordkit.loaders.make_loader` (training augmentation when
    ``augment``, else the validation resize + centre crop), are un-normalized back to 8-bit and
    pasted ``cols`` per row with the class name (and label number) written under each.

    Args:
        path: Shard directory or opened dataset.
        split: Split name.
        n: Number of samples (fewer if the split is smaller).
        cols: Images per row.
        augment: Show training augmentation (random crop + flip) instead of the val transform.
        image_size: Side of each tile in pixels.
        backend: Loader backend (``"torch"``, ``"dali"``, ``"auto"``).
        seed: Augmentation seed.
        settings: Augmentation settings (default :class:`Augment()`).

    Returns:
        The grid as a ``PIL.Image`` in RGB mode.

    Raises:
        ValueError: ``n`` or ``cols`` below 1, or an empty split.
    """
    import torch

    from recordkit.loaders.factory import make_loader

    if n < 1 or cols < 1:
        raise ValueError(f"n and cols must be >= 1, got n={n}, cols={cols}")
    ds = path if isinstance(path, Dataset) else open_dataset(path)
    settings = settings or Augment()
    count = min(n, len(ds[split]))
    if count == 0:
        raise ValueError(f"split {split!r} is empty")
    remote = None
    if ds[split].remote and backend == "torch":  # a few records: range reads, no cache
        from recordkit.loaders.streaming import RemoteOptions

        remote = RemoteOptions(read="direct")
    loader = make_loader(
        ds,
        split,
        remote=remote,
        batch_size=count,
        image_size=image_size,
        backend=backend,
        train=augment,
        shuffle=False,
        drop_last=False,
        augment=settings,
        num_workers=0 if backend == "torch" else 1,
        seed=seed,
        rank=0,
        world_size=1,
        multi_label=True,
    )
    images, labels = next(iter(loader))
    mean = torch.tensor(settings.mean255).view(1, 3, 1, 1)
    std = torch.tensor(settings.std255).view(1, 3, 1, 1)
    pixels = (images.float().cpu() * std + mean).round().clamp(0, 255).to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).contiguous().numpy()

    cols = min(cols, count)
    rows = math.ceil(count / cols)
    cell_h = image_size + LABEL_HEIGHT
    sheet = Image.new("RGB", (cols * image_size, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    classes = ds.classes
    for k in range(count):
        x, y = (k % cols) * image_size, (k // cols) * cell_h
        sheet.paste(Image.fromarray(pixels[k]), (x, y))
        names = [
            f"{classes[i]} ({i})" if 0 <= i < len(classes) else str(i)
            for i in labels[k].tolist()
            if i >= 0
        ]
        full = text = ", ".join(names)
        cut = len(full)
        while cut > 0 and draw.textlength(text, font=font) > image_size - 4:
            cut -= 1
            text = full[:cut] + "..."
        draw.text((x + 2, y + image_size + 1), text, fill=(0, 0, 0), font=font)
    return sheet
