"""Open inputs safely: regular files only, and never more bytes than the caller can justify.

Every file recordkit reads on a user's behalf (shards, indexes, manifests, lists, images,
MXNet ``.rec`` / ``.idx``) goes through :func:`open_regular` or :func:`read_regular`:

* The file is opened with ``O_NONBLOCK``, so naming a FIFO does not hang the ``open``; then
  ``fstat`` on the open descriptor must say *regular file*. A FIFO, socket, character or block
  device (``/dev/zero``, ``/dev/stdin``) or directory is refused with a one-line
  :class:`InputFileError`, whether named directly or through a symlink.
* :func:`read_regular` checks the size against a limit the caller derives from what the file
  can legitimately hold (an index is bounded by its data file, a manifest by a fixed cap) before
  reading, and reads at most ``limit + 1`` bytes, so a file that grows underneath is caught too.
* A file name with a NUL byte (which no file can have) is an :class:`InputFileError`, not a
  ``ValueError`` from the OS layer.
"""

from __future__ import annotations

import os
import stat

from recordkit.errors import RecordkitError

__all__ = [
    "InputFileError",
    "InputTooLargeError",
    "file_kind",
    "open_regular",
    "open_regular_sized",
    "read_regular",
]

_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_FLAGS |= getattr(os, "O_BINARY", 0)


class InputFileError(RecordkitError):
    """An input cannot be opened, is not a regular file, is larger than it may be, or cannot
    be named.

    Attributes:
        path: The file as given.
        reason: What is wrong, without the file name (``"No such file or directory"``, ``"is a
            FIFO; only regular files are read as shards"``).
        errno: The OS error number when the OS refused to open it, else None.
    """

    def __init__(
        self, path: str | os.PathLike[str] | bytes, reason: str, errno: int | None = None
    ) -> None:
        self.path = os.fsdecode(path)
        self.reason = reason
        self.errno = errno
        super().__init__(f"{self.path}: {reason}")


class InputTooLargeError(InputFileError):
    """A regular file holds more bytes than it legitimately can.

    Attributes:
        size: Its size (or the bytes read so far, when it grew while being read).
        limit: The most it may hold.
    """

    def __init__(self, path: str | os.PathLike[str], size: int, limit: int, what: str) -> None:
        self.size = size
        self.limit = limit
        super().__init__(path, f"{size} bytes, more than the {limit} allowed for this {what}")


def file_kind(mode: int) -> str:
    """What ``st_mode`` describes, in words (``"a FIFO"``, ``"a character device"``, …)."""
    for test, name in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike[str], *, what: str = "file") -> int:
    """Open ``path`` for reading and return the descriptor, if it is a regular file.

    Args:
        path: The file (symlinks are followed; the target must be a regular file).
        what: What the file is meant to be, for the message (``"shard"``, ``"image"``, …).

    Returns:
        An OS-level descriptor (close it with ``os.close`` or wrap it with ``os.fdopen``).

    Raises:
        InputFileError: It does not exist or cannot be opened (``errno`` set), is a FIFO,
            device, socket or directory, or its name has a NUL.
    """
    return open_regular_sized(path, what=what)[0]


def open_regular_sized(path: str | os.PathLike[str], *, what: str = "file") -> tuple[int, int]:
    """:func:`open_regular`, and the file's size from the same ``fstat``: ``(fd, size)``."""
    try:
        fd = os.open(path, _FLAGS)
    except ValueError:  # embedded NUL byte
        raise InputFileError(_printable(path), "file name contains a NUL byte") from None
    except OSError as exc:  # missing, permission, a symlink loop, a name too long
        raise InputFileError(path, exc.strerror or str(exc), exc.errno) from None
    try:
        st = os.fstat(fd)
        mode = st.st_mode
        if not stat.S_ISREG(mode):
            raise InputFileError(
                path, f"is {file_kind(mode)}; only regular files are read as {what}s"
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # ordinary reads from here on
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def read_regular(path: str | os.PathLike[str], *, limit: int, what: str = "file") -> bytes:
    """Read a whole regular file of at most ``limit`` bytes.

    Args:
        path: The file.
        limit: The most bytes it may hold.
        what: What the file is meant to be, for messages.

    Returns:
        Its bytes.

    Raises:
        InputFileError: It cannot be opened, or is not a regular file.
        InputTooLargeError: Larger than ``limit`` (checked before reading, and while reading).
        OSError: It cannot be read.
    """
    fd = open_regular(path, what=what)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise InputTooLargeError(path, size, limit, what)
        chunks = []
        total = 0
        while total <= limit:
            # the expected size plus one byte in one read, then one more read to see the end
            chunk = os.read(fd, min(max(size - total, 0) + 1, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:  # it grew while being read
            raise InputTooLargeError(path, total, limit, what)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _printable(path: object) -> str:
    text = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
    return text.replace("\x00", "\\x00")
