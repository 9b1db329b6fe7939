"""Exceptions raised by recordkit.

Every error a user can cause derives from :class:`RecordkitError` and carries a message that
reads as one line; the CLI prints it as ``Error: <message>`` and exits non-zero.
"""

from __future__ import annotations

import os

__all__ = [
    "RecordkitError",
    "CorruptRecordError",
    "IndexMismatchError",
    "ManifestError",
]


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
