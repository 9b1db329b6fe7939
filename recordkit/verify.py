"""Check shards end to end: every CRC, every index line, the manifest's counts, sizes, hashes."""

from __future__ import annotations

import hashlib
import os
import re
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from recordkit.errors import CorruptRecordError, IndexMismatchError, RecordkitError
from recordkit.format import framing
from recordkit.format.example import PayloadError, Record, decode_example, example_labels
from recordkit.format.index import (
    compare_index,
    index_path_for,
    parse_index,
    parse_index_array,
    read_index,
)
from recordkit.format.manifest import MANIFEST_NAME, Manifest, ShardEntry, read_manifest
from recordkit.memory import MemoryBudget, decode_cost
from recordkit.progress import Progress, skip_first
from recordkit.remote.urls import is_url
from recordkit.safeio import InputFileError, open_regular

if TYPE_CHECKING:  # numpy is imported on first use: `import recordkit` stays light
    import numpy as np

__all__ = ["Problem", "VerifyReport", "verify", "verify_shard"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong, located as precisely as possible."""

    path: str
    offset: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: offset {self.offset}" if self.offset is not None else self.path
        return f"{where}: {self.message}"


@dataclass
class VerifyReport:
    """What :func:`verify` checked and found."""

    files: int = 0
    records: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        state = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        return (
            f"verified {self.files} file(s), {self.records} record(s), {self.bytes} bytes: {state}"
        )


def verify_shard(
    path: str | os.PathLike[str],
    *,
    index_path: str | os.PathLike[str] | None = None,
    require_index: bool = False,
    decode: bool = True,
    images: bool = False,
    num_classes: int | None = None,
    max_labels: int | None = None,
    budget: MemoryBudget | None = None,
    progress: Progress | None = None,
) -> tuple[VerifyReport, str]:
    """Verify one TFRecord file and its index.

    Args:
        path: The TFRecord file; it must be a regular file.
        index_path: Its index (default: same stem, ``.idx``).
        require_index: Report a missing index as a problem (else it is skipped).
        decode: Check that every record parses as an image ``Example`` with a label.
        images: Also decode every image fully (see :func:`verify`).
        num_classes: When given, labels must lie in ``[0, num_classes)``, and no record may
            carry more labels than there are classes.
        max_labels: When given, no record may carry more labels (1 for a single-label split).
        budget: Memory for image decoding (``images``); default: :meth:`MemoryBudget.probe`.
        progress: Called with the number of bytes processed since the last call.

    Returns:
        The report for this file, and the hex SHA-256 of its bytes (of the part read).
    """
    path = Path(path)
    rep = VerifyReport(files=1)
    sha = hashlib.sha256()
    spath = str(path)
    scanned: list[tuple[int, int]] = []
    if images and budget is None:
        budget = MemoryBudget.probe()
    try:
        f = os.fdopen(open_regular(path, what="shard"), "rb")
    except InputFileError as exc:
        reason = exc.reason if exc.errno is None else f"cannot open: {exc.reason}"
        rep.problems.append(Problem(spath, None, reason))
        return rep, ""
    idx = Path(index_path) if index_path is not None else index_path_for(path)
    with f:
        size = os.fstat(f.fileno()).st_size
        if not images and idx.exists():
            done = [0]
            fast = _verify_fast(
                f, spath, idx, size, decode, num_classes, max_labels, progress, done
            )
            if fast is not None:
                return fast
            # something is wrong: the record-at-a-time checks below say exactly what
            f.seek(0)
            progress = skip_first(progress, done[0])
        rep.bytes = size
        hasher = _BackgroundHash(sha, progress)
        try:
            records = framing.scan_blocks(f, path=spath, file_size=size, on_block=hasher.update)
            for offset, framed, data in records:
                scanned.append((offset, framed))
                if not decode:
                    continue
                try:
                    if images:
                        rec = decode_example(data)
                        labels = rec.labels
                    else:
                        labels = example_labels(data)
                except PayloadError as exc:
                    rep.problems.append(Problem(spath, offset, str(exc)))
                    continue
                if len(labels) == 1 and max_labels is not None and num_classes is not None:
                    wrong = (
                        None
                        if 0 <= labels[0] < num_classes
                        else _label_problem(labels, num_classes, max_labels)
                    )
                else:
                    wrong = _label_problem(labels, num_classes, max_labels)
                if wrong is None and images:
                    assert budget is not None
                    wrong, warning = _image_problem(rec, budget)
                    if warning is not None:
                        rep.warnings.append(f"{spath}: offset {offset}: {warning}")
                if wrong is not None:
                    rep.problems.append(Problem(spath, offset, wrong))
        except CorruptRecordError as exc:
            rep.problems.append(Problem(spath, exc.offset, exc.reason))
        while chunk := f.read(_HASH_BLOCK):  # after a damaged record: hash the rest
            hasher.update(chunk)
        hasher.finish()
    rep.records = len(scanned)
    scan_end = scanned[-1][0] + scanned[-1][1] if scanned else 0

    if not idx.exists():
        if require_index:
            rep.problems.append(Problem(str(idx), None, "index file is missing"))
        return rep, sha.hexdigest()
    try:
        import numpy as np

        plain = parse_index_array(idx, data_size=rep.bytes)
        if (
            plain is not None
            and plain.shape == (len(scanned), 2)
            and np.array_equal(plain, np.array(scanned, dtype=np.int64).reshape(-1, 2))
        ):
            return rep, sha.hexdigest()
        lines = parse_index(idx, data_size=rep.bytes)  # lenient, for the exact message
    except IndexMismatchError as exc:  # larger than any index of this file
        rep.problems.append(Problem(str(idx), exc.offset, exc.reason))
        return rep, sha.hexdigest()
    except InputFileError as exc:
        reason = exc.reason if exc.errno is None else f"cannot open: {exc.reason}"
        rep.problems.append(Problem(str(idx), None, reason))
        return rep, sha.hexdigest()
    except OSError as exc:
        rep.problems.append(Problem(str(idx), None, f"cannot read: {exc.strerror or exc}"))
        return rep, sha.hexdigest()
    found = compare_index(lines, scanned, rep.bytes)
    if found is not None and (rep.ok or found[0] < scan_end):
        # after a damaged record the scan stopped: only lines before it can be judged
        rep.problems.append(Problem(str(idx), found[0], found[1]))
    return rep, sha.hexdigest()


def _verify_fast(
    f: BinaryIO,
    path: str,
    idx: Path,
    size: int,
    decode: bool,
    num_classes: int | None,
    max_labels: int | None,
    progress: Progress | None,
    done: list[int],
) -> tuple[VerifyReport, str] | None:
    """:func:`verify_shard`'s checks for a shard whose plain index describes it, a block of
    records at a time (:mod:`recordkit.format.columns`); ``None`` as soon as anything is wrong
    (the caller then runs the record-at-a-time checks, which name the problem).

    Adds the bytes reported to ``progress`` to ``done[0]``.
    """

    from recordkit.format import columns

    try:  # the index as record boundaries, checked against the file's size
        bounds = read_index(idx, data_size=size).offsets
    except (RecordkitError, OSError):
        return None

    def counted(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(n)

    sha = hashlib.sha256()
    hasher = _BackgroundHash(sha, counted)
    try:
        for i, j, block in columns.read_blocks(f, bounds):
            hasher.update(block)
            starts = bounds[i:j] - bounds[i]
            sizes = bounds[i + 1 : j + 1] - bounds[i:j]
            if len(block) != bounds[j] - bounds[i]:  # the file shrank under us
                return None
            if not columns.frames_ok(block, starts, sizes, crc=True):
                return None
            if decode and not _labels_ok(block, starts, sizes, num_classes, max_labels):
                return None
        while chunk := f.read(_HASH_BLOCK):  # the file grew under us: as the scan does
            hasher.update(chunk)
    finally:
        hasher.finish()
    return VerifyReport(files=1, records=len(bounds) - 1, bytes=size), sha.hexdigest()


def _labels_ok(
    block: bytes,
    starts: np.ndarray,
    sizes: np.ndarray,
    num_classes: int | None,
    max_labels: int | None,
) -> bool:
    """Whether every record of a block is an image ``Example`` whose labels pass."""
    import numpy as np

    from recordkit.format import columns

    data = starts + framing.HEADER_SIZE
    ends = starts + sizes - framing.FOOTER_SIZE
    cols = columns.image_columns(block, data, ends)
    if num_classes is not None:  # one label each: max_labels (>= 1) holds
        label = cols.label[cols.ok]
        if len(label) and (int(label.min()) < 0 or int(label.max()) >= num_classes):
            return False
    for k in np.flatnonzero(~cols.ok).tolist():  # any other layout: the full parser
        try:
            labels = example_labels(block[data[k] : ends[k]])
        except PayloadError:
            return False
        if _label_problem(labels, num_classes, max_labels) is not None:
            return False
    return True


def _label_problem(
    labels: tuple[int, ...], num_classes: int | None, max_labels: int | None
) -> str | None:
    if num_classes is not None:
        bad = [x for x in labels if not 0 <= x < num_classes]
        if bad:
            return f"label {bad[0]} outside [0, {num_classes}) classes"
    if max_labels is not None and len(labels) > max_labels:
        kind = "a single-label split" if max_labels == 1 else f"at most {max_labels} per record"
        return f"{len(labels)} labels in {kind}"
    if num_classes is not None and len(labels) > num_classes:
        return f"{len(labels)} labels, more than the {num_classes} classes"
    return None


def _image_problem(rec: Record, budget: MemoryBudget) -> tuple[str | None, str | None]:
    """``(problem, warning)`` for a record's image bytes, decoded in full."""
    from recordkit.imaging import ImageError, probe, validate_image

    try:
        fmt, width, height = probe(rec.image)
        refusal = budget.refusal(
            decode_cost(width, height, len(rec.image)), f"a {width}x{height} image"
        )
        if refusal is not None:
            return None, f"not decoded: {refusal}"
        with budget.hold(decode_cost(width, height, len(rec.image))):
            fmt, width, height = validate_image(rec.image)
    except ImageError as exc:
        return f"image does not decode: {exc.reason}", None
    if fmt != rec.format:
        return f"image/format says {rec.format!r}, the image is {fmt!r}", None
    if (rec.width, rec.height) != (0, 0) and (rec.width, rec.height) != (width, height):
        return (
            f"image/width x height say {rec.width}x{rec.height}, the image is {width}x{height}",
            None,
        )
    return None, None


_HASH_BLOCK = 8 << 20


class _BackgroundHash:
    """SHA-256 of the blocks a scan reads, computed on one helper thread beside the scan.

    ``hashlib`` releases the GIL while it hashes a large buffer, so the hash (the bound of
    ``verify`` on a CPU without SHA instructions) runs on one core while records are checked on
    the other. Blocks are hashed in the order given; at most two wait at a time.
    """

    def __init__(self, sha: Any, progress: Progress | None) -> None:
        self._sha = sha
        self._progress = progress
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="recordkit-sha")
        self._pending: deque[Future[None]] = deque()

    def update(self, block: bytes) -> None:
        while len(self._pending) >= 2:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._sha.update, block))
        if self._progress is not None:
            self._progress(len(block))

    def finish(self) -> None:
        """Wait for every block to be hashed."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True)


def verify(
    path: str | os.PathLike[str],
    *,
    decode: bool = True,
    images: bool = False,
    progress: Progress | None = None,
) -> VerifyReport:
    """Verify a shard directory (through its manifest) or a single TFRecord file.

    For a directory: the manifest parses; every shard it lists exists with the recorded size,
    record count and SHA-256; every record's CRCs pass and it decodes as an image ``Example``
    whose labels are inside the class list (as many as the split allows: one when it was
    packed without ``pack_label``); every ``.idx`` line matches the record at that offset;
    and no shard of the directory is missing from the manifest. Leftover temporary files are
    reported as warnings.

    Args:
        path: A shard directory or a ``.tfrecord`` file, or a dataset URL (``s3://…``,
            ``gs://…``, ``https://…``: each shard is downloaded to a temporary file in turn
            and checked the same way; unlisted files are not looked for).
        decode: Also parse each record's ``Example``.
        images: Also decode each image in full (slow: as fast as decoding for training) and
            check that it is the format and size its features say. An image too large for the
            memory this process may use is left undecoded with a warning.
        progress: Called with the number of bytes processed since the last call.

    Returns:
        A :class:`VerifyReport`; ``report.ok`` is False when anything is wrong.

    Raises:
        ManifestError: ``path`` is a directory without a readable manifest.
        RecordkitError: ``path`` does not exist.
    """
    if is_url(path):
        from recordkit.remote.verify import verify_remote

        return verify_remote(str(path), decode=decode, images=images, progress=progress)
    p = Path(path)
    budget = MemoryBudget.probe() if images else None
    if p.is_file():
        rep, _ = verify_shard(p, decode=decode, images=images, budget=budget, progress=progress)
        return rep
    if not p.exists():
        raise RecordkitError(f"no such file or directory: {path}")
    manifest = read_manifest(p)
    total = VerifyReport()
    for split_name, split in manifest.splits.items():
        max_labels = _max_labels(manifest, split_name)
        before = len(total.problems)
        held = {"records": 0, "bytes": 0}
        for entry in split.shards:
            shard = p / entry.file
            if not shard.exists():
                total.files += 1
                total.problems.append(
                    Problem(str(shard), None, f"missing (listed in split {split_name!r})")
                )
                continue
            rep, digest = verify_shard(
                shard,
                index_path=p / entry.index,
                require_index=True,
                decode=decode,
                images=images,
                num_classes=len(manifest.classes),
                max_labels=max_labels,
                budget=budget,
                progress=progress,
            )
            if digest:  # else it could not be opened, and the reason is the problem
                _compare_with_manifest(rep, digest, entry, str(shard))
            total.files += rep.files
            total.records += rep.records
            total.bytes += rep.bytes
            total.problems.extend(rep.problems)
            total.warnings.extend(rep.warnings)
            held["records"] += rep.records
            held["bytes"] += rep.bytes
        if len(total.problems) == before:  # every shard as listed: the split's totals must match
            for key, stated in (("records", split.stated_records), ("bytes", split.stated_bytes)):
                if stated is not None and stated != held[key]:
                    total.problems.append(
                        Problem(
                            str(p / MANIFEST_NAME),
                            None,
                            f"split {split_name!r} says {key} {stated}, "
                            f"its shards hold {held[key]}",
                        )
                    )
    _unlisted(p, manifest, total)
    for leftover in sorted(p.glob("*.tmp")):
        total.warnings.append(f"{leftover}: leftover temporary file (an interrupted pack?)")
    if not manifest.splits:
        total.warnings.append(f"{p / MANIFEST_NAME}: lists no splits")
    return total


def _compare_with_manifest(rep: VerifyReport, digest: str, entry: ShardEntry, shard: str) -> None:
    if rep.bytes != entry.bytes:
        rep.problems.append(Problem(shard, None, f"size {rep.bytes}, manifest says {entry.bytes}"))
    if rep.ok and rep.records != entry.records:
        rep.problems.append(
            Problem(shard, None, f"{rep.records} records, manifest says {entry.records}")
        )
    if digest != entry.sha256:
        rep.problems.append(Problem(shard, None, "SHA-256 differs from the manifest"))


_SHARD_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*-[0-9]{5,}-of-[0-9]{5,}\.(tfrecord|idx)")


def _unlisted(root: Path, manifest: Manifest, report: VerifyReport) -> None:
    """Shard files in ``root`` that the manifest does not list: problems (shard names) or
    warnings (other ``.tfrecord`` files)."""
    listed = {n for s in manifest.splits.values() for e in s.shards for n in (e.file, e.index)}
    try:
        names = sorted(os.listdir(root))
    except OSError as exc:
        report.warnings.append(f"{root}: cannot list the directory: {exc.strerror or exc}")
        return
    for name in names:
        if name in listed:
            continue
        if _SHARD_FILE.fullmatch(name):
            report.problems.append(
                Problem(str(root / name), None, "not listed in the manifest (dropped from it?)")
            )
        elif name.endswith(".tfrecord"):
            report.warnings.append(f"{root / name}: a TFRecord file the manifest does not list")


def _max_labels(manifest: Manifest, split: str) -> int | None:
    """How many labels a record of ``split`` may carry, from the pack parameters (None: any).

    ``max_labels`` when recorded (convert-rec), else 1 for a split packed without
    ``pack_label``.
    """
    params = manifest.pack.get("splits")
    params = params.get(split) if isinstance(params, dict) else None
    if not isinstance(params, dict):
        return None
    value = params.get("max_labels")
    if type(value) is int and value >= 1:
        return value
    if params.get("pack_label") is False:
        return 1
    return None
