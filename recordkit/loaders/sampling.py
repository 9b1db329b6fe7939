"""Which records each rank reads in each epoch: one rule for both backends (contract 9).

- The split's ``N`` records are (optionally) permuted with a generator seeded by
  ``(seed, epoch)`` — the same permutation on every rank — and then cut into ``world_size``
  contiguous ranges with :func:`recordkit.partition` (DALI's ``shard_id``/``num_shards``
  formula). Rank ``r`` reads range ``r``. The ranges are disjoint and cover the split, so the
  union over ranks of one epoch is every record exactly once.
- With ``drop_last`` every rank reads ``N // world_size`` records (the permutation's tail
  beyond that is left out of the epoch; a different tail each epoch when shuffling) and yields
  ``(N // world_size) // batch_size`` full batches: the same count on every rank, which
  DistributedDataParallel needs.
- Without ``drop_last`` (validation) every record of the range is read and the last batch may
  be partial: nothing dropped, nothing duplicated. Ranks may differ by one batch.

Only numpy and the standard library; torch is not needed to compute a sampling plan.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from recordkit.dataset import partition

__all__ = [
    "RecordSampler",
    "batches_per_rank",
    "epoch_seed",
    "rank_indices",
    "resolve_rank_world",
]

log = logging.getLogger(__name__)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 31-bit seed derived from ``(seed, epoch, rank)`` (stable across runs and platforms)."""
    ss = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, rank & 0xFFFFFFFF])
    return int(ss.generate_state(1)[0] & 0x7FFFFFFF)


def rank_indices(
    num_records: int,
    rank: int,
    world_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    drop_last: bool = False,
) -> np.ndarray:
    """The record indices rank ``rank`` reads in epoch ``epoch``, in reading order.

    Args:
        num_records: Records in the split.
        rank: This rank, ``0 <= rank < world_size``.
        world_size: Number of ranks.
        shuffle: Permute the split with a generator seeded by ``(seed, epoch)`` first.
        seed: Base seed; equal on every rank.
        epoch: The epoch (see :meth:`RecordSampler.set_epoch`).
        drop_last: Keep only ``num_records // world_size`` indices so all ranks read as many.

    Returns:
        An ``int64`` array of indices.
    """
    part = partition(num_records, rank, world_size)
    if shuffle:
        rng = np.random.default_rng(epoch_seed(seed, epoch))
        order = rng.permutation(num_records)[part.start : part.stop]
    else:
        order = np.arange(part.start, part.stop, dtype=np.int64)
    if drop_last:
        order = order[: num_records // world_size]
    return order.astype(np.int64, copy=False)


def batches_per_rank(
    num_records: int, rank: int, world_size: int, batch_size: int, drop_last: bool
) -> int:
    """Number of batches rank ``rank`` yields per epoch under the rule in this module."""
    if drop_last:
        return (num_records // world_size) // batch_size
    return math.ceil(len(partition(num_records, rank, world_size)) / batch_size)


def resolve_rank_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Fill in ``rank`` / ``world_size``: torch.distributed if initialized, else env, else 0/1.

    The environment variables are torchrun's ``RANK`` and ``WORLD_SIZE``. torch is consulted only
    if it is already imported (this function never imports it).

    Raises:
        ValueError: The result is not ``0 <= rank < world_size``.
    """
    if rank is None or world_size is None:
        d_rank, d_world = 0, 1
        import sys

        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            d_rank, d_world = dist.get_rank(), dist.get_world_size()
        elif "WORLD_SIZE" in os.environ:
            d_rank = int(os.environ.get("RANK", "0"))
            d_world = int(os.environ["WORLD_SIZE"])
        rank = d_rank if rank is None else rank
        world_size = d_world if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


class RecordSampler:
    """A ``DistributedSampler``-like sampler over one split: see the module docstring.

    Use it as ``DataLoader(dataset, sampler=RecordSampler(len(dataset), ...))`` and call
    :meth:`set_epoch` before each epoch. The same ``seed`` and epoch give the same order.
    ``set_epoch(epoch, start=k)`` resumes an epoch mid-way: iteration skips the first ``k``
    indices of the epoch's order (and nothing else: the indices and per-sample seeds after them
    are those of the whole epoch).

    Args:
        num_records: Records in the split.
        rank: This rank (default: from torch.distributed or ``RANK``).
        world_size: Number of ranks (default: from torch.distributed or ``WORLD_SIZE``).
        shuffle: Reshuffle every epoch (training).
        seed: Base seed, equal on all ranks.
        drop_last: Equalize ranks at ``num_records // world_size`` samples each.
        with_seeds: Yield ``(index, sample_seed)`` pairs instead of indices, so that random
            augmentation is a function of ``(seed, epoch, index)`` whatever the worker count.
    """

    def __init__(
        self,
        num_records: int,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        with_seeds: bool = False,
    ) -> None:
        self.num_records = num_records
        self.rank, self.world_size = resolve_rank_world(rank, world_size)
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.with_seeds = with_seeds
        self.epoch = 0
        self.start = 0  # indices of this epoch's order already consumed (a mid-epoch resume)
        self._order: tuple[tuple[int, ...], np.ndarray] | None = None  # (plan, its indices)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch whose order the next iteration yields.

        Args:
            epoch: The epoch.
            start: Skip this many indices of the epoch's order (those consumed before a
                mid-epoch checkpoint); ``0 <= start <= len(self)``.

        Raises:
            ValueError: ``start`` is out of range.
        """
        if not 0 <= start <= len(self):
            raise ValueError(f"start must be in [0, {len(self)}], got {start}")
        self.epoch = epoch
        self.start = start

    def settings(self) -> tuple[Any, ...]:
        """Everything but the epoch that decides what the sampler yields."""
        return (
            self.num_records,
            self.rank,
            self.world_size,
            self.shuffle,
            self.seed,
            self.drop_last,
            self.with_seeds,
        )

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch (read-only; computed once per epoch and
        settings, so a loader can compute them ahead, beside other work)."""
        plan = (*self.settings(), self.epoch)
        if self._order is None or self._order[0] != plan:
            order = rank_indices(
                self.num_records,
                self.rank,
                self.world_size,
                shuffle=self.shuffle,
                seed=self.seed,
                epoch=self.epoch,
                drop_last=self.drop_last,
            )
            order.flags.writeable = False
            self._order = (plan, order)
        return self._order[1]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_order": None}  # recomputed where needed: a small pickle

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        # The epoch's order is fixed here (as an int64 array, 8 bytes per index); Python ints
        # and pairs are made a chunk at a time as the DataLoader asks, never for the whole
        # epoch at once (1.28 M pairs would be ~150 MB and 0.3 s before the first batch).
        idx = self.indices()[self.start :]
        base = epoch_seed(self.seed, self.epoch, 1 + self.rank) << 32 if self.with_seeds else None
        return _chunked(idx, base)

    def __len__(self) -> int:
        """Indices in a whole epoch (``start`` does not change it)."""
        if self.drop_last:
            return self.num_records // self.world_size
        return len(partition(self.num_records, self.rank, self.world_size))


_CHUNK = 1 << 12


def _chunked(idx: np.ndarray, base: int | None) -> Iterator[Any]:
    """``idx`` as Python ints, or as ``(i, base | i)`` pairs, converted a chunk at a time."""
    for lo in range(0, len(idx), _CHUNK):
        chunk = idx[lo : lo + _CHUNK].tolist()
        if base is None:
            yield from chunk
        else:
            yield from ((i, base | i) for i in chunk)
