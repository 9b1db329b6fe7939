"""What a pack worker does with a run of inputs: read, process, frame (threads or processes).

Everything here is a pure function of the inputs and the options, so a thread of the packer and
a worker process (:mod:`recordkit.pack.pool`) give the same bytes for the same job, and the
shards do not depend on which of them did the work or how the inputs were grouped into tasks.
"""

from __future__ import annotations

import errno
import os
import time
from typing import NamedTuple

from recordkit.format.example import image_example_parts
from recordkit.format.framing import frame_parts
from recordkit.imaging import EncodedImage, ImageError, ImageOptions, probe, process_image
from recordkit.memory import MemoryBudget, decode_cost
from recordkit.safeio import InputFileError, open_regular_sized

__all__ = [
    "DEFAULT_LIMITS",
    "DEFERRED",
    "Job",
    "Outcome",
    "TaskLimits",
    "read_and_process",
    "run_task",
]

Outcome = tuple[bytes | None, str | None, int]
"""``(framed record, None, source bytes)`` or ``(None, reason, source bytes)``."""

DEFERRED = "deferred: larger than a worker process may decode"
"""The reason of an outcome a worker process leaves to the packer's threads (see
:func:`read_and_process`'s ``defer_above``); never a reason a user sees."""


class Job(NamedTuple):
    """One input and what its record stores besides the image."""

    path: str
    labels: tuple[int, ...]
    filename: str
    index: int
    text: str


class TaskLimits(NamedTuple):
    """When a worker ends a task before its last job (the rest is submitted again).

    Attributes:
        bytes: Framed records a task may hold before it returns them.
        seconds: Time a task may run.
    """

    bytes: int = 1 << 20
    seconds: float = 0.05


DEFAULT_LIMITS = TaskLimits()


def _read(fd: int, size: int) -> bytes:
    """Up to ``size + 1`` bytes of ``fd`` (one more than ``fstat`` said, to see growth)."""
    data = os.read(fd, size + 1)
    if len(data) >= size or not data:  # a regular file read to its end in one call
        return data
    parts = [data]  # a short read (over 2 GB, or a file that shrank): read on to EOF
    got = len(data)
    while got <= size and (more := os.read(fd, size + 1 - got)):
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def read_and_process(
    path: str,
    image: ImageOptions,
    budget: MemoryBudget | None = None,
    defer_above: int | None = None,
) -> tuple[EncodedImage | None, str | None, int]:
    """``(encoded, None, source bytes)`` or ``(None, reason, source bytes)`` for one file.

    Only regular files are read (a ``.lst`` line naming ``/dev/zero`` or a FIFO is skipped,
    not read without end), and an image is decoded only when its estimated cost fits the
    memory budget; it waits while other threads' images leave too little of it.

    Args:
        path: The image file.
        image: How to process it.
        budget: The decode-memory budget (default: probe one).
        defer_above: In a worker process: a file or decode cost above this many bytes is not
            read or decoded here but returned with the reason :data:`DEFERRED`, for the
            packer's threads and their shared budget (which decides refusals).
    """
    try:
        fd, size = open_regular_sized(path, what="image")
    except InputFileError as exc:
        if exc.errno == errno.ENOENT:
            return None, "file not found", 0
        return None, exc.reason if exc.errno is None else f"cannot read: {exc.reason}", 0
    budget = budget or MemoryBudget.probe()
    try:
        if defer_above is not None and size > defer_above:
            return None, DEFERRED, 0
        if size > budget.total:
            return None, budget.refusal(size, f"a file of {size} bytes"), 0
        try:
            data = _read(fd, size)
        except OSError as exc:
            return None, f"cannot read: {exc.strerror or exc}", 0
    finally:
        os.close(fd)
    if not data:
        return None, "empty file (0 bytes)", 0
    if len(data) > size:
        return None, "the file grew while it was being read", 0
    try:
        _, width, height = probe(data)
        if width * height > image.max_pixels:
            return process_image(data, image), None, len(data)  # refused before decoding
        cost = decode_cost(width, height, len(data))
        if defer_above is not None and cost > defer_above:
            return None, DEFERRED, 0
        if cost > budget.total:
            return None, budget.refusal(cost, f"a {width}x{height} image"), len(data)
        with budget.hold(cost):
            return process_image(data, image), None, len(data)
    except ImageError as exc:
        return None, " ".join(str(exc).split()) or type(exc).__name__, len(data)


def _framed(job: Job, enc: EncodedImage) -> bytes:
    """The framed TFRecord record of one processed image."""
    head, tail = image_example_parts(
        len(enc.data),
        labels=job.labels,
        filename=job.filename,
        index=job.index,
        format=enc.format,
        height=enc.height,
        width=enc.width,
        channels=enc.channels,
        text=job.text,
    )
    return frame_parts(head, enc.data, tail)


def run_task(
    jobs: list[Job],
    image: ImageOptions,
    budget: MemoryBudget | None,
    limits: TaskLimits = DEFAULT_LIMITS,
    defer_above: int | None = None,
) -> tuple[list[Outcome], float]:
    """The outcomes of a prefix of ``jobs``, and the seconds they took.

    All of ``jobs`` unless the records reach ``limits.bytes`` or the time ``limits.seconds``
    first (at least one job is always done), so that the tasks in flight bound memory whatever
    the images turn out to be.
    """
    t0 = time.perf_counter()
    out: list[Outcome] = []
    held = 0
    for job in jobs:
        enc, reason, nbytes = read_and_process(job.path, image, budget, defer_above)
        framed = None if enc is None else _framed(job, enc)
        out.append((framed, reason, nbytes))
        held += len(framed) if framed is not None else 0
        if held >= limits.bytes or time.perf_counter() - t0 >= limits.seconds:
            break
    return out, time.perf_counter() - t0
