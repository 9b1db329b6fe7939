"""Random access to one remote shard: its ``.idx`` in memory, each record one range request."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any

from recordkit.format import framing
from recordkit.format.index import index_from_bytes, max_index_bytes
from recordkit.format.reader import ShardReader
from recordkit.format.record_index import RecordIndex
from recordkit.remote.fs import RangeStream, filesystem, read_all, read_range

__all__ = ["RemoteShardReader"]


class RemoteShardReader(ShardReader):
    """A :class:`~recordkit.format.reader.ShardReader` over a URL.

    The size comes from the manifest (no request), the index is fetched whole on first use
    (one GET, bounded by the largest index a file of that size can have) and kept in memory;
    ``read_bytes(i)`` is one HTTP range request of exactly record ``i``'s framed bytes, CRCs
    checked. Sequential iteration streams the file in 8 MiB range requests. Every request is
    retried on transient errors (:func:`recordkit.remote.fs.with_retries`). Pickles with its
    index (no request again in a DataLoader worker).

    Args:
        url: The ``.tfrecord`` URL.
        index_url: Its ``.idx`` URL.
        size: The file's size in bytes, from the manifest.
        verify_crc: Check both CRCs of each record read.
    """

    def __init__(self, url: str, *, index_url: str, size: int, verify_crc: bool = True) -> None:
        self.path = url  # type: ignore[assignment]  # a URL: no Path (it would fold "//")
        self.index_path = index_url  # type: ignore[assignment]
        self.verify_crc = verify_crc
        self._entries: RecordIndex | None = None
        self._scanned = False
        self._fd = None
        self._pid = None
        self._size = size
        self._fs: Any = None

    @property
    def file_size(self) -> int:
        return self._size  # type: ignore[return-value]

    def _filesystem(self) -> Any:
        # fsspec's async filesystems are not fork-safe: a DataLoader worker gets its own
        if self._fs is None or self._pid != os.getpid():
            self._fs = filesystem(self.path)
            self._pid = os.getpid()
        return self._fs

    def close(self) -> None:
        pass

    def __getstate__(self) -> dict:
        # the index travels; the fsspec session does not
        return {**self.__dict__, "_fs": None, "_pid": None}

    @property
    def entries(self) -> RecordIndex:
        if self._entries is None:
            raw = read_all(
                self.index_path, limit=max_index_bytes(self.file_size), fs=self._filesystem()
            )
            self._entries = index_from_bytes(raw, self.index_path, data_size=self.file_size)
        return self._entries

    def read_bytes(self, i: int) -> bytes:
        offset, end = self.entries.span(i, self.path)
        buf = read_range(self.path, offset, end, fs=self._filesystem())
        return framing.unframe(
            buf, offset, self.file_size, path=self.path, verify_crc=self.verify_crc
        )

    def open_stream(self, start: int = 0) -> io.BufferedReader:
        """The file as a sequential stream from byte ``start`` (8 MiB range requests)."""
        return RangeStream.open(self.path, self.file_size, start=start)

    def iter_bytes(self) -> Iterator[tuple[int, bytes]]:
        with self.open_stream() as f:
            for offset, _, data in framing.scan(
                f, path=self.path, verify_crc=self.verify_crc, file_size=self.file_size
            ):
                yield offset, data

    def __repr__(self) -> str:
        return f"RemoteShardReader({self.path!r})"
