"""Write one shard: a TFRecord file and its DALI index, under temporary names until closed."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from recordkit.errors import DiskFullError, is_disk_full
from recordkit.format import framing
from recordkit.format.example import Record, example_parts
from recordkit.format.index import index_path_for

__all__ = ["ShardWriter", "ShardInfo", "temp_path_for"]

_SYNC_EVERY = 32 << 20
_fdatasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


@dataclass(frozen=True)
class ShardInfo:
    """What a finished shard holds; the manifest stores these fields.

    Attributes:
        path: The ``.tfrecord`` file.
        index_path: Its ``.idx`` file.
        records: Number of records.
        bytes: Size of the ``.tfrecord`` file in bytes.
        sha256: Hex SHA-256 of the ``.tfrecord`` file.
    """

    path: Path
    index_path: Path
    records: int
    bytes: int
    sha256: str


def temp_path_for(path: str | os.PathLike[str]) -> Path:
    """Return the temporary name a file is written under before it is renamed into place."""
    p = Path(path)
    return p.with_name(p.name + ".tmp")


class ShardWriter:
    """Write records to ``path`` (a ``.tfrecord``) and ``path``'s ``.idx``, atomically.

    Both files are written as ``<name>.tmp`` and renamed on :meth:`close`: the index first,
    then the data file, so a ``.tfrecord`` that exists is complete and has its index. If the
    ``with`` block raises, the temporary files are removed and nothing is renamed; a full disk
    (``ENOSPC``/``EDQUOT``) comes out of the block as :class:`~recordkit.errors.DiskFullError`
    naming the shard.

    Example:
        >>> with ShardWriter("shards/train-00000-of-00001.tfrecord") as w:  # doctest: +SKIP
        ...     w.write(Record(image=jpeg_bytes, labels=3, filename="cat/1.jpg"))

    Args:
        path: Final path of the TFRecord file; its parent directory must exist.
        index: Also write the ``.idx`` file.
        fsync: ``fsync`` both files before renaming (crash safety on power loss). Every
            32 MiB a background thread calls ``fdatasync`` on what is written so far, so the disk
            writes while records are still being made and the final ``fsync`` has little left.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, index: bool = True, fsync: bool = True
    ) -> None:
        self.path = Path(path)
        self.index_path = index_path_for(self.path)
        self._tmp = temp_path_for(self.path)
        self._idx_tmp = temp_path_for(self.index_path) if index else None
        self._fsync = fsync
        self._f = open(self._tmp, "wb", buffering=1 << 20)  # noqa: SIM115 - closed in close()
        self._idx = (
            open(self._idx_tmp, "w", encoding="ascii", buffering=1 << 16)  # noqa: SIM115
            if self._idx_tmp
            else None
        )
        self._hash = hashlib.sha256()
        self._offset = 0
        self._count = 0
        self._closed = False
        self._synced = 0  # bytes handed to a background fdatasync so far
        self._syncer: threading.Thread | None = None
        self._sync_error: OSError | None = None
        self.info: ShardInfo | None = None

    @property
    def records(self) -> int:
        """Number of records written so far."""
        return self._count

    @property
    def bytes_written(self) -> int:
        """Bytes written to the data file so far."""
        return self._offset

    def write_bytes(self, data: bytes | bytearray | memoryview) -> int:
        """Append one record whose data is ``data`` (any bytes, e.g. a serialized Example).

        Returns:
            The byte offset at which the record starts.
        """
        return self.write_framed(framing.frame(data))

    def write_framed(self, framed: bytes | bytearray | memoryview) -> int:
        """Append one record that is already framed (:func:`~recordkit.format.framing.frame`).

        The packer frames records in its worker threads and the writer only appends them.

        Returns:
            The byte offset at which the record starts.
        """
        offset = self._offset
        self.write_framed_many([framed])
        return offset

    def write_framed_many(self, frames: list[bytes | bytearray | memoryview]) -> None:
        """Append records that are already framed, in order: the same bytes, index and hash
        as :meth:`write_framed` on each, with one write and one hash update for all of them
        (the packer's writer spends less time per thumbnail)."""
        if self._closed:
            raise ValueError(f"write to closed ShardWriter {self.path}")
        if not frames:
            return
        blob = b"".join(frames)
        offset = self._offset
        self._f.write(blob)
        self._hash.update(blob)
        if self._idx is not None:
            lines = []
            for framed in frames:
                n = len(framed)
                lines.append(f"{offset} {n}\n")
                offset += n
            self._idx.write("".join(lines))
        self._offset += len(blob)
        self._count += len(frames)
        if self._fsync and self._offset - self._synced >= _SYNC_EVERY:
            self._sync_behind()

    def _sync_behind(self) -> None:
        """Start an ``fdatasync`` of what is written so far, unless one is still running."""
        if self._syncer is not None and self._syncer.is_alive():
            return
        self._f.flush()
        self._synced = self._offset
        self._syncer = threading.Thread(
            target=self._datasync, args=(self._f.fileno(),), name="recordkit-fsync", daemon=True
        )
        self._syncer.start()

    def _datasync(self, fd: int) -> None:
        try:
            _fdatasync(fd)
        except OSError as exc:  # raised by close(), where the caller looks for errors
            self._sync_error = exc

    def _join_syncer(self) -> None:
        if self._syncer is not None:
            self._syncer.join()
            self._syncer = None

    def write(self, record: Record) -> int:
        """Append one :class:`~recordkit.format.example.Record`.

        Returns:
            The byte offset at which the record starts.
        """
        head, tail = example_parts(record)
        return self.write_framed(framing.frame_parts(head, record.image, tail))

    def close(self) -> ShardInfo:
        """Flush, fsync and rename both files into place.

        Returns:
            The :class:`ShardInfo` of the finished shard.
        """
        if self._closed:
            assert self.info is not None
            return self.info
        self._join_syncer()
        if self._sync_error is not None:
            raise self._sync_error
        for f in (self._idx, self._f):
            if f is None:
                continue
            f.flush()
            if self._fsync:
                os.fsync(f.fileno())
            f.close()
        if self._idx_tmp is not None:
            os.replace(self._idx_tmp, self.index_path)
        os.replace(self._tmp, self.path)
        self._closed = True
        self.info = ShardInfo(
            path=self.path,
            index_path=self.index_path,
            records=self._count,
            bytes=self._offset,
            sha256=self._hash.hexdigest(),
        )
        return self.info

    def abort(self) -> None:
        """Close and delete the temporary files without renaming anything."""
        if self._closed:
            return
        self._closed = True
        self._join_syncer()  # before its descriptor is closed (and perhaps reused)
        for f in (self._idx, self._f):
            if f is not None:
                with contextlib.suppress(OSError):  # a failing flush (disk full) still closes
                    f.close()
        for p in (self._tmp, self._idx_tmp):
            if p is not None:
                p.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            try:
                self.close()
            except OSError as err:
                self.abort()
                if is_disk_full(err):
                    raise DiskFullError(self.path, err.strerror) from err
                raise
        else:
            self.abort()
            if exc is not None and is_disk_full(exc):
                # Only a write can fill the disk: name the shard (its temporary files are gone).
                raise DiskFullError(self.path, getattr(exc, "strerror", None)) from exc

    def __del__(self) -> None:  # never leave descriptors behind; do not rename
        if not getattr(self, "_closed", True):
            self.abort()
