"""``recordkit inspect``: what a shard directory holds — splits, classes, image sizes, bytes."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recordkit.dataset import Dataset, Split, open_dataset
from recordkit.errors import CorruptRecordError
from recordkit.format import framing
from recordkit.format.example import PayloadError, Record, decode_example
from recordkit.progress import Progress, skip_first

if TYPE_CHECKING:  # numpy is imported on first use: `import recordkit` stays light
    import numpy as np


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

    def add_array(self, xs: np.ndarray) -> None:
        """:meth:`add` for every value of an int64 array."""
        if not len(xs):
            return
        lo, hi = int(xs.min()), int(xs.max())
        self.n += len(xs)
        # exact: an int64 sum of values this small cannot overflow
        small = max(abs(lo), abs(hi)) < 1 << 40
        self.total += int(xs.sum()) if small else sum(xs.tolist())
        self.min = lo if self.min is None else min(self.min, lo)
        self.max = hi if self.max is None else max(self.max, hi)

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
        "path": ds.root if isinstance(ds.root, str) else str(Path(ds.root)),
        "format_version": m.format_version,
        "created": m.created,
        "created_by": m.created_by,
        "classes": len(m.classes),
        "class_names": list(m.classes),
        "skipped": len(m.skipped),
        "splits": {},
    }
    for name, split in ds.splits.items():
        done = [0]
        acc = _scan_split_fast(split, max_records, progress, done)
        if acc is None:  # something is wrong: record by record, for the exact error
            acc = _scan_split(split, max_records, skip_first(progress, done[0]))
        hist, scanned = acc.hist, acc.scanned

        def cname(k: int) -> str:
            return m.classes[k] if 0 <= k < len(m.classes) else str(k)

        out["splits"][name] = {
            "records": len(split),
            "shards": len(split.entries),
            "bytes": split.nbytes,
            "scanned": scanned,
            "class_histogram": {cname(k): hist[k] for k in sorted(hist)},
            "width": acc.width.to_dict(),
            "height": acc.height.to_dict(),
            "record_bytes": acc.size.to_dict(),
            "formats": dict(sorted(acc.formats.items())),
            "channels": {str(k): v for k, v in sorted(acc.channels.items())},
            "multi_label": acc.multi,
        }
    return out


class _Totals:
    """What :func:`inspect_dataset` counts over one split."""

    def __init__(self) -> None:
        self.hist: Counter[int] = Counter()
        self.formats: Counter[str] = Counter()
        self.channels: Counter[int] = Counter()
        self.width, self.height, self.size = _Stats(), _Stats(), _Stats()
        self.multi = self.scanned = 0

    def add(self, rec: Record, nbytes: int) -> None:
        self.scanned += 1
        self.hist.update(rec.labels)
        self.multi += len(rec.labels) > 1
        self.formats[rec.format] += 1
        self.channels[rec.channels] += 1
        self.width.add(rec.width)
        self.height.add(rec.height)
        self.size.add(nbytes)


def _scan_split(split: Split, max_records: int | None, progress: Progress | None) -> _Totals:
    """Decode every record (or the first ``max_records``) one at a time."""
    acc = _Totals()
    for shard, offset, data in split.iter_located():
        if max_records is not None and acc.scanned >= max_records:
            break
        try:
            rec = decode_example(data)
        except PayloadError as exc:
            raise CorruptRecordError(shard, offset, str(exc)) from None
        acc.add(rec, len(data))
        if progress is not None:
            progress(1)
    return acc


def _scan_split_fast(
    split: Split, max_records: int | None, progress: Progress | None, done: list[int]
) -> _Totals | None:
    """:func:`_scan_split` a block of records at a time (:mod:`recordkit.format.columns`):
    the same totals, or ``None`` at the first thing wrong. Reads exactly the records that
    :func:`_scan_split` reads (it reads one more than ``max_records``, and checks its
    framing); adds the records reported to ``progress`` to ``done[0]``."""

    from recordkit.format import columns

    acc = _Totals()
    n = len(split)
    if n == 0:
        return acc
    want = n if max_records is None else min(max_records, n)  # records decoded
    read = n if max_records is None else min(max_records + 1, n)  # records read
    first, last = split.locate(0)[0], split.locate(read - 1)[0]
    seen = 0  # records read so far, over the split
    for s in range(first, last + 1):
        reader = split.reader(s)  # raises as iter_located does
        hi = min(len(reader), read - seen)
        bounds = reader.entries.offsets[: hi + 1]
        try:
            f = reader.open_stream(int(bounds[0]))  # a local file, or range reads of a URL
        except OSError:
            return None
        with f:
            for i, j, block in columns.read_blocks(f, bounds):
                starts = bounds[i:j] - bounds[i]
                sizes = bounds[i + 1 : j + 1] - bounds[i:j]
                if len(block) != bounds[j] - bounds[i] or not columns.frames_ok(
                    block, starts, sizes, crc=reader.verify_crc
                ):
                    return None
                k = min(j - i, max(want - seen - i, 0))  # of these, the records decoded
                if k and not _add_block(acc, block, starts[:k], sizes[:k]):
                    return None
                if progress is not None and k:
                    progress(k)
                done[0] += k
            seen += hi
    return acc


def _add_block(acc: _Totals, block: bytes, starts: np.ndarray, sizes: np.ndarray) -> bool:
    """Count a block's records into ``acc``; False for one that is not an image Example."""
    import numpy as np

    from recordkit.format import columns

    data = starts + framing.HEADER_SIZE
    ends = starts + sizes - framing.FOOTER_SIZE
    cols = columns.image_columns(block, data, ends)
    ok = cols.ok
    for k in np.flatnonzero(~ok).tolist():  # any other layout: the full parser
        try:
            rec = decode_example(block[data[k] : ends[k]])
        except PayloadError:
            return False
        acc.add(rec, int(ends[k] - data[k]))
    if not ok.any():
        return True
    if not ok.all():
        data, ends = data[ok], ends[ok]
        cols = columns.ImageColumns(*(getattr(cols, f)[ok] for f in _COLUMNS))
    acc.scanned += len(data)
    labels, counts = np.unique(cols.label, return_counts=True)
    acc.hist.update(dict(zip(labels.tolist(), counts.tolist(), strict=True)))
    values, counts = np.unique(cols.channels, return_counts=True)
    acc.channels.update(dict(zip(values.tolist(), counts.tolist(), strict=True)))
    acc.width.add_array(cols.width)
    acc.height.add_array(cols.height)
    acc.size.add_array(ends - data)
    _count_formats(acc.formats, block, cols.format_start, cols.format_len)
    return True


_COLUMNS = ("ok", "label", "channels", "height", "width", "format_start", "format_len")


def _count_formats(
    formats: Counter[str], block: bytes, start: np.ndarray, size: np.ndarray
) -> None:
    """Count ``image/format`` values (decoded as :func:`decode_example` does); the short ones
    (``jpeg``, ``png``) are compared as 8-byte words."""
    import numpy as np

    short = size <= 8
    if short.any():
        words = np.ndarray((len(block) - 7,), dtype="<u8", buffer=block, strides=(1,))
        pos = np.minimum(start[short], len(words) - 1)
        sz = size[short].astype(np.uint64)
        masks = np.where(sz == 8, ~np.uint64(0), (np.uint64(1) << (sz * np.uint64(8))) - 1)
        keys = words[pos] & masks
        for length in np.unique(sz).tolist():
            vals, counts = np.unique(keys[sz == length], return_counts=True)
            for v, c in zip(vals.tolist(), counts.tolist(), strict=True):
                raw = v.to_bytes(8, "little")[:length]
                formats[raw.decode("ascii", "replace")] += c
    for a, n in zip(start[~short].tolist(), size[~short].tolist(), strict=True):
        formats[block[a : a + n].decode("ascii", "replace")] += 1


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
