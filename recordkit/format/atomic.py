"""Write a small text file atomically: temporary file in the same directory, fsync, rename."""

from __future__ import annotations

import os
from pathlib import Path

from recordkit.errors import DiskFullError, is_disk_full

__all__ = ["atomic_write_text"]


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Replace ``path`` with ``text`` so that readers see the old file or the new, never half.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        DiskFullError: The disk filled up (the temporary file is removed, ``path`` untouched).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding=encoding) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise DiskFullError(path, getattr(exc, "strerror", None)) from exc
        raise
    return path
