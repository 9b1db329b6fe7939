"""Read one shard: random access through its ``.idx``, or sequential iteration."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from recordkit.errors import CorruptRecordError
from recordkit.format import framing
from recordkit.format.example import PayloadError, Record, decode_example
from recordkit.format.index import build_index, index_path_for, read_index
from recordkit.safeio import open_regular

__all__ = ["ShardReader"]

if TYPE_CHECKING:
    from recordkit.format.record_index import RecordIndex


class ShardReader:
    """Random-access and sequential reader of one TFRecord file.

    The file is opened lazily, on first use, and reopened after a ``fork`` (the process id is
    checked), so a reader can be built in a parent process and used in DataLoader workers. Reads
    use ``os.pread`` and are safe to share between threads.

    The index is held as one int64 array (:class:`~recordkit.format.record_index.RecordIndex`,
    8 bytes per record). Workers forked after it was loaded share its pages; a pickled reader
    leaves an index read from the ``.idx`` file behind (the receiving process reads it again
    when needed), so the pickle stays small whatever the record count.

    Args:
        path: The ``.tfrecord`` file.
        index_path: Its index; defaults to the ``.idx`` with the same stem. When that file does
            not exist the index is built by scanning the file (the first random access pays it).
        verify_crc: Check both CRCs of each record read. CRC32C runs at several GB/s, so this is
            cheap next to decoding an image; switch it off only on hot paths over trusted data.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        index_path: str | os.PathLike[str] | None = None,
        verify_crc: bool = True,
    ) -> None:
        self.path = Path(path)
        self.index_path = Path(index_path) if index_path is not None else index_path_for(path)
        self.verify_crc = verify_crc
        self._entries: RecordIndex | None = None
        self._scanned = False  # the entries come from a scan, not from the .idx file
        self._fd: int | None = None
        self._pid: int | None = None
        self._size: int | None = None

    # -- file handle management ------------------------------------------------------------
    def _ensure_open(self) -> int:
        pid = os.getpid()
        if self._fd is None or self._pid != pid:
            # after fork: a descriptor of our own; a FIFO or device is refused, never waited on
            self._fd = open_regular(self.path, what="shard")
            self._pid = pid
            self._size = os.fstat(self._fd).st_size
        return self._fd

    @property
    def file_size(self) -> int:
        """Size of the data file in bytes."""
        self._ensure_open()
        assert self._size is not None
        return self._size

    def close(self) -> None:
        """Close the file descriptor (it is reopened on next use)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_fd=None, _pid=None)  # descriptors do not cross process boundaries
        if not self._scanned:
            state["_entries"] = None  # read again from the .idx where needed: a small pickle
        return state

    # -- index -------------------------------------------------------------------------------
    @property
    def entries(self) -> RecordIndex:
        """``(offset, framed_size)`` of every record, from the index (or a scan), read on first
        use: a sequence of tuples held as one int64 array of record boundaries."""
        if self._entries is None:
            if self.index_path.exists():
                self._entries = read_index(
                    self.index_path, data_size=self.file_size, data_path=self.path
                )
            else:
                self._entries = build_index(self.path, verify_crc=self.verify_crc)
                self._scanned = True
        return self._entries

    def __len__(self) -> int:
        return len(self.entries)

    # -- access ------------------------------------------------------------------------------
    def read_bytes(self, i: int) -> bytes:
        """Return the data of record ``i`` (a serialized Example for our shards).

        Raises:
            IndexError: ``i`` is out of range.
            CorruptRecordError: The record is damaged or disagrees with the index.
        """
        offset, end = self.entries.span(i, self.path)
        fd = self._ensure_open()
        assert self._size is not None
        return framing.read_record_at(
            fd,
            offset,
            self._size,
            path=str(self.path),
            verify_crc=self.verify_crc,
            expected_size=end - offset,
        )

    def __getitem__(self, i: int) -> Record:
        """Return record ``i`` decoded as a :class:`~recordkit.format.example.Record`."""
        data = self.read_bytes(i)
        try:
            return decode_example(data)
        except PayloadError as exc:
            raise CorruptRecordError(self.path, self.entries[i][0], str(exc)) from None

    def open_stream(self, start: int = 0) -> BinaryIO:
        """The file as a buffered binary stream positioned at ``start`` (close it after use).

        Raises:
            InputFileError: The path is not a regular file.
        """
        f = os.fdopen(open_regular(self.path, what="shard"), "rb", buffering=1 << 20)
        if start:
            f.seek(start)
        return f

    def iter_bytes(self) -> Iterator[tuple[int, bytes]]:
        """Iterate sequentially over ``(offset, data)`` of every record, without the index.

        Raises:
            CorruptRecordError: At the first damaged record.
        """
        path = str(self.path)
        with os.fdopen(open_regular(self.path, what="shard"), "rb", buffering=1 << 20) as f:
            size = os.fstat(f.fileno()).st_size
            for offset, _, data in framing.scan(
                f, path=path, verify_crc=self.verify_crc, file_size=size
            ):
                yield offset, data

    def __iter__(self) -> Iterator[Record]:
        """Iterate sequentially over decoded records."""
        for offset, data in self.iter_bytes():
            try:
                yield decode_example(data)
            except PayloadError as exc:
                raise CorruptRecordError(self.path, offset, str(exc)) from None

    def __repr__(self) -> str:
        return f"ShardReader({str(self.path)!r})"
