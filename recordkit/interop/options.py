"""The inputs and outputs of :func:`recordkit.interop.convert_rec`: options, result, error."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recordkit.errors import RecordkitError

__all__ = [
    "DEFAULT_SHARD_BYTES",
    "ConvertError",
    "ConvertOptions",
    "ConvertResult",
    "Progress",
]

DEFAULT_SHARD_BYTES = 128 * 1024 * 1024
"""Target shard size, the same default as ``recordkit pack`` (see docs/PACK.md)."""

Progress = Callable[[int, int], None]
"""``progress(done, total)``: records copied so far, and how many the ``.rec`` holds."""


class ConvertError(RecordkitError):
    """A conversion cannot start or go on: bad inputs, conflicting output, or (``strict``) a
    record whose image is not a readable JPEG or PNG."""


@dataclass(frozen=True)
class ConvertOptions:
    """Where and how to write the converted shards.

    Attributes:
        out: Output directory for shards and ``recordkit.json`` (created if missing). Other
            splits already in it are kept; the class names must agree with theirs.
        split: Name of the split the records become.
        shard_size: Records per shard; when set, ``shard_bytes`` is ignored.
        shard_bytes: Target bytes per shard (the image bytes are copied, so this is exact up to
            about 200 bytes of features per record).
        overwrite: Replace the split if ``out`` already holds it (or unfinished files of it).
        strict: Make a record whose image is not a readable JPEG/PNG fatal instead of skipping
            it.
        fsync: ``fsync`` each shard before renaming it (crash safety on power loss).
    """

    out: Path = Path("shards")
    split: str = "train"
    shard_size: int | None = None
    shard_bytes: int = DEFAULT_SHARD_BYTES
    overwrite: bool = False
    strict: bool = False
    fsync: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        if self.shard_size is not None and self.shard_size < 1:
            raise ConvertError(f"shard size must be at least 1 record, got {self.shard_size}")
        if self.shard_bytes < 1:
            raise ConvertError(f"shard bytes must be at least 1, got {self.shard_bytes}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", self.split):
            raise ConvertError(
                f"invalid split name {self.split!r} (use letters, digits, '_' and '-')"
            )


@dataclass(frozen=True)
class ConvertResult:
    """The outcome of :func:`convert_rec`.

    Attributes:
        out: The output directory.
        manifest: Path of ``recordkit.json``.
        split: The split written.
        classes: Class names in label order (as the manifest holds them).
        records: Records written.
        shards: Shards written.
        skipped: Records left out: dicts with ``split``, ``path``, ``reason``, ``id`` and
            ``offset`` (also listed in the manifest).
        bytes_in: Size of the ``.rec`` file.
        bytes_out: Shard bytes written.
        seconds: Wall time.
    """

    out: Path
    manifest: Path
    split: str
    classes: list[str]
    records: int
    shards: int
    skipped: list[dict[str, Any]]
    bytes_in: int
    bytes_out: int
    seconds: float

    def summary(self) -> str:
        """One line: records and shards written, skipped records, bytes in → out, time."""
        rate = self.records / self.seconds if self.seconds > 0 else 0.0
        return (
            f"converted {self.records} records into split {self.split!r} "
            f"({self.shards} shard(s)); skipped {len(self.skipped)} record(s); "
            f"{self.bytes_in / 1e6:.1f} MB in -> {self.bytes_out / 1e6:.1f} MB out; "
            f"{self.seconds:.1f} s, {rate:.1f} records/s"
        )
