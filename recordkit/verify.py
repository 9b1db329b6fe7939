"""Check shards end to end: every CRC, every index line, the manifest's counts, sizes, hashes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from recordkit.errors import CorruptRecordError, RecordkitError
from recordkit.format import framing
from recordkit.format.example import PayloadError, decode_example
from recordkit.format.index import compare_index, index_path_for, parse_index
from recordkit.format.manifest import MANIFEST_NAME, read_manifest

__all__ = ["Problem", "VerifyReport", "verify", "verify_shard"]

Progress = Callable[[int], None]


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
    num_classes: int | None = None,
    progress: Progress | None = None,
) -> tuple[VerifyReport, str]:
    """Verify one TFRecord file and its index.

    Args:
        path: The TFRecord file.
        index_path: Its index (default: same stem, ``.idx``).
        require_index: Report a missing index as a problem (else it is skipped).
        decode: Check that every record parses as an image ``Example`` with a label.
        num_classes: When given, labels must lie in ``[0, num_classes)``.
        progress: Called with the number of bytes processed since the last call.

    Returns:
        The report for this file, and the hex SHA-256 of its bytes (of the part read).
    """
    path = Path(path)
    rep = VerifyReport(files=1)
    sha = hashlib.sha256()
    spath = str(path)
    scanned: list[tuple[int, int]] = []
    try:
        f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
    except OSError as exc:
        rep.problems.append(Problem(spath, None, f"cannot open: {exc.strerror or exc}"))
        return rep, ""
    with f:
        size = os.fstat(f.fileno()).st_size
        rep.bytes = size
        reader = _HashingReader(f, sha, progress)
        try:
            for offset, framed, data in framing.scan(reader, path=spath, file_size=size):
                scanned.append((offset, framed))
                if decode:
                    try:
                        rec = decode_example(data)
                    except PayloadError as exc:
                        rep.problems.append(Problem(spath, offset, str(exc)))
                        continue
                    if num_classes is not None:
                        bad = [x for x in rec.labels if not 0 <= x < num_classes]
                        if bad:
                            rep.problems.append(
                                Problem(
                                    spath,
                                    offset,
                                    f"label {bad[0]} outside [0, {num_classes}) classes",
                                )
                            )
        except CorruptRecordError as exc:
            rep.problems.append(Problem(spath, exc.offset, exc.reason))
        reader.drain()
    rep.records = len(scanned)
    scan_end = scanned[-1][0] + scanned[-1][1] if scanned else 0

    idx = Path(index_path) if index_path is not None else index_path_for(path)
    if not idx.exists():
        if require_index:
            rep.problems.append(Problem(str(idx), None, "index file is missing"))
        return rep, sha.hexdigest()
    lines = parse_index(idx)
    found = compare_index(lines, scanned, rep.bytes)
    if found is not None and (rep.ok or found[0] < scan_end):
        # after a damaged record the scan stopped: only lines before it can be judged
        rep.problems.append(Problem(str(idx), found[0], found[1]))
    return rep, sha.hexdigest()


class _HashingReader:
    """File wrapper that hashes and reports everything read through it, once."""

    def __init__(self, f, sha, progress: Progress | None) -> None:  # noqa: ANN001
        self._f = f
        self._sha = sha
        self._progress = progress
        self._buf = b""
        self._at = 0  # read position inside _buf
        self._pos = 0  # file position as seen by the caller
        self._chunk = 1 << 20

    def fileno(self) -> int:
        return self._f.fileno()

    def tell(self) -> int:
        return self._pos

    def _refill(self, n: int) -> bool:
        chunk = self._f.read(max(self._chunk, n))
        if not chunk:
            return False
        self._sha.update(chunk)
        if self._progress is not None:
            self._progress(len(chunk))
        self._buf = self._buf[self._at :] + chunk
        self._at = 0
        return True

    def read(self, n: int) -> bytes:
        while len(self._buf) - self._at < n and self._refill(n):
            pass
        out = self._buf[self._at : self._at + n]
        self._at += len(out)
        self._pos += len(out)
        return out

    def drain(self) -> None:
        """Hash the rest of the file (after a scan stopped early)."""
        while self._refill(self._chunk):
            self._buf, self._at = b"", 0


def verify(
    path: str | os.PathLike[str],
    *,
    decode: bool = True,
    progress: Progress | None = None,
) -> VerifyReport:
    """Verify a shard directory (through its manifest) or a single TFRecord file.

    For a directory: the manifest parses; every shard it lists exists with the recorded size,
    record count and SHA-256; every record's CRCs pass and it decodes as an image ``Example``
    with labels inside the class list; every ``.idx`` line matches the record at that offset.
    Leftover temporary files are reported as warnings.

    Args:
        path: A shard directory or a ``.tfrecord`` file.
        decode: Also parse each record's ``Example``.
        progress: Called with the number of bytes processed since the last call.

    Returns:
        A :class:`VerifyReport`; ``report.ok`` is False when anything is wrong.

    Raises:
        ManifestError: ``path`` is a directory without a readable manifest.
        RecordkitError: ``path`` does not exist.
    """
    p = Path(path)
    if p.is_file():
        rep, _ = verify_shard(p, decode=decode, progress=progress)
        return rep
    if not p.exists():
        raise RecordkitError(f"no such file or directory: {path}")
    manifest = read_manifest(p)
    total = VerifyReport()
    for split_name, split in manifest.splits.items():
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
                num_classes=len(manifest.classes) if manifest.classes else None,
                progress=progress,
            )
            if rep.bytes != entry.bytes:
                rep.problems.append(
                    Problem(str(shard), None, f"size {rep.bytes}, manifest says {entry.bytes}")
                )
            if rep.ok and rep.records != entry.records:
                rep.problems.append(
                    Problem(
                        str(shard), None, f"{rep.records} records, manifest says {entry.records}"
                    )
                )
            if digest and digest != entry.sha256:
                rep.problems.append(Problem(str(shard), None, "SHA-256 differs from the manifest"))
            total.files += rep.files
            total.records += rep.records
            total.bytes += rep.bytes
            total.problems.extend(rep.problems)
    for leftover in sorted(p.glob("*.tmp")):
        total.warnings.append(f"{leftover}: leftover temporary file (an interrupted pack?)")
    if not manifest.splits:
        total.warnings.append(f"{p / MANIFEST_NAME}: lists no splits")
    return total
