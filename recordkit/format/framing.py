"""TFRecord framing: ``uint64 length · uint32 masked_crc(length) · data · uint32 masked_crc(data)``.

All integers are little-endian. ``masked_crc(x) = ((c >> 15) | (c << 17)) + 0xa282ead8 mod 2**32``
with ``c = crc32c(x)`` (Castagnoli). This module knows nothing of what ``data`` holds.

Readers here never trust a length field: before reading a payload they check that the claimed
length fits in what is left of the file, so a corrupted length raises
:class:`~recordkit.errors.CorruptRecordError` instead of allocating gigabytes or hanging.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from typing import BinaryIO

from crc32c import crc32c

from recordkit.errors import CorruptRecordError, IndexMismatchError

__all__ = [
    "HEADER_SIZE",
    "FOOTER_SIZE",
    "OVERHEAD",
    "masked_crc",
    "frame",
    "frame_parts",
    "read_record_at",
    "unframe",
    "scan",
    "scan_blocks",
]

HEADER_SIZE = 12  # uint64 length + uint32 masked crc of the length
FOOTER_SIZE = 4  # uint32 masked crc of the data
OVERHEAD = HEADER_SIZE + FOOTER_SIZE
_MASK_DELTA = 0xA282EAD8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_HEADER = struct.Struct("<QI")


def masked_crc(data: bytes | bytearray | memoryview) -> int:
    """Return TFRecord's masked CRC32C of ``data``.

    Args:
        data: Bytes to checksum.

    Returns:
        The masked checksum as an unsigned 32-bit integer.
    """
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes | bytearray | memoryview) -> bytes:
    """Return ``data`` framed as one TFRecord record (header + data + footer)."""
    length = _U64.pack(len(data))
    return b"".join((length, _U32.pack(masked_crc(length)), data, _U32.pack(masked_crc(data))))


def frame_parts(*parts: bytes | bytearray | memoryview) -> bytes:
    """``frame(b"".join(parts))`` with one copy of the parts instead of two.

    The data CRC is chained over the parts, so a record made of a small head, a large image and
    a small tail (:func:`recordkit.format.example.example_parts`) is never joined before
    framing.
    """
    crc = 0
    size = 0
    for part in parts:
        crc = crc32c(part, crc)
        size += len(part)
    length = _U64.pack(size)
    footer = _U32.pack((((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF)
    return b"".join((length, _U32.pack(masked_crc(length)), *parts, footer))


def _parse_header(header: bytes, path: str, offset: int, verify: bool, file_size: int) -> int:
    """Return the data length of the record at ``offset``, checked against the file's size."""
    length, length_crc = _HEADER.unpack(header)
    if verify and masked_crc(header[:8]) != length_crc:
        raise CorruptRecordError(path, offset, "length CRC mismatch (corrupt record header)")
    remaining = file_size - offset - OVERHEAD
    if length > remaining:
        raise CorruptRecordError(
            path,
            offset,
            f"record length {length} exceeds the {max(remaining, 0)} bytes left in the file "
            "(truncated file or corrupt length)",
        )
    return length


def read_record_at(
    fd: int,
    offset: int,
    file_size: int,
    *,
    path: str,
    verify_crc: bool = True,
    expected_size: int | None = None,
) -> bytes:
    """Read the record that starts at ``offset`` and return its data.

    Uses ``os.pread``, so one descriptor may be shared by threads. When the index supplies the
    framed size the whole record is fetched with a single read.

    Args:
        fd: An OS-level file descriptor opened for reading.
        offset: Byte offset of the record's header.
        file_size: Size of the file in bytes; bounds every read.
        path: File name used in error messages.
        verify_crc: Check both CRCs. The length field is range-checked regardless.
        expected_size: The framed size the index claims for this record, if any.

    Returns:
        The record's data bytes.

    Raises:
        CorruptRecordError: The record is truncated, fails a CRC, or its length is impossible.
        IndexMismatchError: Its framed size disagrees with ``expected_size``.
    """
    if offset < 0 or offset + HEADER_SIZE > file_size:
        raise CorruptRecordError(
            path, offset, f"record header extends past end of file ({file_size} bytes)"
        )
    if expected_size is not None and OVERHEAD <= expected_size <= file_size - offset:
        buf = os.pread(fd, expected_size, offset)
        header = buf[:HEADER_SIZE]
    else:
        buf = None
        header = os.pread(fd, HEADER_SIZE, offset)
    if len(header) != HEADER_SIZE:
        raise CorruptRecordError(path, offset, "truncated record header")
    length = _parse_header(header, path, offset, verify_crc, file_size)
    if expected_size is not None and length + OVERHEAD != expected_size:
        raise IndexMismatchError(
            path,
            offset,
            f"index says the record is {expected_size} bytes, file says {length + OVERHEAD}",
        )
    if buf is None:
        buf = header + os.pread(fd, length + FOOTER_SIZE, offset + HEADER_SIZE)
    if len(buf) != length + OVERHEAD:
        raise CorruptRecordError(path, offset, "truncated record data")
    data = buf[HEADER_SIZE : HEADER_SIZE + length]
    if verify_crc and masked_crc(data) != _U32.unpack_from(buf, HEADER_SIZE + length)[0]:
        raise CorruptRecordError(path, offset, "data CRC mismatch (corrupt record)")
    return data


def unframe(
    buf: bytes, offset: int, file_size: int, *, path: str, verify_crc: bool = True
) -> bytes:
    """The data of the one framed record that ``buf`` holds (read from ``offset`` of a
    ``file_size``-byte file, e.g. by a range request), checked as :func:`read_record_at` does.

    Raises:
        CorruptRecordError: ``buf`` is not exactly one intact record.
        IndexMismatchError: The record's own length says another size than ``len(buf)``.
    """
    if len(buf) < HEADER_SIZE:
        raise CorruptRecordError(path, offset, "truncated record header")
    length = _parse_header(buf[:HEADER_SIZE], path, offset, verify_crc, file_size)
    if length + OVERHEAD != len(buf):
        raise IndexMismatchError(
            path,
            offset,
            f"index says the record is {len(buf)} bytes, file says {length + OVERHEAD}",
        )
    data = buf[HEADER_SIZE : HEADER_SIZE + length]
    if verify_crc and masked_crc(data) != _U32.unpack_from(buf, HEADER_SIZE + length)[0]:
        raise CorruptRecordError(path, offset, "data CRC mismatch (corrupt record)")
    return data


def scan(
    f: BinaryIO,
    *,
    path: str,
    verify_crc: bool = True,
    file_size: int | None = None,
) -> Iterator[tuple[int, int, bytes]]:
    """Iterate over every record of a TFRecord file, from its current position to the end.

    Args:
        f: A file opened in binary mode, positioned at a record boundary (usually 0).
        path: File name used in error messages.
        verify_crc: Check both CRCs of every record.
        file_size: Size of the file; taken from ``os.fstat`` when omitted.

    Yields:
        ``(offset, framed_size, data)`` for each record, in file order.

    Raises:
        CorruptRecordError: At the first damaged or truncated record.
    """
    if file_size is None:
        file_size = os.fstat(f.fileno()).st_size
    offset = f.tell()
    while offset < file_size:
        if offset + HEADER_SIZE > file_size:
            raise CorruptRecordError(
                path, offset, f"truncated record header ({file_size - offset} bytes at end)"
            )
        header = f.read(HEADER_SIZE)
        length = _parse_header(header, path, offset, verify_crc, file_size)
        body = f.read(length + FOOTER_SIZE)
        if len(body) != length + FOOTER_SIZE:  # file shrank under us
            raise CorruptRecordError(path, offset, "truncated record data")
        data = body[:length]
        if verify_crc and masked_crc(data) != _U32.unpack_from(body, length)[0]:
            raise CorruptRecordError(path, offset, "data CRC mismatch (corrupt record)")
        size = length + OVERHEAD
        yield offset, size, data
        offset += size


def scan_blocks(
    f: BinaryIO,
    *,
    path: str,
    file_size: int,
    block_size: int = 8 << 20,
    on_block: Callable[[bytes], None] | None = None,
) -> Iterator[tuple[int, int, bytes]]:
    """:func:`scan` for whole files read in large blocks: the same records, checks and errors.

    The file is read ``block_size`` bytes at a time (a record larger than that is read whole)
    and records are cut out of each block, so the cost per record is two CRC calls and a
    slice instead of two reads through the file object. CRCs are always checked.

    Args:
        f: A buffered binary file (its ``read(n)`` returns fewer bytes only at the end, as
            :func:`scan` assumes too), positioned at offset 0.
        path: File name used in error messages.
        file_size: Size of the file.
        block_size: Bytes per read.
        on_block: Called with every block read, in file order (e.g. to hash the file).

    Yields:
        ``(offset, framed_size, data)`` for each record, in file order.

    Raises:
        CorruptRecordError: At the first damaged or truncated record, with the same message
            :func:`scan` gives.
    """
    header = _HEADER.unpack_from
    footer = _U32.unpack_from
    buf = b""
    base = 0  # file offset of buf[0]
    offset = 0
    while offset < file_size:
        pos = offset - base
        if pos + HEADER_SIZE > len(buf):
            if offset + HEADER_SIZE > file_size:
                raise CorruptRecordError(
                    path, offset, f"truncated record header ({file_size - offset} bytes at end)"
                )
            chunk = f.read(min(max(block_size, HEADER_SIZE), file_size - offset) - (len(buf) - pos))
            if on_block is not None and chunk:
                on_block(chunk)
            buf, base, pos = buf[pos:] + chunk, offset, 0
            if len(buf) < HEADER_SIZE:  # file shrank under us
                raise CorruptRecordError(path, offset, "truncated record header")
        length, length_crc = header(buf, pos)
        crc = crc32c(buf[pos : pos + 8])
        if (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF != length_crc or (
            length > file_size - offset - OVERHEAD
        ):  # the checks and messages of _parse_header
            _parse_header(buf[pos : pos + HEADER_SIZE], path, offset, True, file_size)
        end = pos + HEADER_SIZE + length
        if end + FOOTER_SIZE > len(buf):  # keep the unfinished record, read at least all of it
            need = min(max(HEADER_SIZE + length + FOOTER_SIZE, block_size), file_size - offset)
            chunk = f.read(need - (len(buf) - pos))
            if on_block is not None and chunk:
                on_block(chunk)
            buf, base, pos = buf[pos:] + chunk, offset, 0
            end = HEADER_SIZE + length
            if end + FOOTER_SIZE > len(buf):  # file shrank under us
                raise CorruptRecordError(path, offset, "truncated record data")
        data = buf[pos + HEADER_SIZE : end]
        crc = crc32c(data)
        if (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF != footer(buf, end)[0]:
            raise CorruptRecordError(path, offset, "data CRC mismatch (corrupt record)")
        size = length + OVERHEAD
        yield offset, size, data
        offset += size
