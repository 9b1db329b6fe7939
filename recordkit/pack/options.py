"""The inputs and outputs of :func:`recordkit.pack.pack`: options, result, error."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recordkit.errors import RecordkitError
from recordkit.imaging import ImageOptions
from recordkit.remote.urls import is_url

__all__ = [
    "DEFAULT_SHARD_BYTES",
    "PackError",
    "PackOptions",
    "PackResult",
    "SplitResult",
    "default_threads",
]

DEFAULT_SHARD_BYTES = 128 * 1024 * 1024
"""Target shard size: inside TensorFlow's 100-200 MB guidance; see docs/PACK.md."""


class PackError(RecordkitError):
    """A pack cannot start or go on: bad lists, conflicting outputs, or (``strict``) bad input."""


def default_threads() -> int:
    """The number of CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class PackOptions:
    """How to pack: image processing, sharding, parallelism, resume.

    Attributes:
        out: Output directory for shards and ``recordkit.json`` (created if missing), or a
            URL (``s3://bucket/ds``, ``gs://…``, ``https://…`` with PUT): then the shards are
            packed into ``staging`` and uploaded as each finishes, the manifest last (see
            :mod:`recordkit.pack.upload`). A URL is kept as a string, without a trailing ``/``.
        image: How each image is decoded, converted, resized and encoded.
        split: Split name of an unsuffixed list (``PREFIX.lst``, ``PREFIX_0.lst``, or a
            ``--list`` file without ``_train`` / ``_val`` / ``_test``).
        lists: Pack these ``.lst`` files instead of discovering ``PREFIX*.lst``.
        pack_label: Store every label of a multi-label line (else only the first, as im2rec).
        threads: Workers doing read → decode → resize → encode: threads, or as many worker
            processes where ``pool`` chooses them.
        pool: ``"auto"`` (default): threads, and worker processes for the rest of a pack once
            the images prove small (thumbnails, where two threads do no more than one: see
            :mod:`recordkit.pack.pool`); ``"threads"`` or ``"processes"`` to choose. The bytes
            written are the same either way.
        window: Most tasks in flight at once (0: ``4 * threads``); bounds memory. A task is a
            run of consecutive images (one photograph, dozens of thumbnails) whose records a
            worker returns once they reach 1 MiB.
        shard_size: Records per shard; when set, ``shard_bytes`` is ignored.
        shard_bytes: Target bytes per shard, estimated from the source files before writing.
        overwrite: Replace a split that is already packed (or half-packed) in ``out``.
        resume: Finish an interrupted pack of the same lists and options, keeping its
            finished shards.
        part: ``(k, n)``: pack only the shards ``i`` with ``i % n == k`` (one of ``n``
            machines); the manifest is written by a later ``merge``.
        merge: Write the manifest from the shards of all parts; packs nothing.
        strict: Make the first bad input fatal instead of skipping it, and refuse list
            entries that resolve outside the image root (which im2rec packs).
        memory: Bytes the images being decoded at one time may take together (each is
            estimated from its header before it is decoded; one that needs more than all of
            it is skipped with a reason that says so). None: half of what this process may
            still allocate (``recordkit.memory.usable_memory``). Not part of the shards'
            fingerprint: it decides only which oversized images are refused.
        fsync: ``fsync`` each shard and state file before renaming (crash safety on power loss).
        staging: With a URL ``out``: the local directory shards are written to before upload
            (None: :func:`recordkit.pack.upload.default_staging`).
        upload_window: With a URL ``out``: most finished shards waiting for or in upload at
            once; packing waits when it is full, so staging holds at most this many shards
            plus the one being written.
    """

    out: Path | str = Path("shards")
    image: ImageOptions = field(default_factory=ImageOptions)
    split: str = "train"
    lists: tuple[Path, ...] = ()
    pack_label: bool = False
    threads: int = field(default_factory=default_threads)
    pool: str = "auto"
    window: int = 0
    shard_size: int | None = None
    shard_bytes: int = DEFAULT_SHARD_BYTES
    overwrite: bool = False
    resume: bool = False
    part: tuple[int, int] = (0, 1)
    merge: bool = False
    strict: bool = False
    memory: int | None = None
    fsync: bool = True
    staging: Path | None = None
    upload_window: int = 2

    def __post_init__(self) -> None:
        out = os.fspath(self.out)
        object.__setattr__(self, "out", out.rstrip("/") if is_url(out) else Path(out))
        if self.staging is not None:
            object.__setattr__(self, "staging", Path(self.staging))
        if self.upload_window < 1:
            raise PackError(f"upload window must be at least 1, got {self.upload_window}")
        object.__setattr__(self, "lists", tuple(Path(p) for p in self.lists))
        if self.threads < 1:
            raise PackError(f"threads must be at least 1, got {self.threads}")
        if self.pool not in ("auto", "threads", "processes"):
            raise PackError(f"pool must be auto, threads or processes, got {self.pool!r}")
        if self.window < 0:
            raise PackError(f"window must be >= 0, got {self.window}")
        if self.shard_size is not None and self.shard_size < 1:
            raise PackError(f"shard size must be at least 1 record, got {self.shard_size}")
        if self.shard_bytes < 1:
            raise PackError(f"shard bytes must be at least 1, got {self.shard_bytes}")
        if self.memory is not None and self.memory < 1:
            raise PackError(f"memory must be at least 1 byte, got {self.memory}")
        k, n = self.part
        if n < 1 or not 0 <= k < n:
            raise PackError(f"part must be K/N with 0 <= K < N, got {k}/{n}")
        if self.overwrite and self.resume:
            raise PackError("--overwrite and --resume exclude each other")
        if self.merge and n > 1:
            raise PackError("--merge writes the manifest of all parts; do not give --part with it")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", self.split):
            raise PackError(f"invalid split name {self.split!r} (use letters, digits, '_' and '-')")

    @property
    def in_flight(self) -> int:
        """The effective in-flight window."""
        return self.window or 4 * self.threads


@dataclass(frozen=True)
class SplitResult:
    """What one split holds after the pack.

    Attributes:
        records: Records written in this run (resumed shards included).
        shards: Number of shards of the split (all parts).
        skipped: Inputs left out in this split.
        shards_written: Shards written by this run.
        shards_reused: Finished shards kept from an earlier run (``resume``).
    """

    records: int
    shards: int
    skipped: int
    shards_written: int
    shards_reused: int


@dataclass(frozen=True)
class PackResult:
    """The outcome of :func:`recordkit.pack.pack`.

    Attributes:
        out: The output directory (or URL).
        manifest: Path (or URL) of ``recordkit.json``, or ``None`` when only a part was packed.
        classes: Class names in label order.
        splits: Split name → :class:`SplitResult`.
        skipped: The inputs left out: dicts with ``split``, ``path`` and ``reason``.
        images: Inputs processed by this run (written or skipped).
        bytes_in: Source bytes read by this run.
        bytes_out: Shard bytes written by this run.
        seconds: Wall time.
        outside_root: The inputs packed although they resolve outside the image root (dicts
            with ``split``, ``path`` and ``reason``), as im2rec packs them.
    """

    out: Path | str
    manifest: Path | str | None
    classes: list[str]
    splits: dict[str, SplitResult]
    skipped: list[dict[str, Any]]
    images: int
    bytes_in: int
    bytes_out: int
    seconds: float
    outside_root: list[dict[str, Any]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line: records per split, skipped inputs, bytes in → out, time, images/s."""
        parts = []
        for name, s in self.splits.items():
            extra = f", {s.shards_reused} reused" if s.shards_reused else ""
            parts.append(f"{name} {s.records} records in {s.shards_written} shard(s){extra}")
        head = "packed " + ("; ".join(parts) if parts else "nothing")
        if self.outside_root:
            head += f" ({len(self.outside_root)} from outside ROOT)"
        return (
            f"{head}; skipped {len(self.skipped)} input(s); "
            f"{_mb(self.bytes_in)} in -> {_mb(self.bytes_out)} out; "
            f"{self.seconds:.1f} s, {self.images_per_second:.1f} images/s"
        )


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
