"""Training on a remote split through the bounded shard cache (``docs/REMOTE.md``).

- :class:`ShardWindowSampler` orders each epoch so that a rank reads its shards a few at a
  time: the split's shards are permuted with ``(seed, epoch)`` (the same on every rank), their
  records concatenated in that order and cut into ``world_size`` contiguous ranges (so every
  record is read once per epoch by exactly one rank, contract 9), and each rank shuffles its
  records within windows of ``window`` consecutive shards. A rank therefore needs at most two
  windows of shards at a time, whatever the split's size.
- :class:`ShardFeeder` downloads the shards of the epoch into the cache in the order they are
  first needed, ahead of the batches, as far as this rank's share of the cache limit allows,
  and releases each shard once the batches that read it have been taken, so the cache can
  evict it.
- :class:`CachedShardReader` is what the DataLoader workers read through: the local copy
  (``pread``), downloaded on the spot if it is not there yet (the feeder is usually ahead).
- :class:`StreamedBatches` is what the DALI backend's ``fn.external_source`` reads: batch
  ``k`` of an epoch's :class:`ShardWindowSampler` order as encoded images and labels, read
  through the cache while a :class:`ShardFeeder` downloads ahead and releases what was read.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recordkit.dataset import Split, partition
from recordkit.errors import RecordkitError
from recordkit.format import framing
from recordkit.format.reader import ShardReader
from recordkit.loaders.sampling import RecordSampler, epoch_seed
from recordkit.remote.cache import Pin, ShardCache
from recordkit.remote.reader import RemoteShardReader

__all__ = [
    "CachedShardReader",
    "RemoteOptions",
    "ShardFeeder",
    "ShardWindowSampler",
    "StreamedBatches",
    "cached_split",
    "shard_window_indices",
    "window_for",
]

log = logging.getLogger(__name__)

READ_MODES = ("auto", "cache", "direct")


@dataclass(frozen=True)
class RemoteOptions:
    """How :func:`~recordkit.loaders.make_loader` reads a remote split.

    Attributes:
        cache_dir: The shard cache (default ``RECORDKIT_CACHE``, else ``~/.cache/recordkit``).
        cache_limit: Most bytes the cache holds (default ``RECORDKIT_CACHE_LIMIT``, else 20 GB);
            shared by the ranks of a node, each feeding up to ``limit / LOCAL_WORLD_SIZE``.
        read: ``"cache"``: stream whole shards into the cache ahead of use (the order is
            shuffled within windows of shards, :class:`ShardWindowSampler`); ``"direct"``: one
            HTTP range request per record, the same order as a local split; ``"auto"``: the
            cache for training and for DALI, direct for evaluation with the torch backend.
    """

    cache_dir: str | os.PathLike[str] | None = None
    cache_limit: int | None = None
    read: str = "auto"

    def __post_init__(self) -> None:
        if self.read not in READ_MODES:
            raise ValueError(f"read must be one of {', '.join(READ_MODES)}, got {self.read!r}")

    def cache(self) -> ShardCache:
        return ShardCache.create(self.cache_dir, self.cache_limit)


def shard_window_indices(
    shard_records: tuple[int, ...] | list[int],
    rank: int,
    world_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    drop_last: bool = False,
    window: int = 1,
) -> np.ndarray:
    """The record indices rank ``rank`` reads in epoch ``epoch``, shard-window ordered.

    See the module docstring. Without ``shuffle`` this is :func:`rank_indices`'s order (the
    split in file order, cut into contiguous ranges).

    Returns:
        An ``int64`` array of split-wide record indices.
    """
    counts = np.asarray(shard_records, dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    n = int(counts.sum())
    part = partition(n, rank, world_size)
    if not shuffle:
        order = np.arange(part.start, part.stop, dtype=np.int64)
    else:
        perm = np.random.default_rng(epoch_seed(seed, epoch)).permutation(len(counts))
        c = counts[perm]
        pos = np.arange(n, dtype=np.int64)
        shard_at = np.repeat(np.arange(len(perm)), c)  # position -> place in the shard order
        first = np.concatenate(([0], np.cumsum(c)[:-1])).astype(np.int64)
        seq = starts[perm][shard_at] + (pos - first[shard_at])
        seq, group = (
            seq[part.start : part.stop],
            (shard_at // max(1, window))[part.start : part.stop],
        )
        keys = np.random.default_rng(epoch_seed(seed, epoch, 1 + rank)).random(len(seq))
        order = seq[np.lexsort((keys, group))]
    if drop_last:
        order = order[: n // world_size]
    return order.astype(np.int64, copy=False)


class ShardWindowSampler(RecordSampler):
    """:class:`RecordSampler` with :func:`shard_window_indices` order (same arguments, plus
    the split's records per shard and the window in shards)."""

    def __init__(self, shard_records: list[int], *, window: int, **kwargs: Any) -> None:
        super().__init__(int(sum(shard_records)), **kwargs)
        self.shard_records = tuple(int(c) for c in shard_records)
        self.window = window

    def settings(self) -> tuple[Any, ...]:
        return (*super().settings(), self.shard_records, self.window)

    def indices(self) -> np.ndarray:
        plan = (*self.settings(), self.epoch)
        if self._order is None or self._order[0] != plan:
            order = shard_window_indices(
                self.shard_records,
                self.rank,
                self.world_size,
                shuffle=self.shuffle,
                seed=self.seed,
                epoch=self.epoch,
                drop_last=self.drop_last,
                window=self.window,
            )
            order.flags.writeable = False
            self._order = (plan, order)
        return self._order[1]


def window_for(split: Split, budget: int) -> int:
    """Shards per shuffle window so that two windows and one shard more fit in ``budget``.

    Raises:
        RecordkitError: ``budget`` holds fewer than three of the split's largest shards.
    """
    largest = max((e.bytes for e in split.entries), default=0)
    if largest == 0:
        return 1
    fit = budget // largest
    if fit < 3:
        raise RecordkitError(
            f"cache limit too small: streaming needs room for 3 of the largest shard "
            f"({largest} bytes) per rank on this node, has {budget} bytes; raise "
            "--cache-limit / RECORDKIT_CACHE_LIMIT"
        )
    return max(1, (fit - 1) // 2)


class CachedShardReader(ShardReader):
    """Reads one remote shard from its local copy in the cache (downloaded when missing).

    Each read opens, ``pread``s and closes the file, so an evicted copy never lingers open.
    """

    def __init__(self, remote: RemoteShardReader, cache: ShardCache, local: Path, sha256: str):
        super().__init__(local, index_path=local.with_suffix(".idx"), verify_crc=remote.verify_crc)
        self.remote = remote
        self.cache = cache
        self.sha256 = sha256
        self._size = remote.file_size

    @property
    def file_size(self) -> int:
        return self.remote.file_size

    @property
    def entries(self):  # type: ignore[override]
        return self.remote.entries

    def ensure(self, *, pin: bool = False) -> Pin | Path:
        """The local copy, downloaded (and verified) first when it is not there."""
        return self.cache.fetch(
            self.remote.path,
            self.path,
            size=self.file_size,
            index=self.entries,
            sha256=self.sha256,
            pin=pin,
        )

    def read_bytes(self, i: int) -> bytes:
        offset, end = self.entries.span(i, self.remote.path)
        for _ in range(3):  # evicted between the check and the open: fetch again
            self.ensure()
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                return framing.read_record_at(
                    fd,
                    offset,
                    self.file_size,
                    path=str(self.path),
                    verify_crc=self.verify_crc,
                    expected_size=end - offset,
                )
            finally:
                os.close(fd)
        raise RecordkitError(f"{self.path}: evicted from the cache as soon as downloaded, 3 times")

    def open_stream(self, start: int = 0):  # type: ignore[override]
        self.ensure()
        return super().open_stream(start)

    def __repr__(self) -> str:
        return f"CachedShardReader({self.remote.path!r} -> {str(self.path)!r})"


def cached_split(split: Split, cache: ShardCache) -> Split:
    """A copy of remote ``split`` whose readers read through ``cache``."""
    if not split.remote:
        raise ValueError("cached_split needs a remote split")
    out = copy.copy(split)
    out.readers = [
        CachedShardReader(r, cache, cache.path_for(str(split.root), e.file), e.sha256)
        for r, e in zip(split.readers, split.entries, strict=True)  # type: ignore[misc]
    ]
    return out


class ShardFeeder:
    """Downloads one epoch's shards ahead of the batches, within a byte budget.

    Args:
        split: A split of :class:`CachedShardReader` s (:func:`cached_split`).
        budget: Bytes of shards this process keeps pinned at most.
    """

    def __init__(self, split: Split, budget: int) -> None:
        self.split = split
        self.budget = budget
        self._starts = np.array([0, *np.cumsum([e.records for e in split.entries])], np.int64)
        self._thread: threading.Thread | None = None
        self._cv = threading.Condition()
        self._pins: dict[int, Pin] = {}
        self._stop = False
        self._error: BaseException | None = None
        self._consumed = 0  # records whose batches were taken
        self._last: dict[int, int] = {}
        self.downloads = 0

    def start(self, indices: np.ndarray) -> ShardFeeder:
        """Begin feeding an epoch that reads ``indices`` in this order."""
        self.stop()
        shard = np.searchsorted(self._starts, indices, side="right") - 1
        order, first = np.unique(shard, return_index=True)
        rev_last = len(shard) - 1 - np.unique(shard[::-1], return_index=True)[1]
        self._last = dict(zip(order.tolist(), rev_last.tolist(), strict=True))
        plan = order[np.argsort(first, kind="stable")].tolist()
        self._stop, self._error, self._consumed = False, None, 0
        self._thread = threading.Thread(
            target=self._run, args=(plan,), name="recordkit-feeder", daemon=True
        )
        self._thread.start()
        return self

    def _pinned_bytes(self) -> int:
        return sum(p.size for p in self._pins.values())

    def _run(self, plan: list[int]) -> None:
        try:
            for s in plan:
                size = self.split.entries[s].bytes
                with self._cv:
                    while (
                        not self._stop and self._pins and self._pinned_bytes() + size > self.budget
                    ):
                        self._cv.wait(0.5)
                    if self._stop:
                        return
                    if self._last[s] < self._consumed:
                        continue  # already read (a worker fetched it itself)
                reader = self.split.readers[s]
                existed = reader.path.exists()
                pin = reader.ensure(pin=True)  # type: ignore[attr-defined]
                self.downloads += not existed
                with self._cv:
                    self._pins[s] = pin  # type: ignore[assignment]
                    self._release_done()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._error = exc
            log.debug("feeder stopped: %s", exc)

    def _release_done(self) -> None:
        for s in [s for s in self._pins if self._last[s] < self._consumed]:
            self._pins.pop(s).release()
        self._cv.notify_all()

    def consumed(self, records: int) -> None:
        """The batches covering the epoch's first ``records`` indices were taken.

        Raises:
            Exception: What stopped the feeder (a remote error, a corrupt download).
        """
        with self._cv:
            self._consumed = records
            self._release_done()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Stop feeding and release every pin."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._cv:
            for p in self._pins.values():
                p.release()
            self._pins.clear()


class StreamedBatches:
    """One rank's batches of a remote split, read through the cache: the DALI backend's input.

    :meth:`source` gives the callable that a pipeline's ``fn.external_source`` calls with the
    iteration number ``k``: batch ``k`` of the epoch's :class:`ShardWindowSampler` order (every
    record of the rank's part once per epoch), as two lists: the encoded images (1-D uint8
    arrays) and the labels (1-D int64 arrays). A last partial batch is padded with copies of
    its last record, as DALI's tfrecord reader pads it (``pad_last_batch``); the loader trims
    them. The callable takes the iteration as its one argument, so a pipeline restored from a
    DALI checkpoint asks for the batch after the last one consumed (DALI records the
    iteration in the checkpoint).

    A :class:`ShardFeeder` downloads the epoch's shards ahead of the reads, within ``budget``,
    and a shard is released as soon as the last batch that reads it has been handed to DALI
    (which holds the bytes from then on), so the cache can evict it. Batch ``k + 1`` is read
    on a thread while DALI works on batch ``k`` (the call for it then only takes it), so the
    reads and parsing (~0.1 ms a record) overlap the training step instead of adding to it.

    Args:
        split: The remote split read through the cache (:func:`cached_split`).
        sampler: This rank's order (its epoch is set here, per call).
        batch_size: Records per batch.
        budget: Bytes of shards the feeder keeps pinned at most.
    """

    def __init__(
        self, split: Split, sampler: ShardWindowSampler, batch_size: int, budget: int
    ) -> None:
        self.split = split
        self.sampler = copy.copy(sampler)
        self.batch_size = batch_size
        self.feeder = ShardFeeder(split, budget)
        self._lock = threading.Lock()  # one call at a time; the read-ahead runs under it too
        self._next: tuple[int, int] | None = None  # (epoch, record) the feeder expects next
        self._base = 0  # the record of the epoch's order the feeder started at
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: tuple[int, int, Future[_Batch]] | None = None  # (epoch, k, its read)

    def source(self, epoch: int) -> _EpochSource:
        """The ``fn.external_source`` callable of epoch ``epoch``."""
        return _EpochSource(self, epoch)

    def batches(self) -> int:
        """Batches per epoch: full ones only with ``drop_last``, else the last one partial."""
        n, b = len(self.sampler), self.batch_size
        return n // b if self.sampler.drop_last else -(-n // b)

    def batch(self, epoch: int, k: int) -> _Batch:
        """Batch ``k`` of epoch ``epoch``: ``(encoded images, labels)`` (see the class).

        Raises:
            IndexError: No batch ``k`` in the epoch.
            CorruptRecordError: A record is not an image ``Example`` (or fails its CRCs).
            Exception: What stopped the feeder (a remote error, a corrupt download).
        """
        with self._lock:
            ahead = self._take_ahead()
            if ahead is not None and ahead[:2] == (epoch, k):
                out = ahead[2].result()  # raises what the read raised
            else:
                out = self._read(epoch, k)
            if k + 1 < self.batches():
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="recordkit-source")
                self._ahead = (epoch, k + 1, self._pool.submit(self._read, epoch, k + 1))
        return out

    def _take_ahead(self) -> tuple[int, int, Future[_Batch]] | None:
        """The read-ahead, finished (one for another batch: waited for and its error dropped)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            wait([ahead[2]])
        return ahead

    def _read(self, epoch: int, k: int) -> _Batch:
        """Read batch ``k`` of ``epoch`` (one read at a time: under the lock or as the read-ahead,
        which every call waits for first)."""
        self.sampler.set_epoch(epoch)
        order = self.sampler.indices()[: self.batches() * self.batch_size]
        lo = k * self.batch_size
        if not 0 <= lo < len(order):
            raise IndexError(f"no batch {k} in epoch {epoch} ({len(order)} records)")
        hi = min(lo + self.batch_size, len(order))
        if self._next != (epoch, lo):  # a new pass, or a resume mid-epoch
            self.feeder.start(order[lo:])
            self._base = lo
        images, labels = [], []
        for i in order[lo:hi].tolist():
            image, label = self._record(i)
            images.append(image)
            labels.append(label)
        self._next = (epoch, hi)
        self.feeder.consumed(hi - self._base)  # the arrays hold the bytes: done with the shards
        pad = self.batch_size - len(images)
        return images + images[-1:] * pad, labels + labels[-1:] * pad

    def _record(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        from recordkit.errors import CorruptRecordError
        from recordkit.format.example import PayloadError, example_image_labels

        data = self.split.read_bytes(i)
        try:
            image, labels = example_image_labels(data)
        except PayloadError as exc:
            s, j = self.split.locate(i)
            reader = self.split.readers[s]
            raise CorruptRecordError(reader.path, reader.entries[j][0], str(exc)) from None
        return np.frombuffer(image, np.uint8), np.array(labels, np.int64)

    def close(self) -> None:
        """Drop the read-ahead, stop the feeder and release its pins (a later batch starts
        them again)."""
        with self._lock:
            self._take_ahead()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            self.feeder.stop()
            self._next = None


_Batch = tuple[list[np.ndarray], list[np.ndarray]]


class _EpochSource:
    """``f(iteration)`` -> batch ``iteration`` of one epoch (:meth:`StreamedBatches.source`)."""

    def __init__(self, batches: StreamedBatches, epoch: int) -> None:
        self.batches = batches
        self.epoch = epoch

    def __call__(self, iteration: int) -> _Batch:
        return self.batches.batch(self.epoch, iteration)
