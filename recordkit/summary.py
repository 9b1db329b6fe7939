"""``recordkit inspect``: what a shard directory holds — splits, classes, image sizes, bytes."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recordkit.dataset import Dataset, open_dataset
from recordkit.errors import CorruptRecordError
from recordkit.format.example import PayloadError, decode_example

__all__ = ["inspect_dataset", "format_summary"]


class _Stats:
    """Streaming min / max / mean of integers."""

    def __init__(self) -> None:
        self.n = 0
        self.total = 0
        self.min: int | None = None
        self.max: int | None = None

    def add(self, x: int) -> None:
        self.n += 1
        self.total += x
        self.min = x if self.min is None else min(self.min, x)
        self.max = x if self.max is None else max(self.max, x)

    def to_dict(self) -> dict[str, float | int | None]:
        mean = round(self.total / self.n, 2) if self.n else None
        return {"min": self.min, "max": self.max, "mean": mean}


def inspect_dataset(
    path: str | os.PathLike[str] | Dataset,
    *,
    max_records: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Summarize a shard directory.

    Reads every record (or the first ``max_records`` of each split) sequentially.

    Args:
        path: A shard directory, or an open :class:`~recordkit.dataset.Dataset`.
        max_records: Look at no more than this many records per split (a quick sample).
        progress: Called with the number of records processed since the last call.

    Returns:
        A JSON-serializable dict: ``path``, ``format_version``, ``created``, ``classes``
        (count), ``class_names``, ``skipped`` (count), and per split ``records``, ``shards``,
        ``bytes``, ``scanned``, ``class_histogram`` (class name → count, over all labels),
        ``width`` / ``height`` / ``record_bytes`` (min / max / mean), ``formats`` and
        ``channels`` (value → count), ``multi_label`` (records with more than one label).

    Raises:
        ManifestError: No readable manifest.
        CorruptRecordError: A damaged record, or one that is not an image ``Example`` (the
            message names the shard and the record's offset).
    """
    ds = path if isinstance(path, Dataset) else open_dataset(path)
    m = ds.manifest
    out: dict[str, Any] = {
        "path": str(Path(ds.root)),
        "format_version": m.format_version,
        "created": m.created,
        "created_by": m.created_by,
        "classes": len(m.classes),
        "class_names": list(m.classes),
        "skipped": len(m.skipped),
        "splits": {},
    }
    for name, split in ds.splits.items():
        hist: Counter[int] = Counter()
        formats: Counter[str] = Counter()
        channels: Counter[int] = Counter()
        width, height, size = _Stats(), _Stats(), _Stats()
        multi = scanned = 0
        for shard, offset, data in split.iter_located():
            if max_records is not None and scanned >= max_records:
                break
            try:
                rec = decode_example(data)
            except PayloadError as exc:
                raise CorruptRecordError(shard, offset, str(exc)) from None
            scanned += 1
            hist.update(rec.labels)
            multi += len(rec.labels) > 1
            formats[rec.format] += 1
            channels[rec.channels] += 1
            width.add(rec.width)
            height.add(rec.height)
            size.add(len(data))
            if progress is not None:
                progress(1)

        def cname(k: int) -> str:
            return m.classes[k] if 0 <= k < len(m.classes) else str(k)

        out["splits"][name] = {
            "records": len(split),
            "shards": len(split.entries),
            "bytes": split.nbytes,
            "scanned": scanned,
            "class_histogram": {cname(k): hist[k] for k in sorted(hist)},
            "width": width.to_dict(),
            "height": height.to_dict(),
            "record_bytes": size.to_dict(),
            "formats": dict(sorted(formats.items())),
            "channels": {str(k): v for k, v in sorted(channels.items())},
            "multi_label": multi,
        }
    return out


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def format_summary(info: dict[str, Any], *, max_classes: int = 20) -> str:
    """Render :func:`inspect_dataset`'s result as human-readable text."""
    lines = [
        f"{info['path']}: recordkit format v{info['format_version']}, "
        f"{info['classes']} classes, created {info['created']} by {info['created_by']}",
    ]
    if info["skipped"]:
        lines.append(f"skipped inputs recorded in the manifest: {info['skipped']}")
    for name, s in info["splits"].items():
        sample = "" if s["scanned"] == s["records"] else f" (scanned {s['scanned']})"
        lines.append(
            f"{name}: {s['records']} records{sample} in {s['shards']} shard(s), "
            f"{_human(s['bytes'])}"
        )
        if not s["scanned"]:
            continue
        w, h, b = s["width"], s["height"], s["record_bytes"]
        lines.append(
            f"  image width {w['min']}..{w['max']} (mean {w['mean']}), "
            f"height {h['min']}..{h['max']} (mean {h['mean']}), "
            f"record {_human(b['min'])}..{_human(b['max'])} (mean {_human(b['mean'])})"
        )
        fmts = ", ".join(f"{k}: {v}" for k, v in s["formats"].items())
        chans = ", ".join(f"{k}: {v}" for k, v in s["channels"].items())
        lines.append(f"  formats {fmts}; channels {chans}; multi-label records {s['multi_label']}")
        hist = s["class_histogram"]
        counts = list(hist.values())
        lines.append(
            f"  classes present {len(hist)}, per class min {min(counts)} max {max(counts)}"
        )
        for cname, n in list(hist.items())[:max_classes]:
            lines.append(f"    {n:>8}  {cname}")
        if len(hist) > max_classes:
            lines.append(f"    … {len(hist) - max_classes} more (use --json for all)")
    return "\n".join(lines)
