"""Read MXNet RecordIO files (``.rec`` / ``.idx``) as written by ``im2rec.py``.

Byte layout (all integers little-endian), following dmlc-core's ``recordio.h``/``recordio.cc``:

=========== ======== ===================================================================
bytes       field    meaning
=========== ======== ===================================================================
4           magic    ``0xced7230a``
4           lrecord  upper 3 bits: ``cflag``; lower 29 bits: ``length`` of this part
``length``  data     this part's bytes
0-3         pad      zeros up to a multiple of 4
=========== ======== ===================================================================

``cflag`` 0 is a whole record. The writer splits a payload wherever the magic number occurs at
a 4-byte-aligned position inside it: the parts before, between and after those positions are
written as ``cflag`` 1 (first), 2 (middle) and 3 (last), and the magic words themselves are
dropped. Reading joins the parts and puts the 4 magic bytes back between consecutive parts
(dmlc ``RecordIOReader::NextRecord``), so the payload comes back byte for byte.

A payload is an image record (MXNet ``recordio.pack``): ``IRHeader`` = struct ``<IfQQ``
(``flag`` uint32, ``label`` float32, ``id`` uint64, ``id2`` uint64), then when ``flag > 0``
``flag`` float32 labels (the header's ``label`` is then unused), then the encoded image.

The ``.idx`` file has one ``key<TAB>offset`` line per record (``MXIndexedRecordIO``); the key
is im2rec's image index.

Readers here never trust a length: every part is checked against the file size before it is
read, so a damaged file raises :class:`RecFormatError` naming the byte offset, never a hang.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from recordkit.errors import CorruptRecordError, RecordkitError
from recordkit.safeio import InputFileError, open_regular, read_regular

__all__ = [
    "IR_HEADER_SIZE",
    "MAGIC",
    "RecFormatError",
    "RecHeader",
    "RecRecord",
    "parse_ir_header",
    "read_idx",
    "read_rec",
    "scan_rec_headers",
]

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_PART = struct.Struct("<II")
_IR = struct.Struct("<IfQQ")
IR_HEADER_SIZE = _IR.size  # 24
_LENGTH_MASK = (1 << 29) - 1
_MAX_IDX = 1 << 32  # an .idx read without its .rec's size
_HEAD_PEEK = 256  # bytes read ahead of a record's data in a header-only scan (IRHeader + labels)


class RecFormatError(CorruptRecordError):
    """An MXNet ``.rec`` file (or its ``.idx``) is damaged or is not RecordIO.

    The message reads ``<file>: offset <N>: <what is wrong>``.
    """


@dataclass(frozen=True)
class RecHeader:
    """One record's ``IRHeader`` and labels, without the image bytes.

    Attributes:
        key: The record's key in the ``.idx`` file, or ``None`` in a sequential scan.
        offset: Byte offset of the record's first part in the ``.rec`` file.
        end: Offset just past the record (its last part, padding included).
        flag: ``IRHeader.flag``: 0 for one label in the header, else the number of labels.
        labels: The labels (float32 values as Python floats); one when ``flag`` is 0.
        id: ``IRHeader.id`` (im2rec: the image index of the ``.lst`` line).
        id2: ``IRHeader.id2`` (im2rec: 0).
        image_size: Length of the image bytes that follow the header and labels.
        parts: Number of RecordIO parts (more than 1 when the payload contained the magic).
    """

    key: int | None
    offset: int
    end: int
    flag: int
    labels: tuple[float, ...]
    id: int
    id2: int
    image_size: int
    parts: int


@dataclass(frozen=True)
class RecRecord:
    """One image record of a ``.rec`` file.

    Attributes:
        key: The record's key in the ``.idx`` file, or ``None`` in a sequential scan.
        offset: Byte offset of the record's first part in the ``.rec`` file.
        flag: ``IRHeader.flag``: 0 for one label in the header, else the number of labels.
        labels: The labels (float32 values as Python floats).
        id: ``IRHeader.id`` (im2rec: the image index of the ``.lst`` line).
        id2: ``IRHeader.id2``.
        image: The image bytes, exactly as stored.
        parts: Number of RecordIO parts the payload was split into.
    """

    key: int | None
    offset: int
    flag: int
    labels: tuple[float, ...]
    id: int
    id2: int
    image: bytes
    parts: int


def read_idx(path: str | os.PathLike[str], *, rec_size: int | None = None) -> list[tuple[int, int]]:
    """Read an MXNet ``.idx`` file.

    Args:
        path: The ``.idx`` file: one ``key<TAB>offset`` line per record (any whitespace
            between the two integers is accepted; blank lines are skipped). It must be a
            regular file.
        rec_size: Size of the ``.rec`` it indexes: the ``.idx`` may hold no more than a line
            per 8 bytes of it (each record has an 8-byte header).

    Returns:
        ``(key, offset)`` pairs in file order.

    Raises:
        RecordkitError: The file cannot be read, a line is malformed, or a key repeats (the
            message names the file and the 1-based line number).
    """
    path_s = os.fsdecode(path)
    limit = _MAX_IDX if rec_size is None else (rec_size // _PART.size + 1) * 48 + 4096
    try:
        lines = read_regular(path_s, limit=limit, what="MXNet .idx file").split(b"\n")
    except InputFileError as exc:
        raise RecordkitError(f"cannot read {exc}") from None
    except OSError as exc:
        raise RecordkitError(f"cannot read {path_s}: {exc.strerror or exc}") from None
    out: list[tuple[int, int]] = []
    seen: dict[int, int] = {}
    for lineno, raw in enumerate(lines, start=1):
        fields = raw.split()
        if not fields:
            continue
        try:
            if len(fields) != 2:
                raise ValueError
            key, offset = int(fields[0]), int(fields[1])
            if offset < 0:
                raise ValueError
        except ValueError:
            shown = raw.decode("utf-8", "replace").strip()[:60]
            raise RecordkitError(
                f"{path_s}, line {lineno}: expected 'key<TAB>offset', got {shown!r} "
                "(not an MXNet .idx file?)"
            ) from None
        if key in seen:
            raise RecordkitError(
                f"{path_s}, line {lineno}: key {key} repeats line {seen[key]} (damaged .idx)"
            )
        seen[key] = lineno
        out.append((key, offset))
    return out


def _read_exact(fd: int, n: int, offset: int) -> bytes:
    data = os.pread(fd, n, offset)
    while len(data) < n:  # pread may return short reads on some file systems
        more = os.pread(fd, n - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


def _read_payload(
    fd: int, offset: int, file_size: int, path: str, limit: int | None
) -> tuple[bytes, int, int, int]:
    """Read the logical record whose first part starts at ``offset``.

    Returns ``(data, total length, end offset, parts)``. With ``limit``, a one-part record's
    data is read only up to ``limit`` bytes (multi-part records are always read whole).
    """
    chunks: list[bytes] = []
    total = 0
    pos = offset
    parts = 0
    while True:
        if pos + _PART.size > file_size:
            left = file_size - pos
            what = "record header" if parts == 0 else f"continuation part {parts + 1}"
            where = f" (at offset {pos})" if parts else ""
            raise RecFormatError(
                path,
                offset,
                f"truncated {what}{where}: {left} byte(s) left in the file, 8 needed",
            )
        head = _read_exact(fd, _PART.size, pos)
        if len(head) != _PART.size:
            raise RecFormatError(path, offset, "truncated record header (file shrank?)")
        magic, lrec = _PART.unpack(head)
        if magic != MAGIC:
            where = "" if parts == 0 else f" of continuation part {parts + 1} at offset {pos}"
            raise RecFormatError(
                path,
                offset,
                f"bad RecordIO magic 0x{magic:08x}{where} (expected 0x{MAGIC:08x}): "
                "not an MXNet .rec file, a damaged one, or a wrong .idx offset",
            )
        cflag, length = lrec >> 29, lrec & _LENGTH_MASK
        if parts == 0 and cflag not in (0, 1):
            raise RecFormatError(
                path,
                offset,
                f"record starts with continuation flag {cflag} (expected 0 or 1): damaged "
                "file, or an .idx offset inside a record",
            )
        if parts > 0 and cflag not in (2, 3):
            raise RecFormatError(
                path,
                offset,
                f"continuation part {parts + 1} at offset {pos} has flag {cflag} "
                "(expected 2 or 3): damaged file",
            )
        padded = (length + 3) & ~3
        if pos + _PART.size + padded > file_size:
            what = "record" if parts == 0 else f"continuation part {parts + 1} at offset {pos}"
            raise RecFormatError(
                path,
                offset,
                f"{what} of {length} bytes runs past the end of the file ({file_size} bytes): "
                "truncated file",
            )
        parts += 1
        if parts > 1:
            chunks.append(_MAGIC_BYTES)
            total += len(_MAGIC_BYTES)
        want = length if (limit is None or cflag != 0) else min(length, limit)
        if want:
            data = _read_exact(fd, want, pos + _PART.size)
            if len(data) != want:
                raise RecFormatError(path, offset, "truncated record data (file shrank?)")
            chunks.append(data)
        total += length
        pos += _PART.size + padded
        if cflag in (0, 3):
            return b"".join(chunks), total, pos, parts


def parse_ir_header(
    payload: bytes, *, path: str = "<rec>", offset: int = 0
) -> tuple[int, tuple[float, ...], int, int, int]:
    """Parse the ``IRHeader`` (and labels) at the start of a record payload.

    Args:
        payload: The record's payload, or at least its header and labels.
        path: File name used in error messages.
        offset: Offset of the record, for error messages.

    Returns:
        ``(flag, labels, id, id2, image_start)``: ``labels`` holds the header's ``label``
        when ``flag`` is 0, else the ``flag`` labels that follow the header; the image bytes
        start at ``image_start``.

    Raises:
        RecFormatError: The payload is shorter than the header or than its labels.
    """
    if len(payload) < IR_HEADER_SIZE:
        raise RecFormatError(
            path,
            offset,
            f"bad image header: the record holds {len(payload)} bytes, fewer than the "
            f"{IR_HEADER_SIZE}-byte IRHeader (not an image record)",
        )
    flag, label, id_, id2 = _IR.unpack_from(payload)
    if flag == 0:
        return flag, (label,), id_, id2, IR_HEADER_SIZE
    start = IR_HEADER_SIZE + 4 * flag
    if start > len(payload):
        raise RecFormatError(
            path,
            offset,
            f"bad image header: flag {flag} announces {flag} float32 labels ({4 * flag} bytes) "
            f"but only {len(payload) - IR_HEADER_SIZE} bytes follow the header",
        )
    return flag, struct.unpack_from(f"<{flag}f", payload, IR_HEADER_SIZE), id_, id2, start


class _RecFile:
    """An open ``.rec`` file: reads logical records at given offsets, bounded by its size."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fsdecode(path)
        self.fd = open_regular(self.path, what="MXNet .rec file")
        self.size = os.fstat(self.fd).st_size

    def close(self) -> None:
        os.close(self.fd)

    def read(self, offset: int, limit: int | None = None) -> tuple[bytes, int, int, int]:
        return _read_payload(self.fd, offset, self.size, self.path, limit)

    def offsets(
        self, idx: list[tuple[int, int]] | None, limit: int | None
    ) -> Iterator[tuple[int | None, int, bytes, int, int, int]]:
        """``(key, offset, data, total length, end, parts)`` per record, .idx or file order."""
        if idx is None:
            offset = 0
            while offset < self.size:
                data, total, end, parts = self.read(offset, limit)
                yield None, offset, data, total, end, parts
                offset = end
            return
        for key, offset in idx:
            if offset >= self.size:
                raise RecFormatError(
                    self.path,
                    offset,
                    f".idx key {key} points past the end of the file ({self.size} bytes): the "
                    ".idx does not belong to this .rec, or the .rec is truncated",
                )
            try:
                data, total, end, parts = self.read(offset, limit)
            except RecFormatError as exc:
                raise RecFormatError(
                    self.path, exc.offset, f"{exc.reason} (.idx key {key})"
                ) from None
            yield key, offset, data, total, end, parts


def _entries(
    idx: str | os.PathLike[str] | list[tuple[int, int]] | None,
) -> list[tuple[int, int]] | None:
    return read_idx(idx) if isinstance(idx, (str, os.PathLike)) else idx


def scan_rec_headers(
    path: str | os.PathLike[str],
    idx: str | os.PathLike[str] | list[tuple[int, int]] | None = None,
) -> Iterator[RecHeader]:
    """Walk a ``.rec`` file reading only each record's framing, ``IRHeader`` and labels.

    Cheap (one small read per record, image bytes are skipped) and it checks the framing of
    every record, so a damaged file is found before anything is written.

    Args:
        path: The ``.rec`` file.
        idx: Its ``.idx`` file (or parsed ``(key, offset)`` pairs): records are visited in
            ``.idx`` order. ``None``: every record, in file order.

    Yields:
        A :class:`RecHeader` per record.

    Raises:
        RecFormatError: Bad magic, truncated record, impossible continuation flags, or a
            header too short for its labels; the message names the byte offset.
        RecordkitError: The ``.idx`` is malformed.
        OSError: The file cannot be opened.
    """
    entries = _entries(idx)
    rec = _RecFile(path)
    try:
        for key, offset, data, total, end, parts in rec.offsets(entries, _HEAD_PEEK):
            if len(data) < total:
                need = IR_HEADER_SIZE
                if len(data) >= IR_HEADER_SIZE:
                    need += 4 * _IR.unpack_from(data)[0]
                if need > len(data):  # many labels: read what they need
                    data = rec.read(offset, need)[0]
            flag, labels, id_, id2, start = parse_ir_header(data, path=rec.path, offset=offset)
            yield RecHeader(
                key=key,
                offset=offset,
                end=end,
                flag=flag,
                labels=labels,
                id=id_,
                id2=id2,
                image_size=total - start,
                parts=parts,
            )
    finally:
        rec.close()


def read_rec(
    path: str | os.PathLike[str],
    idx: str | os.PathLike[str] | list[tuple[int, int]] | None = None,
) -> Iterator[RecRecord]:
    """Iterate over the image records of an MXNet ``.rec`` file.

    Example:
        >>> for r in read_rec("data.rec", "data.idx"):  # doctest: +SKIP
        ...     print(r.key, r.id, r.labels, len(r.image))

    Args:
        path: The ``.rec`` file.
        idx: Its ``.idx`` file (or parsed ``(key, offset)`` pairs): records are read in
            ``.idx`` order, as ``MXIndexedRecordIO`` does, and records the ``.idx`` does not
            list are not read. ``None``: a sequential scan of every record in file order.

    Yields:
        A :class:`RecRecord` per record, its image bytes exactly as stored (continuation
        records joined with their magic words restored).

    Raises:
        RecFormatError: Bad magic, truncated record, impossible continuation flags, or an
            image header too short for its labels; the message names the byte offset.
        RecordkitError: The ``.idx`` is malformed.
        OSError: The file cannot be opened.
    """
    entries = _entries(idx)
    rec = _RecFile(path)
    try:
        for key, offset, data, _total, _end, parts in rec.offsets(entries, None):
            flag, labels, id_, id2, start = parse_ir_header(data, path=rec.path, offset=offset)
            yield RecRecord(
                key=key,
                offset=offset,
                flag=flag,
                labels=labels,
                id=id_,
                id2=id2,
                image=data[start:],
                parts=parts,
            )
    finally:
        rec.close()
