"""Exceptions raised by recordkit.

Every error a user can cause derives from :class:`RecordkitError` and carries a message that
reads as one line; the CLI prints it as ``Error: <message>`` and exits non-zero.
"""

from __future__ import annotations

import errno
import os

__all__ = [
    "RecordkitError",
    "CorruptRecordError",
    "IndexMismatchError",
    "ManifestError",
    "DiskFullError",
    "is_disk_full",
]

_DISK_FULL = frozenset(
    code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None
)


class RecordkitError(Exception):
    """Base class of every error recordkit raises on bad input."""


class CorruptRecordError(RecordkitError):
    """A TFRecord file is damaged: bad CRC, truncated record, impossible length, bad payload.

    Attributes:
        path: The file.
        offset: Byte offset of the start of the damaged record.
        reason: What is wrong, without the location.
    """

    def __init__(self, path: str | os.PathLike[str], offset: int, reason: str) -> None:
        self.path = os.fspath(path)
        self.offset = offset
        self.reason = reason
        super().__init__(f"{self.path}: offset {offset}: {reason}")


class IndexMismatchError(CorruptRecordError):
    """An ``.idx`` file disagrees with the TFRecord file it indexes."""


class ManifestError(RecordkitError):
    """A shard directory's manifest is missing, unreadable, newer than this code, or wrong."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is an ``OSError`` saying the file system (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL


class DiskFullError(RecordkitError):
    """The disk (or quota) filled up while ``path`` was being written.

    Raised once the half-written temporary file is removed; files finished before are left
    as they were.

    Attributes:
        path: The file that was being written (its final name).
        strerror: The operating system's wording (``No space left on device``).
    """

    def __init__(self, path: str | os.PathLike[str], strerror: str | None = None) -> None:
        self.path = os.fspath(path)
        self.strerror = strerror or os.strerror(errno.ENOSPC)
        super().__init__(f"{self.strerror} while writing {self.path}")
