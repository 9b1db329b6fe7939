"""DALI-format index files: one line ``"<offset> <framed size>\\n"`` per record.

This is exactly what DALI's ``tfrecord2idx`` writes and what ``fn.readers.tfrecord`` and the
``tfrecord`` PyPI package read. The index of ``train-00000-of-00004.tfrecord`` is
``train-00000-of-00004.idx``.
"""

from __future__ import annotations

import os
from pathlib import Path

from recordkit.errors import IndexMismatchError
from recordkit.format import framing

__all__ = ["index_path_for", "read_index", "format_index", "build_index", "write_index"]


def index_path_for(path: str | os.PathLike[str]) -> Path:
    """Return the ``.idx`` path that belongs to a TFRecord file (same stem)."""
    p = Path(path)
    return p.with_suffix(".idx") if p.suffix else p.with_name(p.name + ".idx")


def read_index(
    path: str | os.PathLike[str], *, data_size: int | None = None
) -> list[tuple[int, int]]:
    """Read an index file.

    Args:
        path: The ``.idx`` file.
        data_size: Size of the TFRecord file it indexes; when given, every entry is checked to
            lie inside the file and entries are checked to be contiguous and increasing.

    Returns:
        ``[(offset, framed_size), ...]`` in file order.

    Raises:
        IndexMismatchError: A line is malformed or an entry does not fit the data file.
    """
    path = os.fspath(path)
    entries: list[tuple[int, int]] = []
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                if len(parts) != 2:
                    raise ValueError
                offset, size = int(parts[0]), int(parts[1])
            except ValueError:
                raise IndexMismatchError(
                    path, 0, f"line {lineno}: expected '<offset> <size>', got {line[:60]!r}"
                ) from None
            entries.append((offset, size))
    if data_size is not None:
        expected = 0
        for i, (offset, size) in enumerate(entries):
            if offset != expected or size < framing.OVERHEAD:
                raise IndexMismatchError(
                    path,
                    offset,
                    f"entry {i} ({offset} {size}) does not follow the previous record "
                    f"(expected offset {expected}, size >= {framing.OVERHEAD})",
                )
            expected = offset + size
        if expected != data_size:
            raise IndexMismatchError(
                path,
                expected,
                f"index covers {expected} bytes but the data file has {data_size}",
            )
    return entries


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
    with open(path, "rb", buffering=1 << 20) as f:
        return [(off, size) for off, size, _ in framing.scan(f, path=path, verify_crc=verify_crc)]


def write_index(entries: list[tuple[int, int]], path: str | os.PathLike[str]) -> None:
    """Write an index file atomically (temporary file in the same directory, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="ascii") as f:
            f.write(format_index(entries))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
