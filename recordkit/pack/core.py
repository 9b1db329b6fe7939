"""The packer: plan shards, run read → process → frame on threads or processes, write in order."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from recordkit.format.manifest import MANIFEST_NAME, ShardEntry
from recordkit.format.writer import ShardWriter
from recordkit.listing import ListEntry, text_path
from recordkit.memory import MemoryBudget, format_bytes
from recordkit.pack.lists import (
    SplitList,
    find_lists,
    join_root,
    load_splits,
    resolve_classes,
    split_labels,
)
from recordkit.pack.options import PackError, PackOptions, PackResult, SplitResult
from recordkit.pack.pool import ProcessWorkers, ordered
from recordkit.pack.prepare import (
    Planned,
    Task,
    nothing_to_keep,
    outside_report,
    owned,
    plan_all,
    remove,
    shards_to_write,
    start_early_workers,
)
from recordkit.pack.remote import RemoteOutput
from recordkit.pack.state import (
    DoneShard,
    check_classes,
    merge_parts,
    packed_outside,
    read_existing_manifest,
    state_files,
    write_final_manifest,
)
from recordkit.pack.work import Job, Outcome

__all__ = ["pack", "Progress"]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""``progress(done, total)``: inputs processed so far by this run, and how many it will process."""


@dataclass
class _Stats:
    images: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


_WRITE_BATCH_RECORDS = 256
_WRITE_BATCH_BYTES = 1 << 20
"""The packer hands the writer this many records or bytes at a time (fewer calls per record;
the bytes, index and hash are the same as one record at a time)."""


def _jobs(
    root: str,
    classes: list[str],
    parts: Iterable[tuple[Sequence[ListEntry], Sequence[tuple[int, ...]], int, int]],
) -> Iterator[Job]:
    """The jobs of ``entries[start:stop]`` (with their ``labels``) for each part, in order."""
    # join_root and the separator change without a call per entry where they are plain
    quick = not os.altsep and bool(root)
    prefix = root if root.endswith(os.sep) else root + os.sep
    slash = os.sep == "/"
    for entries, labels, start, stop in parts:
        for j in range(start, stop):
            entry, lab = entries[j], labels[j]
            path = entry.path
            yield Job(
                prefix + path if quick and path[:1] != os.sep else join_root(root, path),
                lab,
                path if slash else path.replace(os.sep, "/"),
                entry.index,
                classes[lab[0]],
            )


_AHEAD_BYTES = 64 << 20
"""Records processed while the shards are still being planned wait in memory up to this many
bytes (then the packer waits for the plan)."""


def _ahead(
    planned: Future[Planned], stream: Iterator[Outcome], limit: int, seen: Callable[[], None]
) -> tuple[Planned, deque[Outcome]]:
    """Read outcomes from ``stream`` while ``planned`` is being made, at most ``limit`` bytes
    of records; return the plan and the outcomes read (``seen()`` after each)."""
    got: deque[Outcome] = deque()
    held = 0
    while not planned.done() and held < limit:
        outcome = next(stream, None)
        if outcome is None:
            break
        got.append(outcome)
        held += len(outcome[0]) if outcome[0] is not None else 0
        seen()
    return planned.result(), got


def _write_shards(
    planned: Planned | Future[Planned],
    tasks_of: Callable[[Planned], list[Task]],
    jobs: Iterable[Job],
    total: int,
    root: str,
    out: Path,
    opts: PackOptions,
    progress: Progress | None,
    stats: _Stats,
    early: ProcessWorkers | None = None,
    remote: RemoteOutput | None = None,
) -> tuple[Planned, list[Task]]:
    """Process ``jobs`` (``total`` of them) and write them into the shards of
    ``tasks_of(planned)``; with a future plan, the images are processed while it is made."""
    budget = MemoryBudget(opts.memory, "--memory") if opts.memory else MemoryBudget.probe()
    logger.info(
        "images may use %s of memory to decode (%s)", format_bytes(budget.total), budget.source
    )
    pool = ThreadPoolExecutor(opts.threads, thread_name_prefix="recordkit-pack")
    # Our pool is the parallelism: OpenCV's own thread pool inside cv2.resize would only
    # oversubscribe the cores (and made 1 thread look faster than it is). Restored below.
    cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    stream = None
    try:
        stream = ordered(
            pool,
            jobs,
            total,
            opts.image,
            opts.in_flight,
            budget,
            mode=opts.pool,
            processes=opts.threads,
            workers=early,
        )
        reported = 0

        def seen() -> None:
            nonlocal reported
            reported += 1
            if progress is not None:
                progress(reported, total)

        got: deque[Outcome] = deque()
        if isinstance(planned, Future):  # start on the images while the shards are planned
            planned, got = _ahead(planned, stream, min(_AHEAD_BYTES, budget.total // 4), seen)
        tasks = tasks_of(planned)
        outcomes = _drain(got, stream)
        for task in tasks:
            plan, shard = task.plan, task.shard
            skipped: list[tuple[str, str]] = []
            with ShardWriter(out / shard.file, fsync=opts.fsync) as writer:
                frames: list[bytes] = []  # written together (one write, one hash update)
                held = 0
                for j in range(shard.start, shard.stop):
                    framed, reason, nbytes = next(outcomes)
                    stats.images += 1
                    stats.bytes_in += nbytes
                    if framed is None:
                        assert reason is not None
                        entry = plan.entries[j]
                        if opts.strict:
                            where = text_path(os.path.join(root, entry.path))
                            raise PackError(f"{where}: {reason} (--strict)")
                        logger.info("skipping %s: %s", text_path(entry.path), reason)
                        skipped.append((text_path(entry.path.replace(os.sep, "/")), reason))
                    else:
                        frames.append(framed)
                        held += len(framed)
                        if held >= _WRITE_BATCH_BYTES or len(frames) >= _WRITE_BATCH_RECORDS:
                            writer.write_framed_many(frames)
                            frames, held = [], 0
                    if stats.images > reported:
                        seen()
                writer.write_framed_many(frames)
            info = writer.info
            assert info is not None
            stats.bytes_out += info.bytes
            done = ShardEntry(
                file=info.path.name,
                index=info.index_path.name,
                records=info.records,
                bytes=info.bytes,
                sha256=info.sha256,
            )
            finished = DoneShard(done, tuple(skipped))
            task.state.add(shard.number, finished)
            if remote is not None:  # uploaded while the next shard is packed
                remote.shard_done(plan.name, shard.number, finished)
    finally:
        if stream is not None:
            stream.close()
        if early is not None:  # never iterated (nothing to pack), or closed above already
            early.close(kill=True)
        pool.shutdown(wait=True, cancel_futures=True)
        cv2.setNumThreads(cv2_threads)
    return planned, tasks


def _in_background(fn: Callable[..., Planned], *args: Any) -> Future[Planned]:
    """``fn(*args)`` on a daemon thread: a pack stopped by Ctrl-C does not wait for the plan."""
    future: Future[Planned] = Future()

    def run() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed to the packer's thread with its traceback
            future.set_exception(exc)

    threading.Thread(target=run, name="recordkit-plan", daemon=True).start()
    return future


def _drain(got: deque[Outcome], stream: Iterator[Outcome]) -> Iterator[Outcome]:
    """The outcomes read ahead (freed as they are taken), then the rest of ``stream``."""
    while got:
        yield got.popleft()
    yield from stream


def pack(
    prefix: str | os.PathLike[str] | None,
    root: str | os.PathLike[str],
    options: PackOptions | None = None,
    *,
    progress: Progress | None = None,
) -> PackResult:
    """Pack the images of im2rec ``.lst`` files into TFRecord shards and a manifest.

    Finds ``PREFIX.lst`` / ``PREFIX_{train,val,test}.lst`` (and chunk files
    ``PREFIX_{k}[_split].lst``, concatenated in chunk order), or takes ``options.lists``;
    cuts each split into contiguous shards planned before writing; processes images on
    ``options.threads`` threads with a bounded window and writes them in list order, so the
    bytes do not depend on the thread count. Bad inputs are skipped and recorded (fatal with
    ``options.strict``). The manifest ``recordkit.json`` is written last; a directory that
    already holds other splits gets the new ones added under the same class map.

    Args:
        prefix: The list prefix (``None`` when ``options.lists`` names the lists).
        root: The image folder the lists' paths are relative to.
        options: See :class:`PackOptions`.
        progress: ``progress(done, total)`` after each input (for a progress bar).

    Returns:
        A :class:`PackResult` (``manifest`` is ``None`` after a ``part`` run).

    Raises:
        PackError: Missing or malformed lists, a split already packed (without ``overwrite``
            or ``resume``), a conflicting class map, missing parts at ``merge``, or a bad
            input with ``strict``.
        RecordkitError: Other library errors (e.g. an unreadable manifest in ``out``).
    """
    opts = options or PackOptions()
    t0 = time.perf_counter()
    root_s = os.fspath(root)
    if not os.path.isdir(root_s):
        raise PackError(f"ROOT is not a directory: {root_s}")
    files = find_lists(prefix, opts.lists, opts.split)
    splits = load_splits(files)
    # Worker processes import while the labels, classes and shards are worked out.
    early = None if opts.merge else start_early_workers(root_s, splits, opts)
    try:
        labels = [split_labels(s, opts.pack_label) for s in splits]
        classes, from_dirs = resolve_classes(splits, opts.pack_label, labels)
        args = (root_s, splits, labels, classes, from_dirs)
        if isinstance(opts.out, str):  # a URL: packed into a staging directory, then uploaded
            remote = RemoteOutput.open(opts)
            try:
                return _pack(*args, remote.staging, opts, progress, remote, early, t0)
            finally:
                remote.close()
        out = opts.out
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PackError(f"cannot create {out}: {exc.strerror or exc}") from None
        return _pack(*args, out, opts, progress, None, early, t0)
    finally:
        if early is not None:  # closed already unless the pack stopped before its images
            early.close(kill=True)


def _pack(
    root_s: str,
    splits: list[SplitList],
    labels: list[list[tuple[int, ...]]],
    classes: list[str],
    from_dirs: bool,
    out: Path,
    opts: PackOptions,
    progress: Progress | None,
    remote: RemoteOutput | None,
    early: ProcessWorkers | None,
    t0: float,
) -> PackResult:
    existing = read_existing_manifest(out)
    replaced_all = (
        existing is not None and opts.overwrite and set(existing.splits) <= {s.name for s in splits}
    )
    if existing is not None and not replaced_all:
        classes = check_classes(existing, classes, from_dirs, out)
    if opts.merge:
        planned = plan_all(root_s, splits, labels, classes, opts)
        outside = planned.outside
        assert outside is not None
        return merge_parts(out, planned.plans, classes, from_dirs, planned.extras, outside, t0)
    checked: Future[dict[str, list[dict[str, Any]]]] | None = None
    if not opts.strict:  # only the manifest needs it: an lstat walk beside the packing
        checker = ThreadPoolExecutor(1, thread_name_prefix="recordkit-outside")
        checked = checker.submit(outside_report, root_s, splits, False)
        checker.shutdown(wait=False)

    stats = _Stats()
    if remote is None and nothing_to_keep(out, splits, existing, opts):
        # Every entry is packed whatever the plan says: the images need not wait for it.
        future = _in_background(plan_all, root_s, splits, labels, classes, opts)
        whole = ((s.entries, lab, 0, len(s.entries)) for s, lab in zip(splits, labels, strict=True))
        total = sum(len(s.entries) for s in splits)
        jobs = _jobs(root_s, classes, whole)

        def tasks_of(planned: Planned) -> list[Task]:
            return shards_to_write(planned, out, opts, remote, fresh=True)

        planned, tasks = _write_shards(
            future, tasks_of, jobs, total, root_s, out, opts, progress, stats, early, remote
        )
    else:
        planned = plan_all(root_s, splits, labels, classes, opts)
        tasks = shards_to_write(planned, out, opts, remote, fresh=False)
        parts = ((t.plan.entries, t.plan.labels, t.shard.start, t.shard.stop) for t in tasks)
        total = sum(t.shard.stop - t.shard.start for t in tasks)
        _write_shards(
            planned,
            lambda _: tasks,
            _jobs(root_s, classes, parts),
            total,
            root_s,
            out,
            opts,
            progress,
            stats,
            early,
            remote,
        )
    plans, dones, extras = planned.plans, planned.dones, planned.extras
    outside = checked.result() if checked is not None else planned.outside
    assert outside is not None

    results: dict[str, SplitResult] = {}
    skipped: list[dict[str, Any]] = []
    manifest_path: Path | str | None = None
    finals = []
    for plan in plans:
        if plan.name not in dones:
            continue
        done = {
            **dones[plan.name],
            **{t.shard.number: t.state.done[t.shard.number] for t in tasks if t.plan is plan},
        }
        numbers = [s.number for s in owned(plan, opts.part)]
        written = sum(1 for t in tasks if t.plan is plan)
        mine = [done[k] for k in numbers]
        results[plan.name] = SplitResult(
            records=sum(d.entry.records for d in mine),
            shards=len(plan.shards),
            skipped=sum(len(d.skipped) for d in mine),
            shards_written=written,
            shards_reused=len(numbers) - written,
        )
        skipped.extend(
            {"split": plan.name, "path": p, "reason": r} for d in mine for p, r in d.skipped
        )
        outside[plan.name] = packed_outside(outside[plan.name], done.values())
        finals.append((plan, done, extras[plan.name]))
    if opts.part[1] == 1:
        if finals:
            manifest_path = write_final_manifest(out, classes, from_dirs, finals, outside)
            if remote is not None:  # last: every shard it names is uploaded
                manifest_path = remote.publish([plan.name for plan, _, _ in finals])
            for plan, _, _ in finals:
                remove(state_files(out, plan.name))
        elif remote is not None:
            remote.finish_uploads()
            manifest_path = remote.remote.child(MANIFEST_NAME)
        elif (out / MANIFEST_NAME).exists():
            manifest_path = out / MANIFEST_NAME
    return PackResult(
        out=opts.out,
        manifest=manifest_path,
        classes=classes,
        splits=results,
        skipped=skipped,
        images=stats.images,
        bytes_in=stats.bytes_in,
        bytes_out=stats.bytes_out,
        seconds=time.perf_counter() - t0,
        outside_root=[o for name in results for o in outside.get(name, [])],
    )
