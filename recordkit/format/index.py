"""DALI-format index files: one line ``"<offset> <framed size>\\n"`` per record.

This is exactly what DALI's ``tfrecord2idx`` writes and what ``fn.readers.tfrecord`` and the
``tfrecord`` PyPI package read. The index of ``train-00000-of-00004.tfrecord`` is
``train-00000-of-00004.idx``.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from recordkit.errors import IndexMismatchError
from recordkit.format import framing
from recordkit.format.atomic import atomic_write_text
from recordkit.safeio import InputTooLargeError, open_regular, read_regular

if TYPE_CHECKING:  # numpy is imported on first use: `import recordkit` stays light
    import numpy as np

    from recordkit.format.record_index import RecordIndex

__all__ = [
    "MAX_INDEX_BYTES",
    "index_path_for",
    "max_index_bytes",
    "parse_index",
    "compare_index",
    "read_index",
    "index_from_bytes",
    "format_index",
    "build_index",
    "write_index",
    "parse_index_array",
    "index_consistent",
]

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
    return _parse_lines(_read_index_bytes(path, data_size))


def _parse_lines(raw: bytes) -> list[tuple[int, int] | None]:
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


def index_consistent(entries: np.ndarray, data_size: int) -> bool:
    """Whether ``(n, 2)`` rows are contiguous records from 0 to exactly ``data_size``."""
    from recordkit.format.record_index import first_gap

    if len(entries) == 0:
        return data_size == 0
    sizes = entries[:, 1]
    if sizes.min() < framing.OVERHEAD or int(entries[-1, 0]) + int(sizes[-1]) != data_size:
        return False
    return first_gap(entries) is None


def _first_malformed(lines: list[tuple[int, int] | None]) -> int | None:
    return next((k for k, e in enumerate(lines) if e is None), None)


def read_index(
    path: str | os.PathLike[str],
    *,
    data_size: int | None = None,
    data_path: str | os.PathLike[str] | None = None,
) -> RecordIndex:
    """Read an index file into a compact :class:`RecordIndex`.

    The plain text that ``tfrecord2idx`` and recordkit write is checked and converted in a few
    vectorised passes (no Python object per line); any other text (CRs, blank lines, extra
    spaces or tabs) is read line by line with the same rules as :func:`parse_index`.

    Args:
        path: The ``.idx`` file.
        data_size: Size of the TFRecord file it indexes; when given, entries must also end
            exactly at ``data_size``, and each must be at least a framed empty record.
        data_path: The TFRecord file. When given and the index is inconsistent, the file is
            scanned to name the first record whose line is wrong (else the error points at the
            index line).

    Returns:
        The entries, in file order; it compares equal to the list of ``(offset, framed_size)``
        tuples that earlier versions returned. The entries are always contiguous from 0.

    Raises:
        IndexMismatchError: A line is malformed, the entries are not contiguous from 0, they
            do not fit the data file, or the index is larger than any index of a
            ``data_size``-byte file.
        CorruptRecordError: The data file itself is damaged (found while diagnosing).
        InputFileError: The index is not a regular file.
    """
    return index_from_bytes(
        _read_index_bytes(path, data_size), path, data_size=data_size, data_path=data_path
    )


def index_from_bytes(
    raw: bytes,
    path: str | os.PathLike[str],
    *,
    data_size: int | None = None,
    data_path: str | os.PathLike[str] | None = None,
) -> RecordIndex:
    """:func:`read_index` on an index's bytes already in memory (a remote ``.idx``); ``path``
    names it in errors. See :func:`read_index` for the arguments and errors."""
    import numpy as np

    from recordkit.format.record_index import RecordIndex, first_gap

    arr = _plain_array(raw)
    lines: list[tuple[int, int] | None] | None = None
    if arr is None:  # not the plain form: the lenient reading, with its exact messages
        lines = _parse_lines(raw)
        k = _first_malformed(lines)
        if k is not None and data_size is None:
            raise IndexMismatchError(path, 0, f"line {k + 1} is malformed")
        if k is None:
            arr = _as_array(lines)  # type: ignore[arg-type]
    if data_size is None:
        assert arr is not None
        k = first_gap(arr)
        if k is not None:
            want = 0 if k == 0 else int(arr[k - 1, 0] + arr[k - 1, 1])
            raise IndexMismatchError(
                path,
                0,
                f"line {k + 1} says offset {int(arr[k, 0])}, expected {want} "
                "(records are contiguous from 0)",
            )
        try:
            return RecordIndex.from_array(arr)
        except ValueError:  # the last record ends beyond any int64 offset
            raise IndexMismatchError(path, 0, "entries end past the largest file size") from None
    if arr is not None and index_consistent(arr, data_size):
        bounds = np.empty(len(arr) + 1, dtype=np.int64)
        bounds[:-1], bounds[-1] = arr[:, 0], data_size
        return RecordIndex.trusted(bounds)  # contiguous, sizes >= OVERHEAD: increasing
    if data_path is not None:
        records = build_index(data_path)  # raises CorruptRecordError for a damaged data file
        if lines is None:
            lines = list(map(tuple, arr.tolist()))  # type: ignore[union-attr]
        found = compare_index(lines, records, data_size)
        if found is not None:
            raise IndexMismatchError(path, found[0], found[1])
    raise IndexMismatchError(
        path, 0, f"index does not describe a {data_size}-byte file of contiguous records"
    )


def _as_array(entries: list[tuple[int, int]]) -> np.ndarray:
    """``(n, 2)`` int64 rows; values beyond int64 (21+ digits never parse) saturate, so they
    fail the consistency checks instead of wrapping around."""
    import numpy as np

    top = np.iinfo(np.int64).max
    if any(v > top for e in entries for v in e):
        entries = [(min(a, top), min(b, top)) for a, b in entries]
    return np.array(entries, dtype=np.int64).reshape(-1, 2)


def format_index(entries: Iterable[tuple[int, int]]) -> str:
    """Render index entries as the text of an ``.idx`` file."""
    return "".join(f"{offset} {size}\n" for offset, size in entries)


def build_index(path: str | os.PathLike[str], *, verify_crc: bool = True) -> RecordIndex:
    """Scan a TFRecord file and return its index entries.

    Args:
        path: Any TFRecord file (ours or a foreign one).
        verify_crc: Check record CRCs while scanning.

    Returns:
        The ``(offset, framed_size)`` of every record, as a :class:`RecordIndex`.

    Raises:
        CorruptRecordError: The file is damaged; names the offset of the bad record.
    """
    import numpy as np

    from recordkit.format.record_index import RecordIndex

    path = os.fspath(path)
    ends = array("q", [0])
    with os.fdopen(open_regular(path, what="TFRecord file"), "rb", buffering=1 << 20) as f:
        for off, size, _ in framing.scan(f, path=path, verify_crc=verify_crc):
            ends.append(off + size)
    return RecordIndex(np.frombuffer(ends, dtype=np.int64))


def write_index(entries: Iterable[tuple[int, int]], path: str | os.PathLike[str]) -> None:
    """Write an index file atomically (temporary file in the same directory, then rename)."""
    atomic_write_text(path, format_index(entries), encoding="ascii")


_MAX_DIGITS = 18  # every 18-digit number fits an int64; longer ones take the lenient path
_DIGIT_0, _SPACE, _NEWLINE = ord("0"), ord(" "), ord("\n")


def _plain_array(raw: bytes) -> np.ndarray | None:
    """The ``(n, 2)`` int64 rows of a plain index (every line ``"<digits> <digits>\\n"``, at
    most 18 digits each), or ``None`` for any other text. Vectorised: the separators must
    alternate space, newline, ..., the last byte is a newline, and every run between them is
    1 to 18 ASCII digits; then numpy converts the text."""
    import numpy as np

    if not raw:
        return np.zeros((0, 2), dtype=np.int64)
    b = np.frombuffer(raw, dtype=np.uint8)
    seps = np.flatnonzero((b - np.uint8(_DIGIT_0)) >= 10)  # anything not an ASCII digit
    if seps.size % 2 or seps.size == 0 or seps[-1] != b.size - 1:
        return None
    if not (np.all(b[seps[0::2]] == _SPACE) and np.all(b[seps[1::2]] == _NEWLINE)):
        return None
    if not 1 <= seps[0] <= _MAX_DIGITS:  # the first number's digits
        return None
    if seps.size > 1:
        steps = seps[1:] - seps[:-1]  # each later number's digits, plus its separator
        if steps.min() < 2 or steps.max() > _MAX_DIGITS + 1:
            return None
    return np.fromstring(raw, dtype=np.int64, sep=" ").reshape(-1, 2)


def parse_index_array(
    path: str | os.PathLike[str], *, data_size: int | None = None
) -> np.ndarray | None:
    """Parse an index in its plain form as an ``(n, 2)`` int64 array, in one vectorised pass.

    The plain form is what DALI's ``tfrecord2idx`` and recordkit write: every line
    ``"<offset> <size>\\n"`` of ASCII digits (at most 18 per number). Anything else (blank
    lines, CRs, tabs, malformed lines) returns ``None``: :func:`parse_index` then gives the
    lenient reading and the exact messages. Same errors and size limit as :func:`parse_index`.
    """
    return _plain_array(_read_index_bytes(path, data_size))
