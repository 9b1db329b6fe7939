"""MXNet ``.rec`` → recordkit shards: plan from a header scan, copy image bytes, manifest last.

The conversion runs in two passes over the ``.rec`` file:

1. A header scan (:func:`~recordkit.interop.mxnet_rec.scan_rec_headers`) reads every record's
   framing, ``IRHeader`` and labels but not its image bytes. It finds a damaged file, labels
   that are not class indices and a ``.lst`` that does not belong to the file *before* anything
   is written, and gives the record count and byte total that fix the shard layout.
2. The copy reads the records again, in the same order, and writes each image's bytes unchanged
   into ``{split}-{i:05d}-of-{n:05d}.tfrecord`` shards (temporary names until complete) with
   the same Example features ``recordkit pack`` writes; ``recordkit.json`` is written last.

If anything fails after output has begun, the shards this run wrote are removed again: a failed
conversion leaves no files behind (a split replaced with ``overwrite`` is gone, as in pack).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recordkit.classmap import (
    check_class_count,
    class_names_from_lists,
    existing_manifest,
    merge_classes,
)
from recordkit.format.example import Record
from recordkit.format.manifest import (
    MANIFEST_NAME,
    Manifest,
    ShardEntry,
    SplitEntry,
    write_manifest,
)
from recordkit.format.writer import ShardWriter
from recordkit.imageinfo import NotAnImage, image_info
from recordkit.interop.mxnet_rec import RecRecord, read_idx, read_rec, scan_rec_headers
from recordkit.interop.options import ConvertError, ConvertOptions, ConvertResult, Progress
from recordkit.listing import ListEntry, ListError, read_list
from recordkit.safeio import InputFileError, read_regular

__all__ = ["convert_rec", "read_class_names", "shard_name"]

logger = logging.getLogger(__name__)

_MAX_CLASS_FILE = 256 << 20

# Example bytes around the image: feature keys, format, sizes, label, index, filename, text.
_RECORD_OVERHEAD = 200


# --- inputs ----------------------------------------------------------------------------------
def read_class_names(path: str | os.PathLike[str]) -> list[str]:
    """Read class names from a text file, in label order.

    Two layouts are accepted: one name per line (line ``k`` names label ``k``, as ImageNet's
    ``synsets.txt``), or the class table ``im2rec.py --list`` prints, ``name label`` per line
    (every line ending in whitespace and an integer; the labels must be ``0..K-1``, in any
    order). Blank lines are skipped.

    Args:
        path: The text file.

    Returns:
        The class names, label 0 first.

    Raises:
        ConvertError: The file cannot be read, is empty, repeats a name, or its table's labels
            are not ``0..K-1`` exactly once.
    """
    try:
        text = read_regular(path, limit=_MAX_CLASS_FILE, what="class-name file").decode("utf-8-sig")
    except InputFileError as exc:
        raise ConvertError(f"cannot read class names from {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConvertError(f"cannot read class names from {path}: {detail}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ConvertError(f"{path}: no class names")
    table = [re.fullmatch(r"(.*\S)\s+(\d+)", line) for line in lines]
    if all(table):
        by_label: dict[int, str] = {}
        for m in table:
            assert m is not None
            label = int(m.group(2))
            if label in by_label:
                raise ConvertError(f"{path}: label {label} is given twice")
            by_label[label] = m.group(1)
        missing = [k for k in range(len(by_label)) if k not in by_label]
        if missing:
            raise ConvertError(
                f"{path}: labels must be 0..{len(by_label) - 1}; label {missing[0]} is missing"
            )
        names = [by_label[k] for k in range(len(by_label))]
    else:
        names = lines
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConvertError(f"{path}: class name {name!r} is given twice")
        seen.add(name)
    return names


def _label(value: float, rec: str, offset: int, id_: int) -> int:
    if not math.isfinite(value) or value != int(value) or not 0 <= value < 2**31:
        raise ConvertError(
            f"{rec}: offset {offset}: record id {id_} has label {value:g}, not a non-negative "
            "integer class label (recordkit stores int64 class labels; .rec files with "
            "detection or regression labels cannot be converted)"
        )
    return int(value)


def _float32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


@dataclass
class _Scan:
    """What the header scan found."""

    count: int = 0
    image_bytes: int = 0
    max_label: int = -1
    max_label_at: str = ""
    max_labels: int = 0
    parts: int = 0


def _scan(
    rec: str, idx: list[tuple[int, int]] | None, lst: dict[int, ListEntry] | None, lst_name: str
) -> _Scan:
    scan = _Scan()
    for h in scan_rec_headers(rec, idx):
        if h.id >= 2**63:
            raise ConvertError(f"{rec}: offset {h.offset}: record id {h.id} does not fit int64")
        labels = [_label(v, rec, h.offset, h.id) for v in h.labels]
        if lst is not None:
            entry = lst.get(h.id)
            if entry is None:
                raise ConvertError(
                    f"{rec}: offset {h.offset}: record id {h.id} is not in {lst_name}; "
                    "give the .lst this .rec was made from"
                )
            want = [_float32(v) for v in entry.labels[: len(h.labels)]]
            if want != list(h.labels):
                raise ConvertError(
                    f"{rec}: offset {h.offset}: record id {h.id} has label(s) "
                    f"{', '.join(f'{v:g}' for v in h.labels)} but {lst_name} gives "
                    f"{', '.join(f'{v:g}' for v in entry.labels)} for {entry.path!r}; "
                    "give the .lst this .rec was made from"
                )
        scan.count += 1
        scan.image_bytes += h.image_size
        if max(labels) > scan.max_label:
            scan.max_label = max(labels)
            scan.max_label_at = f"{rec}: offset {h.offset}: record id {h.id}"
        scan.max_labels = max(scan.max_labels, len(labels))
        scan.parts += h.parts
    if scan.count == 0:
        raise ConvertError(f"{rec}: no records" + (" listed in the .idx" if idx else ""))
    return scan


def _numbered(n: int) -> list[str]:
    return [str(k) for k in range(n)]


def _resolve_classes(
    scan: _Scan,
    class_file: str | os.PathLike[str] | None,
    lst_entries: Sequence[ListEntry] | None,
) -> tuple[list[str], bool]:
    """Class names for labels ``0..max_label`` and whether they are real names."""
    max_label = scan.max_label
    if class_file is not None:
        names = read_class_names(class_file)
        if max_label >= len(names):
            raise ConvertError(
                f"{class_file} names {len(names)} classes, but the records carry label {max_label}"
            )
        return names, True
    if lst_entries is not None:
        try:
            return class_names_from_lists(lst_entries, max_label), True
        except ListError as exc:
            logger.warning("class names from numbers 0..%d (%s)", max_label, exc)
    check_class_count(max_label, scan.count, scan.max_label_at, ConvertError)
    return _numbered(max_label + 1), False


# --- output directory ------------------------------------------------------------------------
def shard_name(split: str, i: int, n: int) -> str:
    """``{split}-{i:05d}-of-{n:05d}.tfrecord``, the names ``recordkit pack`` uses."""
    return f"{split}-{i:05d}-of-{n:05d}.tfrecord"


def _split_files(out: Path, split: str) -> list[Path]:
    pats = (
        f"{split}-?????-of-?????.{ext}" for ext in ("tfrecord", "idx", "tfrecord.tmp", "idx.tmp")
    )
    return sorted({p for pat in pats for p in out.glob(pat)})


def _prepare_out(
    out: Path, split: str, classes: list[str], named: bool, overwrite: bool
) -> tuple[Manifest | None, list[str]]:
    """Check (and with ``overwrite`` clear) what ``out`` holds of ``split``.

    Returns the manifest of the other splits (``None`` when there are none) and the class
    names to write.
    """
    existing = existing_manifest(out, ConvertError)
    leftovers = _split_files(out, split)
    if not overwrite:
        if existing is not None and split in existing.splits:
            raise ConvertError(
                f"split {split!r} is already in {out}; use --overwrite to replace it"
            )
        if leftovers:
            raise ConvertError(
                f"{out} holds unfinished files of split {split!r} ({leftovers[0].name}); "
                "use --overwrite to replace them"
            )
    others = None
    if existing is not None:
        others = Manifest(
            classes=list(existing.classes),
            splits={k: v for k, v in existing.splits.items() if k != split},
            pack=dict(existing.pack),
            skipped=[s for s in existing.skipped if s.get("split") != split],
            outside_root=[s for s in existing.outside_root if s.get("split") != split],
        )
        (others.pack.get("splits") or {}).pop(split, None)
        if others.splits:
            classes = merge_classes(
                others.classes,
                classes,
                named=named,
                out=out,
                error=ConvertError,
                source="here",
                hint="convert into another --out",
            )
        else:
            others = None
    if overwrite and (leftovers or (existing is not None and split in existing.splits)):
        # No finished dataset may list the split while its files are being replaced.
        if others is not None:
            write_manifest(others, out)
        elif existing is not None:
            (out / MANIFEST_NAME).unlink()
        for p in leftovers:
            p.unlink(missing_ok=True)
    return others, classes


# --- conversion ------------------------------------------------------------------------------
def _shard_count(scan: _Scan, opts: ConvertOptions) -> int:
    if opts.shard_size:
        count = math.ceil(scan.count / opts.shard_size)
    else:
        est = scan.image_bytes + scan.count * _RECORD_OVERHEAD
        count = math.ceil(est / opts.shard_bytes)
    return max(1, min(count, scan.count))


@dataclass
class _Copy:
    """The state of the copy pass: shards finished so far and records skipped."""

    rec: str
    opts: ConvertOptions
    names: list[str]
    lst: dict[int, ListEntry] | None
    written: list[ShardEntry] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    done: int = 0

    def record(self, r: RecRecord) -> Record | None:
        """The shard record for ``r``, or ``None`` (recorded as skipped) for a bad image."""
        entry = self.lst.get(r.id) if self.lst is not None else None
        filename = entry.path.replace(os.sep, "/") if entry is not None else ""
        labels = tuple(_label(v, self.rec, r.offset, r.id) for v in r.labels)
        try:
            info = image_info(r.image)
        except NotAnImage as exc:
            where = f"{self.rec}: offset {r.offset}: record id {r.id}"
            if self.opts.strict:
                raise ConvertError(f"{where}: {exc} (--strict)") from None
            logger.info("skipping %s: %s", where, exc)
            self.skipped.append(
                {
                    "split": self.opts.split,
                    "path": filename or f"{Path(self.rec).name}#{r.id}",
                    "reason": str(exc),
                    "id": r.id,
                    "offset": r.offset,
                }
            )
            return None
        return Record(
            image=r.image,
            labels=labels,
            filename=filename,
            index=r.id,
            format=info.format,
            height=info.height,
            width=info.width,
            channels=info.channels,
            text=self.names[labels[0]],
        )

    def run(
        self, records: Iterator[RecRecord], n: int, count: int, progress: Progress | None
    ) -> None:
        """Write ``n`` records into ``count`` contiguous shards (shard ``i``: ``[n*i//count,
        n*(i+1)//count)``, as pack cuts a split)."""
        out, split = self.opts.out, self.opts.split
        for i in range(count):
            with ShardWriter(out / shard_name(split, i, count), fsync=self.opts.fsync) as w:
                for _ in range(n * i // count, n * (i + 1) // count):
                    r = next(records, None)
                    if r is None:
                        raise ConvertError(f"{self.rec}: the file changed while being converted")
                    record = self.record(r)
                    if record is not None:
                        w.write(record)
                    self.done += 1
                    if progress is not None:
                        progress(self.done, n)
            info = w.info
            assert info is not None
            self.written.append(
                ShardEntry(
                    file=info.path.name,
                    index=info.index_path.name,
                    records=info.records,
                    bytes=info.bytes,
                    sha256=info.sha256,
                )
            )


def convert_rec(
    rec: str | os.PathLike[str],
    options: ConvertOptions | None = None,
    *,
    idx: str | os.PathLike[str] | None = None,
    lst: str | os.PathLike[str] | None = None,
    classes: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> ConvertResult:
    """Convert an MXNet RecordIO ``.rec`` file (im2rec's output) into recordkit shards.

    Every record's image bytes are copied unchanged into an Example with the features
    ``recordkit pack`` writes: ``image/encoded``, ``image/format`` and ``image/height`` /
    ``width`` / ``channels`` (read from the JPEG/PNG header, nothing is decoded), every label
    of the record as ``image/class/label``, the record's ``IRHeader.id`` (im2rec: the ``.lst``
    index) as ``image/index``, and with ``lst`` the image's path as ``image/filename``. Records
    keep their ``.idx`` order (or file order without ``idx``) and are cut into contiguous
    shards as pack cuts a split.

    Example:
        >>> res = convert_rec("data.rec", ConvertOptions(out="shards"),
        ...                   idx="data.idx", lst="data.lst")  # doctest: +SKIP
        >>> print(res.summary())  # doctest: +SKIP

    Args:
        rec: The ``.rec`` file.
        options: Output directory, split name, shard size, overwrite, strict.
        idx: The ``.idx`` file: read the records it lists, in its order. Without it every record
            is read in file order.
        lst: The im2rec ``.lst`` the file was made from: gives file names and class names (the
            directory of each first label's images), and is checked against the records' ids
            and labels.
        classes: A text file of class names (see :func:`read_class_names`); takes precedence
            over names derived from ``lst``. Without either, classes are named ``"0"``,
            ``"1"``, ….
        progress: ``progress(done, total)`` after each record copied (for a progress bar).

    Returns:
        A :class:`ConvertResult`.

    Raises:
        RecFormatError: The ``.rec`` is damaged (bad magic, truncated record, bad image
            header, an ``.idx`` offset that is not a record); the message names the byte
            offset. Nothing has been written.
        ConvertError: A label is not a non-negative integer, ``lst`` does not match the
            records, the output directory already holds the split (without ``overwrite``) or
            other splits with other class names, or (``strict``) an image is not a readable
            JPEG/PNG.
        RecordkitError: A malformed ``.idx``, ``.lst`` or manifest.
    """
    opts = options or ConvertOptions()
    t0 = time.perf_counter()
    rec_s = os.fsdecode(rec)
    if not os.path.isfile(rec_s):
        raise ConvertError(f"no such file: {rec_s}")
    idx_entries = read_idx(idx, rec_size=os.path.getsize(rec_s)) if idx is not None else None
    lst_entries = None
    lst_map = None
    if lst is not None:
        lst_entries = read_list(lst)
        lst_map = {e.index: e for e in lst_entries}
    scan = _scan(rec_s, idx_entries, lst_map, os.fsdecode(lst) if lst is not None else "")
    names, named = _resolve_classes(scan, classes, lst_entries)
    if scan.parts > scan.count:
        logger.info("%s: %d record(s) in continuation parts", rec_s, scan.parts - scan.count)

    out = opts.out
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConvertError(f"cannot create {out}: {exc.strerror or exc}") from None
    count = _shard_count(scan, opts)
    copy = _Copy(rec_s, opts, names, lst_map)
    try:
        others, copy.names = _prepare_out(out, opts.split, names, named, opts.overwrite)
        with contextlib.closing(read_rec(rec_s, idx_entries)) as records:
            copy.run(records, scan.count, count, progress)
        manifest = others or Manifest(classes=copy.names)
        manifest.classes = copy.names
        manifest.splits[opts.split] = SplitEntry(tuple(copy.written))
        manifest.skipped.extend(copy.skipped)
        by_split = dict(manifest.pack.get("splits") or {})
        by_split[opts.split] = {
            "converted_from": "mxnet-rec",
            "rec": Path(rec_s).name,
            "idx": Path(idx).name if idx is not None else None,
            "lst": Path(lst).name if lst is not None else None,
            "classes": Path(classes).name if classes is not None else None,
            "shard_size": opts.shard_size,
            "shard_bytes": None if opts.shard_size else opts.shard_bytes,
            "num_shards": count,
            "max_labels": scan.max_labels,
        }
        manifest.pack["splits"] = by_split
        manifest_path = write_manifest(manifest, out)
    except BaseException:
        for entry in copy.written:
            (out / entry.file).unlink(missing_ok=True)
            (out / entry.index).unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    return ConvertResult(
        out=out,
        manifest=manifest_path,
        split=opts.split,
        classes=copy.names,
        records=sum(e.records for e in copy.written),
        shards=count,
        skipped=copy.skipped,
        bytes_in=os.path.getsize(rec_s),
        bytes_out=sum(e.bytes for e in copy.written),
        seconds=time.perf_counter() - t0,
    )
