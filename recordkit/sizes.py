"""Byte counts as users type them (``--shard-bytes 128MiB``); imports nothing heavy."""

from __future__ import annotations

import re

from recordkit.errors import RecordkitError

__all__ = ["parse_size"]

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1 << 10,
    "m": 1000**2, "mb": 1000**2, "mib": 1 << 20,
    "g": 1000**3, "gb": 1000**3, "gib": 1 << 30,
}  # fmt: skip


def parse_size(text: str | int, error: type[RecordkitError] = RecordkitError) -> int:
    """Parse a byte count: ``134217728``, ``128MiB``, ``100MB``, ``1.5G`` (k/M/G are decimal).

    Args:
        text: The count, or an int taken as is.
        error: The exception class to raise (e.g. ``PackError``).

    Returns:
        The count in bytes.

    Raises:
        RecordkitError: (``error``) Not a positive size.
    """
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", text)
        unit = m.group(2).lower() if m else ""
        if m is None or unit not in _UNITS:
            raise error(f"not a size: {text!r} (examples: 134217728, 128MiB, 100MB, 1G)")
        value = int(float(m.group(1)) * _UNITS[unit])
    if value < 1:
        raise error(f"size must be positive, got {text!r}")
    return value
