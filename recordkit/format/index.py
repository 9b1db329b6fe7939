"""DALI-format index files: one line ``"<offset> <framed size>\\n"`` per record.

This is exactly what DALI's ``tfrecord2idx`` writes and what ``fn.readers.tfrecord`` and the
``tfrecord`` PyPI package read. The index of ``train-00000-of-00004.tfrecord`` is
``train-00000-of-00004.idx``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from recordkit.errors import IndexMismatchError
from recordkit.format import framing
from recordkit.format.atomic import atomic_write_text
from recordkit.safeio import InputTooLargeError, open_regular, read_regular

__all__ = [
    "MAX_INDEX_BYTES",
    "index_path_for",
    "max_index_bytes",
    "parse_index",
    "compare_index",
    "read_index",
    "format_index",
    "build_index",
    "write_index",
    "parse_index_array",
]

if TYPE_CHECKING:
    import numpy as np

MAX_INDEX_BYTES = 1 << 30
"""The largest index read when the size of its data file is not known."""


def index_path_for(path: str | os.PathLike[str]) -> Path:
    """Return the ``.idx`` path that belongs to a TFRecord file (same stem)."""
    p = Path(path)
    return p.with_suffix(".idx") if p.suffix else p.with_name(p.name + ".idx")


def max_index_bytes(data_size: int) -> int:
    """The largest index a ``data_size``-byte TFRecord file can have.

    Each record takes at least :data:`~recordkit.format.framing.OVERHEAD` bytes, and each line
    is two decimal numbers no longer than ``data_size``'s, a space and a newline (a CR is
    tolerated); 4 KiB more allow for stray blank lines.
    """
    width = len(str(max(data_size, 0)))
    return (data_size // framing.OVERHEAD + 1) * (2 * width + 3) + 4096


def _number(token: bytes) -> int:
    # int() also takes "3_7", "+3", " 3" and non-ASCII digits; an index line holds none of them
    if not token.isdigit() or len(token) > 20:
        raise ValueError
    return int(token)


def _read_index_bytes(path: str | os.PathLike[str], data_size: int | None) -> bytes:
    """The bytes of an index, refused when larger than any index of its data file."""
    limit = max_index_bytes(data_size) if data_size is not None else MAX_INDEX_BYTES
    try:
        return read_regular(path, limit=limit, what="index file")
    except InputTooLargeError as exc:
        if data_size is None:
            raise
        raise IndexMismatchError(
            path, 0, f"{exc.size} bytes, too large for the index of a {data_size}-byte file"
        ) from None


def parse_index(
    path: str | os.PathLike[str], *, data_size: int | None = None
) -> list[tuple[int, int] | None]:
    """Parse an index file leniently: one entry per non-blank line, ``None`` where malformed.

    A line is well formed when it holds exactly two runs of ASCII digits (``int()`` would also
    take ``3_7``, ``+3`` or Arabic-Indic digits; DALI's ``tfrecord2idx`` writes none of those).

    Args:
        path: The ``.idx`` file; it must be a regular file.
        data_size: Size of the data file it indexes; bounds what is read
            (:func:`max_index_bytes`).

    Raises:
        IndexMismatchError: The index is larger than any index of a ``data_size``-byte file.
        InputFileError: It is not a regular file (a FIFO, ``/dev/zero``, a directory).
        OSError: It cannot be read.
    """
    raw = _read_index_bytes(path, data_size)
    out: list[tuple[int, int] | None] = []
    for line in raw.split(b"\n"):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) != 2:
                raise ValueError
            out.append((_number(parts[0]), _number(parts[1])))
        except ValueError:
            out.append(None)
    return out


def compare_index(
    lines: list[tuple[int, int] | None], records: list[tuple[int, int]], data_size: int
) -> tuple[int, str] | None:
    """Find the first place where an index disagrees with the records actually in the file.

    Args:
        lines: Parsed index lines (``None`` for a malformed line), see :func:`parse_index`.
        records: ``(offset, framed_size)`` of every record, from a scan of the data file.
        data_size: Size of the data file.

    Returns:
        ``None`` when they agree, else ``(offset, message)``: the offset of the record whose
        line is wrong or missing (the end of the file for surplus lines) and what is wrong.
    """
    for k, rec in enumerate(records):
        if k >= len(lines):
            return rec[0], (
                f"index has {len(lines)} lines, file has {len(records)} records "
                f"(record {k} at offset {rec[0]} has no line)"
            )
        line = lines[k]
        if line is None:
            return rec[0], f"line {k + 1} is malformed (expected '<offset> <size>')"
        if line != rec:
            return rec[0], (
                f"line {k + 1} says '{line[0]} {line[1]}', the record there is '{rec[0]} {rec[1]}'"
            )
    if len(lines) > len(records):
        return data_size, (
            f"index has {len(lines)} lines, file has {len(records)} records "
            f"(line {len(records) + 1} points past the last record)"
        )
    return None


def _consistent(entries: list[tuple[int, int] | None], data_size: int) -> bool:
    expected = 0
    for e in entries:
        if e is None or e[0] != expected or e[1] < framing.OVERHEAD:
            return False
        expected = e[0] + e[1]
    return expected == data_size


def read_index(
    path: str | os.PathLike[str],
    *,
    data_size: int | None = None,
    data_path: str | os.PathLike[str] | None = None,
) -> list[tuple[int, int]]:
    """Read an index file.

    Args:
        path: The ``.idx`` file.
        data_size: Size of the TFRecord file it indexes; when given, entries must be
            contiguous, start at 0 and end exactly at ``data_size``.
        data_path: The TFRecord file. When given and the index is inconsistent, the file is
            scanned to name the first record whose line is wrong (else the error points at the
            index line).

    Returns:
        ``[(offset, framed_size), ...]`` in file order.

    Raises:
        IndexMismatchError: A line is malformed, the entries do not fit the data file, or the
            index is larger than any index of a ``data_size``-byte file.
        CorruptRecordError: The data file itself is damaged (found while diagnosing).
        InputFileError: The index is not a regular file.
    """
    lines = parse_index(path, data_size=data_size)
    if data_size is None:
        if None in lines:
            k = lines.index(None)
            raise IndexMismatchError(path, 0, f"line {k + 1} is malformed")
        return lines  # type: ignore[return-value]
    if _consistent(lines, data_size):
        return lines  # type: ignore[return-value]
    if data_path is not None:
        records = build_index(data_path)  # raises CorruptRecordError for a damaged data file
        found = compare_index(lines, records, data_size)
        if found is not None:
            raise IndexMismatchError(path, found[0], found[1])
    raise IndexMismatchError(
        path, 0, f"index does not describe a {data_size}-byte file of contiguous records"
    )


def format_index(entries: list[tuple[int, int]]) -> str:
    """Render index entries as the text of an ``.idx`` file."""
    return "".join(f"{offset} {size}\n" for offset, size in entries)


def build_index(path: str | os.PathLike[str], *, verify_crc: bool = True) -> list[tuple[int, int]]:
    """Scan a TFRecord file and return its index entries.

    Args:
        path: Any TFRecord file (ours or a foreign one).
        verify_crc: Check record CRCs while scanning.

    Returns:
        ``[(offset, framed_size), ...]``.

    Raises:
        CorruptRecordError: The file is damaged; names the offset of the bad record.
    """
    path = os.fspath(path)
    with os.fdopen(open_regular(path, what="TFRecord file"), "rb", buffering=1 << 20) as f:
        return [(off, size) for off, size, _ in framing.scan(f, path=path, verify_crc=verify_crc)]


def write_index(entries: list[tuple[int, int]], path: str | os.PathLike[str]) -> None:
    """Write an index file atomically (temporary file in the same directory, then rename)."""
    atomic_write_text(path, format_index(entries), encoding="ascii")


# the text tfrecord2idx and recordkit write; 19 digits always fit an int64
_PLAIN_INDEX = re.compile(rb"(?:[0-9]{1,19} [0-9]{1,19}\n)*")


def parse_index_array(
    path: str | os.PathLike[str], *, data_size: int | None = None
) -> np.ndarray | None:
    """Parse an index in its plain form as an ``(n, 2)`` int64 array, in one vectorised pass.

    The plain form is what DALI's ``tfrecord2idx`` and recordkit write: every line
    ``"<offset> <size>\\n"`` of ASCII digits. Anything else (blank lines, CRs, tabs, malformed
    lines) returns ``None``: :func:`parse_index` then gives the lenient reading and the exact
    messages. Same errors and size limit as :func:`parse_index`.
    """
    import numpy as np

    raw = _read_index_bytes(path, data_size)
    if _PLAIN_INDEX.fullmatch(raw) is None:
        return None
    return np.fromstring(raw, dtype=np.int64, sep=" ").reshape(-1, 2)
