"""Shared-memory batch buffers that a DataLoader worker reuses once the main process is done.

A DataLoader worker collates each batch into a *fresh* shared-memory block (``default_collate``
in a worker: ``shm_open`` + ``ftruncate`` + ``mmap``), so every batch pays for the kernel
allocating and zeroing its pages on the worker's first write, and the main process maps the
block again and faults on its pages on its first read. For a 64 x 224 x 224 x 3 uint8 batch
that is ~9.5 ms in the worker against ~2.4 ms to copy the same samples into memory already
mapped (one core, ``docs/BENCHMARKS.md``), ~110 us per image, ~4 % of a 480-px training sample.

:class:`BatchSlots` keeps a few blocks per worker and writes a batch into one the main process
has released. Each block starts with a header byte, 1 while the main process may still read the
batch: the worker sets it when it fills the block; the main process clears it
(:meth:`SlotRelease.release`) only when nothing it hands on can read the block any more (the
normalized batch is a copy, or a pinned / device copy). The worker never waits: when no block
of the right size is free (batches dropped by a DataLoader reset are never released, an
exception left one behind, the main process is slow) it takes a fresh block and forgets the
oldest, which then lives as long as whoever still maps it. A block is therefore written only
after the process that read it said it was done, whatever the timing.

The main process keeps the storages of the last blocks it received (:class:`ReceivedSlots`),
so torch's fd-sharing finds the block already mapped (its ``shared_cache``) and neither maps
it again nor faults on its pages.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import torch

__all__ = ["HEADER_BYTES", "BatchSlots", "ReceivedSlots", "SlotRelease"]

HEADER_BYTES = 64
"""Bytes before a block's batch: byte 0 is the in-use flag; 64 keeps the batch cache-aligned."""


class SlotRelease:
    """The main process's handle on one block: :meth:`release` tells its worker it may reuse it.

    Travels beside the batch through the worker's result queue (its storage is sent as torch
    sends any shared tensor: the block's file descriptor). Not a tensor, so the DataLoader's
    pin-memory thread leaves it alone.
    """

    def __init__(self, storage: torch.UntypedStorage) -> None:
        self.storage = storage

    def release(self, output: torch.Tensor | None = None) -> bool:
        """Clear the block's in-use flag, unless ``output`` is a view of the block itself.

        Returns:
            Whether the block was released.
        """
        if output is not None and output.untyped_storage().data_ptr() == self.storage.data_ptr():
            return False  # what the caller gets reads the block: never reuse it
        self.storage[0] = 0
        return True


class BatchSlots:
    """A worker's pool of shared-memory blocks for collated uint8 batches.

    Args:
        keep: Most blocks kept for reuse (a batch in the main process's hands, the ones queued
            for it, the one being filled: ``prefetch + 2`` is enough).
    """

    def __init__(self, keep: int) -> None:
        self.keep = max(1, keep)
        self._pool: list[torch.UntypedStorage] = []

    def __len__(self) -> int:
        return len(self._pool)

    def take(self, shape: Sequence[int]) -> tuple[torch.Tensor, SlotRelease]:
        """A uint8 tensor of ``shape`` in a free block (contents undefined), marked in use.

        Returns:
            ``(tensor, handle)``; send both to the main process, which releases the block.
        """
        nbytes = HEADER_BYTES + math.prod(int(n) for n in shape)
        storage = next((s for s in self._pool if s.nbytes() == nbytes and s[0] == 0), None)
        if storage is None:
            storage = torch.UntypedStorage._new_shared(nbytes)
            self._pool.append(storage)
            if len(self._pool) > self.keep:
                del self._pool[0]  # the oldest: dropped batches are never released
        storage[0] = 1
        batch = torch.empty(0, dtype=torch.uint8).set_(storage, HEADER_BYTES, tuple(shape))
        return batch, SlotRelease(storage)


class ReceivedSlots:
    """The main process's references to the last blocks received, so each is mapped once.

    torch's fd-sharing looks a received block up among the storages still alive in this
    process (``shared_cache``): while one is kept here the block arrives without an ``mmap`` and
    without page faults on its first read.

    Args:
        keep: How many to keep (the workers' blocks together: ``workers * (prefetch + 2)``).
    """

    def __init__(self, keep: int) -> None:
        self._kept: deque[torch.UntypedStorage] = deque(maxlen=max(1, keep))

    def __len__(self) -> int:
        return len(self._kept)

    def clear(self) -> None:
        """Let go of every block (the loader's workers are gone or going)."""
        self._kept.clear()

    def add(self, handle: SlotRelease) -> None:
        """Keep ``handle``'s storage mapped (if not kept already)."""
        ptr = handle.storage.data_ptr()
        if all(s.data_ptr() != ptr for s in self._kept):
            self._kept.append(handle.storage)
