"""The in-memory index of one shard: record boundaries as one int64 array, no per-record objects.

A shard's records are contiguous: record ``k`` spans bytes ``[offsets[k], offsets[k + 1])`` of
the file, from ``offsets[0] == 0`` to ``offsets[n]``, the end of the last record (the file size
for a complete shard). So ``n + 1`` int64 boundaries, 8 bytes per record, describe the whole
``.idx`` file; sizes are their differences. A million-record split costs 8 MB, which pickles as
one buffer and, after a ``fork``, is shared by DataLoader workers (nothing writes to its pages:
no reference counts per record).

>>> idx = RecordIndex.from_entries([(0, 20), (20, 35)])
>>> len(idx), idx[1], idx.offsets.tolist(), idx.sizes.tolist()
(2, (20, 35), [0, 20, 55], [20, 35])
>>> idx == [(0, 20), (20, 35)]
True
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import pairwise
from typing import Any, overload

import numpy as np

__all__ = ["RecordIndex"]

_CHUNK = 1 << 14  # entries converted to Python ints at a time when iterating


class RecordIndex(Sequence[tuple[int, int]]):
    """``(offset, framed size)`` of every record of a shard, held as ``n + 1`` boundaries.

    Behaves as a read-only sequence of ``(offset, size)`` tuples, so code written for the list
    that :func:`~recordkit.format.index.read_index` used to return keeps working, and compares
    equal to such a list; the arrays are there for vectorised use.

    Args:
        offsets: ``n + 1`` non-decreasing boundaries starting at 0 (int64; copied only when
            another dtype, layout or a writable array is given).

    Raises:
        ValueError: ``offsets`` is empty, not one-dimensional, does not start at 0, or
            decreases.
    """

    __slots__ = ("offsets",)

    offsets: np.ndarray

    def __init__(self, offsets: np.ndarray | Sequence[int]) -> None:
        arr = np.asarray(offsets)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"offsets must be a non-empty 1-D array, got shape {arr.shape}")
        if arr.dtype != np.int64 or not arr.flags.c_contiguous or arr.flags.writeable:
            arr = np.array(arr, dtype=np.int64)  # our own copy, read-only below
        if arr[0] != 0:
            raise ValueError(f"offsets must start at 0, got {int(arr[0])}")
        if arr.size > 1 and bool((arr[1:] < arr[:-1]).any()):
            raise ValueError("offsets must not decrease")
        arr.flags.writeable = False
        self.offsets = arr

    @classmethod
    def trusted(cls, offsets: np.ndarray) -> RecordIndex:
        """Wrap boundaries the caller has already checked (int64, 1-D, from 0, never
        decreasing) without another pass over them; the array is made read-only."""
        obj = cls.__new__(cls)
        offsets.flags.writeable = False
        obj.offsets = offsets
        return obj

    @classmethod
    def from_entries(cls, entries: Iterable[tuple[int, int]]) -> RecordIndex:
        """Build from ``(offset, size)`` pairs that are contiguous from 0.

        Raises:
            ValueError: An entry does not start where the previous one ended.
        """
        arr = np.array(list(entries), dtype=np.int64).reshape(-1, 2)
        return cls.from_array(arr)

    @classmethod
    def from_array(cls, entries: np.ndarray) -> RecordIndex:
        """Build from an ``(n, 2)`` array of ``(offset, size)`` rows contiguous from 0.

        Raises:
            ValueError: A row does not start where the previous one ended.
        """
        k = first_gap(entries)
        if k is not None:
            raise ValueError(f"entry {k} does not start where the previous one ends")
        bounds = np.zeros(len(entries) + 1, dtype=np.int64)
        if len(entries):
            end = int(entries[-1, 0]) + int(entries[-1, 1])
            if end > np.iinfo(np.int64).max:
                raise ValueError(f"the last entry ends at {end}, past any int64 offset")
            bounds[:-1], bounds[-1] = entries[:, 0], end
        bounds.flags.writeable = False  # ours: no copy in __init__
        return cls(bounds)  # checks that no size is negative

    @property
    def sizes(self) -> np.ndarray:
        """Framed size of each record (a new int64 array of ``n`` entries)."""
        return np.diff(self.offsets)

    @property
    def starts(self) -> np.ndarray:
        """Offset of each record (a read-only view of ``n`` entries)."""
        return self.offsets[:-1]

    @property
    def end(self) -> int:
        """Where the last record ends: the size of the data file it indexes when complete."""
        return int(self.offsets[-1])

    @property
    def nbytes(self) -> int:
        """Bytes of memory held by the index."""
        return int(self.offsets.nbytes)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, i: int) -> tuple[int, int]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[int, int]]: ...

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        start, stop = self.span(i)
        return start, stop - start

    def span(self, i: int, path: object = None) -> tuple[int, int]:
        """Bytes ``[start, stop)`` of record ``i`` in its shard (a negative ``i`` counts from
        the end), as the readers' ``read_bytes`` need them.

        >>> RecordIndex.from_entries([(0, 20), (20, 35)]).span(-1)
        (20, 55)

        Raises:
            IndexError: ``i`` is out of range; the message names ``path`` (the shard) if given.
        """
        n = len(self.offsets) - 1
        k = i.__index__()
        if k < 0:
            k += n
        if not 0 <= k < n:
            where = "" if path is None else f" for {path}"
            raise IndexError(f"record {i} out of range{where} ({n} records)")
        start, stop = self.offsets[k : k + 2].tolist()
        return start, stop

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for lo in range(0, len(self), _CHUNK):
            bounds = self.offsets[lo : lo + _CHUNK + 1].tolist()
            yield from ((a, b - a) for a, b in pairwise(bounds))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RecordIndex):
            return bool(np.array_equal(self.offsets, other.offsets))
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __getstate__(self) -> np.ndarray:
        return self.offsets

    def __setstate__(self, state: np.ndarray) -> None:
        state.flags.writeable = False
        self.offsets = state

    def __repr__(self) -> str:
        return f"RecordIndex(records={len(self)}, end={self.end})"


def first_gap(entries: np.ndarray) -> int | None:
    """The first row of an ``(n, 2)`` ``(offset, size)`` array that does not start where the
    previous one ends (row 0 must start at 0), or ``None`` when they are contiguous.

    Compares each step between offsets with the previous size, so no running sum can
    overflow whatever the numbers."""
    if len(entries) == 0:
        return None
    offsets = entries[:, 0]
    if offsets[0] != 0:
        return 0
    wrong = (offsets[1:] - offsets[:-1]) != entries[:-1, 1]
    return int(wrong.argmax()) + 1 if wrong.any() else None
