"""A training-curve PNG from ``metrics.jsonl``, drawn with Pillow alone (no matplotlib).

Two panels side by side: training loss per epoch, and validation top-1 / top-5 (%) per epoch.
The engine calls :func:`plot_metrics` at the end of :func:`recordkit_train.engine.train` on
rank 0 and writes ``<out>/metrics.png``::

    from recordkit_train.plot import plot_metrics
    plot_metrics(Path("runs/r18/metrics.jsonl"), Path("runs/r18/metrics.png"))
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

__all__ = ["PANEL_SIZE", "plot_metrics", "read_metrics"]

logger = logging.getLogger(__name__)

PANEL_SIZE = (480, 360)
"""Width and height of one panel in pixels; the image is two panels wide."""

_MARGIN = (56, 36, 16, 40)  # left, top, right, bottom: room for tick labels and the title
_BG = (255, 255, 255)
_AXIS = (40, 40, 40)
_GRID = (225, 225, 225)
_COLOURS = {
    "train loss": (31, 119, 180),
    "val top-1": (214, 39, 40),
    "val top-5": (44, 160, 44),
}

Series = tuple[str, list[tuple[float, float]]]


def read_metrics(metrics_jsonl: Path) -> list[dict]:
    """The rows of a ``metrics.jsonl``, skipping blank or cut-short lines.

    Args:
        metrics_jsonl: The file the engine appends one JSON object per epoch to.

    Returns:
        The rows in file order.
    """
    rows = []
    for line in Path(metrics_jsonl).read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "epoch" in row:
            rows.append(row)
    return rows


def _points(rows: Sequence[dict], key: str) -> list[tuple[float, float]]:
    out = []
    for row in rows:
        value = row.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            out.append((float(row["epoch"]), float(value)))
    return out


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering ``[lo, hi]`` (steps of 1, 2 or 5 x 10^k)."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < hi:
        ticks.append(round(value, 10))
    return ticks


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e4 else f"{value:.2g}"


def _panel(
    draw: ImageDraw.ImageDraw,
    origin: tuple[int, int],
    title: str,
    series: Sequence[Series],
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    y_range: tuple[float, float] | None = None,
) -> None:
    ox, oy = origin
    width, height = PANEL_SIZE
    left, top = ox + _MARGIN[0], oy + _MARGIN[1]
    right, bottom = ox + width - _MARGIN[2], oy + height - _MARGIN[3]
    draw.text((left, oy + 8), title, fill=_AXIS, font=font)
    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts]
    if not xs:
        draw.rectangle((left, top, right, bottom), outline=_AXIS)
        draw.text((left + 8, top + 8), "no data", fill=_AXIS, font=font)
        return
    x_ticks = _nice_ticks(min(xs), max(max(xs), min(xs) + 1), 6)
    x_ticks = [t for t in x_ticks if float(t).is_integer()] or x_ticks
    if y_range is None:
        y_lo, y_hi = min(ys), max(ys)
        pad = (y_hi - y_lo) * 0.05 or max(abs(y_hi) * 0.05, 0.05)
        y_ticks = _nice_ticks(max(0.0, y_lo - pad) if y_lo >= 0 else y_lo - pad, y_hi + pad)
    else:
        y_ticks = _nice_ticks(*y_range)
    x0, x1 = x_ticks[0], x_ticks[-1]
    y0, y1 = y_ticks[0], y_ticks[-1]

    def to_px(x: float, y: float) -> tuple[float, float]:
        px = left + (x - x0) / (x1 - x0 or 1.0) * (right - left)
        py = bottom - (y - y0) / (y1 - y0 or 1.0) * (bottom - top)
        return px, py

    for t in y_ticks:
        _, py = to_px(x0, t)
        draw.line((left, py, right, py), fill=_GRID)
        draw.line((left - 4, py, left, py), fill=_AXIS)
        text = _label(t)
        tw = draw.textlength(text, font=font)
        draw.text((left - 6 - tw, py - 6), text, fill=_AXIS, font=font)
    for t in x_ticks:
        px, _ = to_px(t, y0)
        draw.line((px, bottom, px, bottom + 4), fill=_AXIS)
        text = _label(t)
        tw = draw.textlength(text, font=font)
        draw.text((px - tw / 2, bottom + 6), text, fill=_AXIS, font=font)
    draw.rectangle((left, top, right, bottom), outline=_AXIS)
    draw.text(((left + right) / 2 - 14, bottom + 22), "epoch", fill=_AXIS, font=font)
    legend_y = top + 6
    for name, pts in series:
        colour = _COLOURS.get(name, _AXIS)
        pixels = [to_px(x, y) for x, y in pts]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for px, py in pixels:
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colour)
        if pts:
            lx = right - 90
            draw.line((lx, legend_y + 6, lx + 16, legend_y + 6), fill=colour, width=2)
            draw.text((lx + 22, legend_y), name, fill=_AXIS, font=font)
            legend_y += 16


def plot_metrics(metrics_jsonl: Path, out_png: Path) -> Path:
    """Draw training loss and validation top-1 / top-5 per epoch as a two-panel PNG.

    The file is written next to ``out_png`` under a temporary name and renamed into place, so
    a reader never sees half a PNG.

    Args:
        metrics_jsonl: The engine's per-epoch metrics file.
        out_png: The PNG to write (its folder must exist).

    Returns:
        ``out_png``.

    Raises:
        OSError: The metrics cannot be read or the PNG cannot be written.
    """
    rows = read_metrics(Path(metrics_jsonl))
    out_png = Path(out_png)
    width, height = PANEL_SIZE
    image = Image.new("RGB", (2 * width, height), _BG)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    _panel(draw, (0, 0), "training loss", [("train loss", _points(rows, "train_loss"))], font)
    acc = [("val top-1", _points(rows, "val_top1")), ("val top-5", _points(rows, "val_top5"))]
    _panel(draw, (width, 0), "validation accuracy (%)", acc, font, y_range=(0.0, 100.0))
    fd, tmp = tempfile.mkstemp(prefix=f".{out_png.name}.", suffix=".tmp", dir=out_png.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, "PNG")
        os.replace(tmp, out_png)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.debug("wrote %s (%d epochs)", out_png, len(rows))
    return out_png
