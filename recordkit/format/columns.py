"""Whole blocks of records checked and parsed column-wise with numpy, for ``verify``/``inspect``.

Per record, Python costs a few microseconds (two CRC calls, a protobuf parse, a dict lookup),
which at a million small records is slower than hashing their bytes. When the index already
says where every record is, the same checks run over arrays instead:

* framing: every length field against the index's sizes, every length CRC (a table-driven
  CRC32C over the 8-byte length fields, vectorised), the data CRCs (one ``crc32c`` call per
  record, no other Python);
* payload: :func:`image_columns` recognises the exact ``Example`` layout that
  :func:`~recordkit.format.example.image_example_parts` writes (every key in its place, every
  nested length consistent, every varint well formed, one label) and reads labels, channels,
  height, width and format out of it. Such bytes always parse as an ``Example`` with those
  values, so a record matching the layout needs no protobuf parse; any other record is marked
  and the caller hands it to the full parser.

Nothing here raises for damaged data: the results are masks, and callers fall back to the
record-at-a-time code, which gives the exact messages.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from crc32c import crc32c

from recordkit.format import example as _ex
from recordkit.format.framing import FOOTER_SIZE, HEADER_SIZE, OVERHEAD

__all__ = ["ImageColumns", "read_blocks", "frames_ok", "image_columns", "masked_crc_u64"]

_MASK_DELTA = 0xA282EAD8


def _crc_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table[i] = c
    return table


_TABLE = _crc_table()


def _mask(crc: np.ndarray) -> np.ndarray:
    c = crc.astype(np.uint64)
    return ((((c >> 15) | (c << 17)) + _MASK_DELTA) & 0xFFFFFFFF).astype(np.uint32)


def masked_crc_u64(fields: np.ndarray) -> np.ndarray:
    """TFRecord's masked CRC32C of each row of an ``(n, 8)`` uint8 array (the length fields)."""
    crc = np.full(len(fields), 0xFFFFFFFF, dtype=np.uint32)
    for k in range(fields.shape[1]):
        crc = _TABLE[(crc ^ fields[:, k]) & 0xFF] ^ (crc >> 8)
    return _mask(crc ^ np.uint32(0xFFFFFFFF))


def read_blocks(
    f: BinaryIO, bounds: np.ndarray, block_size: int = 16 << 20
) -> Iterator[tuple[int, int, bytes]]:
    """Read the records between ``bounds[0]`` and ``bounds[-1]`` in blocks of whole records.

    Args:
        f: A buffered binary file positioned at ``bounds[0]``.
        bounds: Record boundaries (int64, increasing), as in a
            :class:`~recordkit.format.record_index.RecordIndex`.
        block_size: About this many bytes per block (a larger record is read whole).

    Yields:
        ``(i, j, block)``: records ``i`` to ``j - 1`` (positions in ``bounds``) and their bytes,
        which are shorter than ``bounds[j] - bounds[i]`` only when the file ended early.
    """
    n = len(bounds) - 1
    i = 0
    while i < n:
        j = int(np.searchsorted(bounds, bounds[i] + block_size, side="right")) - 1
        j = min(max(j, i + 1), n)
        yield i, j, f.read(int(bounds[j] - bounds[i]))
        i = j


def _gather(a: np.ndarray, pos: np.ndarray, k: int) -> np.ndarray:
    """``(n, k)`` bytes of ``a`` from each position (positions past the end are clipped)."""
    idx = pos[:, None] + np.arange(k)
    np.minimum(idx, len(a) - 1, out=idx)
    return a[idx]


def frames_ok(block: bytes, starts: np.ndarray, sizes: np.ndarray, *, crc: bool) -> bool:
    """Whether every record of ``block`` has the framing the index claims.

    Args:
        block: The bytes of consecutive records.
        starts: Offset of each record within ``block`` (int64).
        sizes: Framed size of each record (int64, at least ``OVERHEAD``; they tile ``block``).
        crc: Also check both CRCs of every record.

    Returns:
        True when every length field equals its size less the framing and (``crc``) every CRC
        passes.
    """
    if len(starts) == 0:
        return True
    a = np.frombuffer(block, dtype=np.uint8)
    head = _gather(a, starts, HEADER_SIZE)
    lengths = np.ascontiguousarray(head[:, :8]).view("<u8").ravel()
    if not np.array_equal(lengths, (sizes - OVERHEAD).astype(np.uint64)):
        return False
    if not crc:
        return True
    length_crc = np.ascontiguousarray(head[:, 8:]).view("<u4").ravel()
    if not np.array_equal(masked_crc_u64(head[:, :8]), length_crc):
        return False
    ends = starts + sizes - FOOTER_SIZE
    footer = np.ascontiguousarray(_gather(a, ends, FOOTER_SIZE)).view("<u4").ravel()
    mv = memoryview(block)
    views = map(mv.__getitem__, map(slice, (starts + HEADER_SIZE).tolist(), ends.tolist()))
    data_crc = np.fromiter(
        map(crc32c, views),
        dtype=np.uint32,
        count=len(starts),
    )
    return bool(np.array_equal(_mask(data_crc), footer))


@dataclass
class ImageColumns:
    """The features of records in the layout :func:`image_columns` recognises.

    Each array has one entry per record; values are meaningful where ``ok`` is True. The
    ``format`` bytes of record ``k`` are ``block[format_start[k]:format_start[k] + format_len[k]]``.
    """

    ok: np.ndarray
    label: np.ndarray
    channels: np.ndarray
    height: np.ndarray
    width: np.ndarray
    format_start: np.ndarray
    format_len: np.ndarray


_HEAD = 256  # bytes read from the start of each record: the entries before the image
_TAIL = 384  # and from its end: the entries after it (a file name of up to ~250 bytes)
_WIDE = 48  # the widest read (an int64 entry with its value)
_V_WIDE = np.dtype(("V", _WIDE))
_BYTE_HIGH = np.uint64(0x8080808080808080)
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_POW2 = np.array([1 << (8 * k + 7) for k in range(8)], dtype=np.uint64)


class _Walk:
    """Positions in many records at once, advanced field by field; ``ok`` drops a record the
    moment its bytes leave the expected layout.

    Bytes are read from a window per record (:meth:`window`: the first ``_HEAD`` bytes, then,
    past the image, the last ``_TAIL``) through unaligned strided views, so each step is a
    handful of one-dimensional numpy operations over all records. Positions only grow, and a
    record whose reads leave its window is dropped (:meth:`inside`), so every byte a kept
    record was judged by is its own.
    """

    def __init__(self, start: np.ndarray, end: np.ndarray) -> None:
        self.p = start.copy()
        self.end = end
        self.ok = np.ones(len(start), dtype=bool)
        self._rows = np.arange(len(start), dtype=np.int64)

    def window(self, block: np.ndarray, base: np.ndarray, width: int) -> None:
        """Read from now on ``width`` bytes of ``block`` from ``base`` of each record, copied
        into one compact array (fewer numpy operations per read than reading the block).

        A read is not checked against the window's edge: positions only grow, so
        :meth:`inside` at the end of a window's reads tells whether they all stayed in it.
        """
        base = np.clip(base, 0, len(block) - width)
        rows = np.ndarray((len(block) - width + 1,), dtype=np.dtype(("V", width)), buffer=block,
                          strides=(1,))  # fmt: skip
        self.a = np.zeros(len(base) * width + _WIDE, dtype=np.uint8)  # room for any read
        self.a[: len(base) * width] = rows[base].view(np.uint8)
        self.ok &= self.p >= base
        self.base = base
        self.width = width
        self.off = self._rows * width - base  # window position of a block offset
        n = len(self.a) - 7
        self.words = np.ndarray((n,), dtype="<u8", buffer=self.a, strides=(1,))

    def inside(self) -> None:
        """Drop the records whose reads went past the end of their window."""
        self.ok &= self.p <= self.base + self.width

    def _word(self, shift: int = 0) -> np.ndarray:
        pos = self.p + self.off
        if shift:
            pos += shift
        np.minimum(pos, len(self.words) - 1, out=pos)
        np.maximum(pos, 0, out=pos)
        return self.words[pos]

    def lit(self, literal: bytes) -> None:
        m = len(literal)
        padded = literal + bytes(-m % 8)
        for k in range(0, m, 8):
            want = np.frombuffer(padded[k : k + 8], dtype="<u8")[0]
            got = self._word(k)
            if m - k < 8:
                got &= np.uint64((1 << (8 * (m - k))) - 1)
            self.ok &= got == want
        self.p += m

    def varint(self, tag: int | None = None) -> np.ndarray:
        """A base-128 varint as uint64 (wrapping as protobuf does), after a one-byte ``tag``
        when given. Both are read from one 8-byte word, so a varint may have 8 bytes, or 7
        after a tag (lengths and values up to 2**49; longer: not ``ok``)."""
        word = self._word()
        if tag is not None:
            self.ok &= (word & np.uint64(0xFF)) == tag
            word >>= np.uint64(8)
            self.p += 1
        if not (word & np.uint64(0x80)).any():  # one byte each: the common case
            self.p += 1
            return word & np.uint64(0x7F)
        value, k = _varint(word)
        self.ok &= k <= (8 if tag is None else 7)  # else: too long, or past the word
        self.p += k
        return value

    def length(self, tag: int) -> np.ndarray:
        """A field's tag and length; the length must fit in what is left of the record."""
        v = self.varint(tag).view(np.int64)
        self.ok &= (v >= 0) & (v <= self.end - self.p)
        return v

    def entry(self, key: bytes) -> np.ndarray:
        """A ``Features`` map entry with ``key`` up to its ``Feature``; returns the entry's end."""
        stop = self.length(0x0A)
        stop += self.p
        self.lit(b"\x0a" + bytes((len(key),)) + key)
        self.ok &= self.p + self.length(0x12) == stop
        return stop

    def _entry_read(self, key: bytes) -> tuple[np.ndarray, np.ndarray, int]:
        """One read of ``_WIDE`` bytes from each record's position, the checks of an entry
        whose four lengths are one byte each (fields at fixed places), and where its value
        starts: ``(rows, ok, value column)``; the value's size is the last length."""
        kl = len(key)
        cf = kl + 5  # the Feature's length byte
        cv = cf + 5  # the value
        pos = self.p + self.off
        np.minimum(pos, len(self.a) - _WIDE, out=pos)
        np.maximum(pos, 0, out=pos)
        rows = np.ndarray((len(self.a) - _WIDE + 1,), dtype=_V_WIDE, buffer=self.a, strides=(1,))
        g = rows[pos].view(np.uint8).reshape(-1, _WIDE)
        head = np.frombuffer(b"\x0a" + bytes((kl,)) + key + b"\x12", dtype=np.uint8)
        ok = (g[:, 2:cf] == head).all(axis=1)
        ok &= g[:, 0] == 0x0A
        e, f, gl, n = (g[:, c].astype(np.int64) for c in (1, cf, cf + 2, cf + 4))
        ok &= ((e | f | gl | n) < 0x80) & (e == cv - 2 + n) & (f == n + 4) & (gl == n + 2)
        ok &= self.p + cv + n <= self.end
        ok &= self.p + cv <= self.base + self.width  # what was used is inside the window
        return g, ok, cv

    def int64_entry(self, key: bytes) -> np.ndarray:
        """An entry holding an ``Int64List`` of one value of at most 8 varint bytes (up to
        2**56 - 1; negative values take 10 and go to the full parser); returns the value.

        Its four lengths are one byte each (as for any such entry), so every field sits at a
        fixed place from the entry's start: one read of the whole entry, then column checks.
        """
        g, ok, cv = self._entry_read(key)
        n = g[:, cv - 1].astype(np.int64)
        ok &= (g[:, cv - 4] == 0x1A) & (g[:, cv - 2] == 0x0A) & (n >= 1) & (n <= 8)
        value, k = _varint(np.ascontiguousarray(g[:, cv : cv + 8]).view("<u8").ravel())
        ok &= k == n
        self.p += cv + n
        self.ok &= ok
        return value.view(np.int64)

    def bytes_entry(self, key: bytes) -> tuple[np.ndarray, np.ndarray]:
        """An entry holding a ``BytesList`` of exactly one value; returns its start and size.

        Short values (one-byte lengths) are read as :meth:`int64_entry` reads; where some
        record's is longer (the image), field by field.
        """
        g, ok, cv = self._entry_read(key)
        size = g[:, cv - 1].astype(np.int64)
        ok &= (g[:, cv - 4] == 0x0A) & (g[:, cv - 2] == 0x0A)
        if (ok | ~self.ok).all():
            start = self.p + cv
            self.p = start + size
            return start, size
        p0, ok0 = self.p.copy(), self.ok.copy()
        stop = self.entry(key)
        self.ok &= self.p + self.length(0x0A) == stop
        size2 = self.length(0x0A)
        start = self.p.copy()
        self.inside()
        self.p += size2
        self.ok &= self.p == stop
        # either reading is exact: a record passes when one of them does
        self.ok = ok0 & (self.ok | ok)
        start = np.where(ok, p0 + cv, start)
        size = np.where(ok, size, size2)
        self.p = np.where(ok, start + size, self.p)
        return start, size


def _varint(word: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The varint at the start of each 8-byte word: ``(value, bytes)``; 9 bytes where the
    word holds no end of varint (the value is then meaningless)."""
    stops = ~word & _BYTE_HIGH  # the high bit of each byte that ends a varint
    low = stops & (~stops + np.uint64(1))  # the first one's
    k = np.searchsorted(_POW2, low) + 1  # 9 where there is none
    mask = np.where(k < 8, (low << np.uint64(1)) - np.uint64(1), ~np.uint64(0))
    word = word & mask & _LOW7
    value = word & np.uint64(0x7F)
    for j in range(1, min(int(k.max()), 8)):
        value |= (word >> np.uint64(j)) & np.uint64(0x7F << (7 * j))
    return value, k


def image_columns(block: bytes, starts: np.ndarray, ends: np.ndarray) -> ImageColumns:
    """Read the features of every record in ``block`` written in recordkit's own layout.

    The layout is :func:`~recordkit.format.example.image_example_parts`'s, field for field:
    ``Example{features: Features{entries}}`` with the entries channels, label, optionally the
    class name, encoded, filename, format, height, index, width, in that order (the order of
    deterministic serialization), each ``Feature`` a one-value ``Int64List`` or ``BytesList``.
    Varints may be longer than needed (protobuf reads them the same). A record in this layout
    parses as an ``Example`` whose features hold exactly these values, so its ``ok`` entry is
    True; anything else (several labels, other keys, another order, any damage) is False and
    must be parsed by :func:`~recordkit.format.example.decode_example`.

    Args:
        block: Bytes holding the records' data.
        starts: Where each record's data (the serialized ``Example``) starts in ``block``.
        ends: Where each ends.
    """
    a = np.frombuffer(block, dtype=np.uint8)
    if len(a) < _TAIL:  # a tiny file: room for the windows
        a = np.concatenate((a, np.zeros(_TAIL, dtype=np.uint8)))
    w = _Walk(starts.astype(np.int64), ends.astype(np.int64))
    w.window(a, w.p, _HEAD)
    w.ok &= w.p + w.length(0x0A) == w.end
    channels = w.int64_entry(_key(_ex.KEY_CHANNELS))
    label = w.int64_entry(_key(_ex.KEY_LABEL))
    # the class name is optional: where it is there, continue after it
    before_p, before_ok = w.p.copy(), w.ok.copy()
    w.bytes_entry(_key(_ex.KEY_TEXT))
    w.p = np.where(w.ok, w.p, before_p)
    w.ok = before_ok
    w.bytes_entry(_key(_ex.KEY_ENCODED))
    # (the image's bytes are not read: only its length field must be inside the window)
    w.window(a, w.end + 8 - _TAIL, _TAIL)  # the image is skipped: the rest is at the end
    w.bytes_entry(_key(_ex.KEY_FILENAME))
    fmt_start, fmt_len = w.bytes_entry(_key(_ex.KEY_FORMAT))
    height = w.int64_entry(_key(_ex.KEY_HEIGHT))
    w.int64_entry(_key(_ex.KEY_INDEX))
    width = w.int64_entry(_key(_ex.KEY_WIDTH))
    w.ok &= w.p == w.end
    w.inside()
    return ImageColumns(w.ok, label, channels, height, width, fmt_start, fmt_len)


def _key(name: str) -> bytes:
    raw = name.encode()
    assert len(raw) < 0x80
    return raw
