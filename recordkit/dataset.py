"""``recordkit.open(path)``: a finished shard directory as splits of records.

>>> ds = recordkit.open("shards/")          # doctest: +SKIP
>>> ds.classes[:3], list(ds.splits)          # doctest: +SKIP
(['n01440764', 'n01443537', 'n01484850'], ['train', 'val'])
>>> rec = ds["val"][0]; rec.label, rec.filename   # doctest: +SKIP
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import overload

from recordkit.errors import CorruptRecordError
from recordkit.format import framing
from recordkit.format.example import PayloadError, Record, decode_example
from recordkit.format.manifest import Manifest, ShardEntry, read_manifest
from recordkit.format.reader import ShardReader
from recordkit.remote.urls import is_url, join_url

__all__ = ["Dataset", "Split", "open_dataset", "partition"]

_CHUNK = 1 << 14  # index boundaries converted to Python ints at a time while iterating


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def partition(num_records: int, shard_id: int, num_shards: int) -> range:
    """Return the record indices that reader ``shard_id`` of ``num_shards`` owns.

    The split is cut into ``num_shards`` contiguous, near-equal ranges, exactly as DALI's
    readers do (``start = N * shard_id // num_shards``), so every record belongs to exactly one
    reader whatever the number of files.

    Raises:
        ValueError: ``num_shards < 1`` or ``shard_id`` not in ``[0, num_shards)``.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id must be in [0, {num_shards}), got {shard_id}")
    return range(num_records * shard_id // num_shards, num_records * (shard_id + 1) // num_shards)


class Split(Sequence[Record]):
    """The records of one split, across its shard files, in manifest order.

    Indexing (``split[i]``) is random access through the shards' ``.idx`` files; iteration reads
    the files sequentially. Both check record CRCs unless the dataset was opened with
    ``verify_crc=False``.

    Opening is lazy: each shard's index is read on first access to that shard (or all at once
    with :meth:`load_index`), and held as one int64 array per shard, 8 bytes per record.
    """

    def __init__(
        self,
        root: Path | str,
        name: str,
        shards: Sequence[ShardEntry],
        *,
        verify_crc: bool = True,
    ) -> None:
        self.root = root
        self.name = name
        self.entries = tuple(shards)
        self.readers: list[ShardReader] = [
            _reader(root, e, verify_crc=verify_crc) for e in self.entries
        ]
        self._starts: list[int] = []
        total = 0
        for e in self.entries:
            self._starts.append(total)
            total += e.records
        self._len = total

    @property
    def remote(self) -> bool:
        """Whether the shards are URLs (``s3://``, ``gs://``, ``http(s)://``)."""
        return isinstance(self.root, str)

    @property
    def files(self) -> list[Path]:
        """The shard files, in order (URL strings for a remote split)."""
        return [r.path for r in self.readers]

    @property
    def nbytes(self) -> int:
        """Total size of the shard files in bytes, per the manifest."""
        return sum(e.bytes for e in self.entries)

    def __len__(self) -> int:
        return self._len

    def locate(self, i: int) -> tuple[int, int]:
        """Map a split-wide record index to ``(shard number, index within that shard)``."""
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"record {i} out of range for split {self.name!r} ({self._len})")
        s = bisect.bisect_right(self._starts, i) - 1
        return s, i - self._starts[s]

    def load_index(self) -> Split:
        """Read every shard's index now instead of on first access, checking each against the
        manifest's record count (see :meth:`reader`).

        Loaders call this before forking their workers, which then share one copy of the
        index instead of each reading its own. The files are read by up to one thread per CPU
        (most of the parsing runs in numpy without the GIL), and the threads are gone when
        this returns.

        Returns:
            The split itself.

        Raises:
            IndexMismatchError: An index does not describe its shard file (the first such
                shard in manifest order).
            CorruptRecordError: An index lists another number of records than the manifest.
        """
        n = len(self.readers)
        threads = min(n, _usable_cpus(), 8)
        if threads <= 1:
            for s in range(n):
                self.reader(s)
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(threads, thread_name_prefix="recordkit-index") as pool:
                for _ in pool.map(self.reader, range(n)):  # raises in shard order
                    pass
        return self

    def reader(self, s: int) -> ShardReader:
        """The reader of shard ``s``, once its index agrees with the manifest's record count.

        Raises:
            CorruptRecordError: The shard's index lists another number of records than the
                manifest (the offset is that of the first record the manifest does not count,
                or the end of the file when the index has fewer).
        """
        reader = self.readers[s]
        want, have = self.entries[s].records, len(reader)
        if want != have:
            where = reader.entries[want][0] if have > want else reader.file_size
            raise CorruptRecordError(
                reader.path, where, f"manifest says {want} records, index has {have}"
            )
        return reader

    def read_bytes(self, i: int) -> bytes:
        """Return the raw data (serialized Example) of record ``i``."""
        s, j = self.locate(i)
        return self.reader(s).read_bytes(j)

    @overload
    def __getitem__(self, i: int) -> Record: ...
    @overload
    def __getitem__(self, i: slice) -> list[Record]: ...

    def __getitem__(self, i: int | slice) -> Record | list[Record]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(self._len))]
        s, j = self.locate(i)
        return self.reader(s)[j]

    def iter_bytes(self, shard_id: int = 0, num_shards: int = 1) -> Iterator[bytes]:
        """Sequentially iterate over the raw records of one partition of the split.

        Args:
            shard_id: Which partition (e.g. the rank, or rank * workers + worker).
            num_shards: How many partitions (e.g. the world size).

        Yields:
            The data of each record of ``partition(len(self), shard_id, num_shards)``, in order.
        """
        for _path, _offset, data in self.iter_located(shard_id, num_shards):
            yield data

    def iter_located(
        self, shard_id: int = 0, num_shards: int = 1
    ) -> Iterator[tuple[Path, int, bytes]]:
        """Like :meth:`iter_bytes`, with each record's shard file and byte offset.

        Yields:
            ``(shard path, offset, data)`` per record, in order.

        Raises:
            CorruptRecordError: A damaged record, or a shard whose index or data disagrees
                with the manifest's record count.
        """
        wanted = partition(self._len, shard_id, num_shards)
        if not wanted:
            return
        first, last = self.locate(wanted.start), self.locate(wanted.stop - 1)
        for s in range(first[0], last[0] + 1):
            reader = self.reader(s)
            lo = first[1] if s == first[0] else 0
            hi = last[1] + 1 if s == last[0] else self.entries[s].records
            yield from self._iter_shard(reader, lo, hi)

    @staticmethod
    def _iter_shard(reader: ShardReader, lo: int, hi: int) -> Iterator[tuple[Path, int, bytes]]:
        if lo >= hi:
            return
        entries = reader.entries
        if hi > len(entries):
            raise CorruptRecordError(
                reader.path,
                reader.file_size,
                f"expected {hi} records, index has {len(entries)}",
            )
        path = str(reader.path)
        bounds = entries.offsets
        with reader.open_stream(int(bounds[lo])) as f:
            file_size = reader.file_size if is_url(path) else os.fstat(f.fileno()).st_size
            it = framing.scan(f, path=path, verify_crc=reader.verify_crc, file_size=file_size)
            k = lo
            base, want = lo, bounds[lo : min(lo + _CHUNK, hi) + 1].tolist()
            for offset, framed, data in it:
                if k == hi:
                    break
                j = k - base
                if j + 1 == len(want):  # the next chunk of boundaries, as Python ints
                    base, j, want = k, 0, bounds[k : min(k + _CHUNK, hi) + 1].tolist()
                if offset != want[j] or framed != want[j + 1] - want[j]:
                    raise CorruptRecordError(
                        path, offset, f"record {k} disagrees with the index {entries[k]}"
                    )
                yield reader.path, offset, data
                k += 1
            if k != hi:
                raise CorruptRecordError(
                    path, file_size, f"file ends after {k} records, index lists {len(entries)}"
                )

    def iter(self, shard_id: int = 0, num_shards: int = 1) -> Iterator[Record]:
        """Sequentially iterate over the decoded records of one partition (see iter_bytes)."""
        for path, offset, data in self.iter_located(shard_id, num_shards):
            try:
                yield decode_example(data)
            except PayloadError as exc:
                raise CorruptRecordError(path, offset, str(exc)) from None

    def __iter__(self) -> Iterator[Record]:
        return self.iter()

    def __repr__(self) -> str:
        return f"Split({self.name!r}, records={self._len}, shards={len(self.entries)})"


def _reader(root: Path | str, e: ShardEntry, *, verify_crc: bool) -> ShardReader:
    if isinstance(root, str):  # a URL (see Dataset)
        from recordkit.remote.reader import RemoteShardReader

        return RemoteShardReader(
            join_url(root, e.file),
            index_url=join_url(root, e.index),
            size=e.bytes,
            verify_crc=verify_crc,
        )
    return ShardReader(root / e.file, index_path=root / e.index, verify_crc=verify_crc)


class Dataset(Mapping[str, Split]):
    """A finished shard directory: its manifest, classes and splits.

    Use :func:`recordkit.open` to make one. ``root`` is a :class:`~pathlib.Path`, or the URL
    string of a remote dataset (``s3://``, ``gs://``, ``http(s)://``; see ``docs/REMOTE.md``).
    ``ds["train"]`` is a :class:`Split`; iterating over the dataset gives split names.
    """

    def __init__(self, root: str | os.PathLike[str], *, verify_crc: bool = True) -> None:
        self.root: Path | str
        if is_url(root):
            from recordkit.remote.manifest import read_remote_manifest

            self.root = str(root).rstrip("/")
            self.manifest: Manifest = read_remote_manifest(self.root)
        else:
            self.root = Path(root)
            self.manifest = read_manifest(self.root)
        self.verify_crc = verify_crc
        self.splits: dict[str, Split] = {
            name: Split(self.root, name, entry.shards, verify_crc=verify_crc)
            for name, entry in self.manifest.splits.items()
        }

    @property
    def classes(self) -> list[str]:
        """Class names in label order."""
        return list(self.manifest.classes)

    @property
    def num_classes(self) -> int:
        return len(self.manifest.classes)

    def __getitem__(self, name: str) -> Split:
        try:
            return self.splits[name]
        except KeyError:
            have = ", ".join(self.splits) or "none"
            raise KeyError(f"no split {name!r} in {self.root} (splits: {have})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.splits)

    def __len__(self) -> int:
        return len(self.splits)

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}={len(s)}" for n, s in self.splits.items())
        return f"Dataset({str(self.root)!r}, classes={self.num_classes}, {parts})"


def open_dataset(path: str | os.PathLike[str], *, verify_crc: bool = True) -> Dataset:
    """Open a finished shard directory.

    Args:
        path: Directory holding ``recordkit.json`` and the shards, or its URL
            (``s3://bucket/ds/``, ``gs://…``, ``https://…``): records are then read with HTTP
            range requests through fsspec (``pip install 'recordkit[s3]'`` etc.).
        verify_crc: Check record CRCs on every read (cheap; see :class:`ShardReader`).

    Returns:
        The :class:`Dataset`.

    Raises:
        ManifestError: No manifest, a malformed one, or one from a newer format version.
        RemoteError: A URL that cannot be read (403, 404, or failing after retries).
        ImportError: A URL whose fsspec backend is not installed (the message says what to
            install).
    """
    return Dataset(path, verify_crc=verify_crc)
