"""Deciding the shards before writing: how many, which records go where, and a fingerprint.

The plan is a pure function of the lists, the options and the source files' sizes and headers,
so every run (any thread count, a resumed run, each ``--part`` machine) makes the same one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from recordkit.errors import RecordkitError
from recordkit.imaging import ImageOptions
from recordkit.listing import ListEntry
from recordkit.pack.lists import join_root
from recordkit.pack.options import PackOptions
from recordkit.safeio import open_regular

__all__ = [
    "ShardPlan",
    "SplitPlan",
    "estimate_output_bytes",
    "pack_params",
    "plan_split",
    "shard_name",
]

logger = logging.getLogger(__name__)

_SAMPLE = 64  # images whose headers are read to estimate the effect of --resize


def shard_name(split: str, i: int, n: int) -> str:
    """``{split}-{i:05d}-of-{n:05d}.tfrecord``."""
    return f"{split}-{i:05d}-of-{n:05d}.tfrecord"


@dataclass(frozen=True)
class ShardPlan:
    """One shard: its number, its file name and the slice of the split's entries it holds."""

    split: str
    number: int
    count: int
    start: int
    stop: int

    @property
    def file(self) -> str:
        return shard_name(self.split, self.number, self.count)


@dataclass(frozen=True)
class SplitPlan:
    """All shards of one split and the fingerprint that identifies this exact pack."""

    name: str
    entries: tuple[ListEntry, ...]
    labels: tuple[tuple[int, ...], ...]
    shards: tuple[ShardPlan, ...]
    params: dict[str, Any]
    fingerprint: str


def pack_params(opts: PackOptions) -> dict[str, Any]:
    """The options that determine shard bytes (not threads, paths or resume flags)."""
    image = asdict(opts.image)
    return {
        **image,
        "pack_label": opts.pack_label,
        "shard_size": opts.shard_size,
        "shard_bytes": None if opts.shard_size else opts.shard_bytes,
    }


def _stat_sizes(paths: Sequence[str]) -> list[int]:
    out = []
    for path in paths:
        try:
            out.append(os.stat(path).st_size)
        except OSError:
            out.append(0)
    return out


def _header_size(path: str) -> tuple[int, int] | None:
    from PIL import Image

    try:  # a FIFO or device in a list is never opened for reading (it would block or not end)
        with os.fdopen(open_regular(path, what="image"), "rb") as f, Image.open(f) as im:
            return im.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, RecordkitError):
        return None


def _estimated_out(src: int, size: tuple[int, int], image: ImageOptions) -> float:
    """Rough output bytes of one image, from its file size and pixel size."""
    if image.pass_through:
        return float(src)
    w, h = size
    scale = 1.0
    if image.resize > 0 and min(w, h) > 0:
        scale = image.resize / min(w, h)
        if not image.upscale:
            scale = min(scale, 1.0)
    pixels = w * h * scale * scale
    if image.encoding == ".png":
        return pixels * (1 if image.color == 0 else 3) * 0.5  # photos: ~2:1 lossless
    # JPEG re-encode: bytes scale with the pixel count (the quality change is ignored).
    return src * scale * scale


def estimate_output_bytes(paths: Sequence[str], image: ImageOptions, threads: int) -> int:
    """Estimate the encoded bytes of ``paths`` after processing: sum of source file sizes,
    scaled by the ratio observed on up to 64 evenly spaced images' headers."""
    with ThreadPoolExecutor(max(1, threads)) as pool:
        chunks = [paths[i : i + 4096] for i in range(0, len(paths), 4096)]
        sizes = [size for chunk in pool.map(_stat_sizes, chunks) for size in chunk]
        total = sum(sizes)
        if total == 0 or image.pass_through:
            return total
        n = len(paths)
        picks = sorted({(k * n) // min(n, _SAMPLE) for k in range(min(n, _SAMPLE))})
        headers = list(pool.map(_header_size, [paths[i] for i in picks]))
    src_sum = est_sum = 0.0
    for i, hdr in zip(picks, headers, strict=True):
        if hdr is None or sizes[i] == 0:
            continue
        src_sum += sizes[i]
        est_sum += _estimated_out(sizes[i], hdr, image)
    ratio = est_sum / src_sum if src_sum else 1.0
    return int(total * ratio)


def plan_split(
    name: str,
    entries: Sequence[ListEntry],
    labels: Sequence[tuple[int, ...]],
    root: str,
    classes: Sequence[str],
    opts: PackOptions,
) -> SplitPlan:
    """Cut a split into contiguous, near-equal shards (shard ``i`` holds entries
    ``[N*i//n, N*(i+1)//n)``), with ``n = ceil(N / shard_size)`` or, by bytes,
    ``ceil(estimated output bytes / shard_bytes)``."""
    n_entries = len(entries)
    if opts.shard_size:
        count = math.ceil(n_entries / opts.shard_size)
    else:
        paths = [join_root(root, e.path) for e in entries]
        est = estimate_output_bytes(paths, opts.image, opts.threads)
        count = max(1, math.ceil(est / opts.shard_bytes))
        logger.info("split %s: ~%d output bytes -> %d shard(s)", name, est, count)
    count = max(1, min(count, n_entries))
    shards = tuple(
        ShardPlan(name, i, count, n_entries * i // count, n_entries * (i + 1) // count)
        for i in range(count)
    )
    params = pack_params(opts)
    h = hashlib.sha256()
    h.update(json.dumps([name, params, count, list(classes)], sort_keys=True).encode())
    text = "".join(f"\n{e.index}\t{lab}\t{e.path}" for e, lab in zip(entries, labels, strict=True))
    h.update(text.encode("utf-8", "surrogateescape"))  # one update: the same bytes, hashed
    params = {**params, "num_shards": count}
    return SplitPlan(name, tuple(entries), tuple(labels), shards, params, h.hexdigest())
