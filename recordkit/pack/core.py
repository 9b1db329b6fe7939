"""The packer: plan shards, run read → process → frame on threads or processes, write in order."""

from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from recordkit.format.manifest import MANIFEST_NAME, ShardEntry
from recordkit.format.writer import ShardWriter
from recordkit.listing import text_path
from recordkit.memory import MemoryBudget, format_bytes
from recordkit.pack.lists import (
    SplitList,
    entry_labels,
    find_lists,
    join_root,
    load_splits,
    outside_root,
    resolve_classes,
)
from recordkit.pack.options import PackError, PackOptions, PackResult, SplitResult
from recordkit.pack.plan import ShardPlan, SplitPlan, plan_split
from recordkit.pack.pool import ProcessWorkers, ordered, start_early
from recordkit.pack.remote import RemoteOutput
from recordkit.pack.state import (
    DoneShard,
    StateFile,
    already_packed,
    check_classes,
    drop_split_from_manifest,
    finished_shards,
    merge_parts,
    packed_outside,
    read_existing_manifest,
    split_files,
    state_files,
    state_name,
    write_final_manifest,
)
from recordkit.pack.work import Job

__all__ = ["pack", "Progress"]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""``progress(done, total)``: inputs processed so far by this run, and how many it will process."""


@dataclass
class _Task:
    plan: SplitPlan
    shard: ShardPlan
    state: StateFile


@dataclass
class _Stats:
    images: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


def _remove(paths: Iterable[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def _owned(plan: SplitPlan, part: tuple[int, int]) -> list[ShardPlan]:
    k, n = part
    return [s for s in plan.shards if s.number % n == k]


def _prepare(out: Path, plan: SplitPlan, opts: PackOptions) -> dict[int, DoneShard] | None:
    """Clear or check what ``out`` holds of this split; return the shards to keep.

    Returns ``None`` when the split is already packed with the same fingerprint (``resume``).
    """
    existing = read_existing_manifest(out)
    owned = _owned(plan, opts.part)
    single = opts.part[1] == 1
    own_state = out / state_name(plan.name, opts.part)
    if single:
        leftovers = split_files(out, plan.name) + state_files(out, plan.name)
    else:
        names = {s.file for s in owned} | {Path(s.file).with_suffix(".idx").name for s in owned}
        leftovers = [p for p in split_files(out, plan.name) if p.name.split(".tmp")[0] in names]
        leftovers += [own_state] if own_state.exists() else []
    # A state file being rewritten when the process was killed leaves its temporary copy.
    _remove(out.glob(f"{glob.escape(own_state.name)}.*.tmp"))
    if opts.overwrite:
        drop_split_from_manifest(out, plan.name)
        _remove(leftovers)
        return {}
    if already_packed(existing, plan, str(out), resume=opts.resume):
        return None
    if opts.resume:
        return finished_shards(out, plan)
    if leftovers:
        raise PackError(
            f"{out} holds an unfinished pack of split {plan.name!r} ({leftovers[0].name}); "
            "use --resume to finish it or --overwrite to start over"
        )
    return {}


def _start_early(root: str, splits: list[SplitList], opts: PackOptions) -> ProcessWorkers | None:
    """Worker processes started now when a sample of 16 inputs says thumbnails (see
    :func:`recordkit.pack.pool.start_early`); they exit when dropped unused."""
    entries = [e for s in splits for e in s.entries]
    n = len(entries)
    sample = [os.path.join(root, entries[k * n // 16].path) for k in range(min(n, 16))]
    return start_early(opts.pool, opts.threads, n, sample, opts.image)


_WRITE_BATCH_RECORDS = 256
_WRITE_BATCH_BYTES = 1 << 20
"""The packer hands the writer this many records or bytes at a time (fewer calls per record;
the bytes, index and hash are the same as one record at a time)."""


def _write_shards(
    tasks: list[_Task],
    root: str,
    classes: list[str],
    out: Path,
    opts: PackOptions,
    progress: Progress | None,
    stats: _Stats,
    early: ProcessWorkers | None = None,
    remote: RemoteOutput | None = None,
) -> None:
    total = sum(t.shard.stop - t.shard.start for t in tasks)
    jobs = (
        Job(
            join_root(root, t.plan.entries[j].path),
            t.plan.labels[j],
            t.plan.entries[j].path.replace(os.sep, "/"),
            t.plan.entries[j].index,
            classes[t.plan.labels[j][0]],
        )
        for t in tasks
        for j in range(t.shard.start, t.shard.stop)
    )
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
        for task in tasks:
            plan, shard = task.plan, task.shard
            skipped: list[tuple[str, str]] = []
            with ShardWriter(out / shard.file, fsync=opts.fsync) as writer:
                frames: list[bytes] = []  # written together (one write, one hash update)
                held = 0
                for j in range(shard.start, shard.stop):
                    framed, reason, nbytes = next(stream)
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
                    if progress is not None:
                        progress(stats.images, total)
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
    classes, from_dirs = resolve_classes(splits, opts.pack_label)
    if isinstance(opts.out, str):  # a URL: packed into a staging directory, then uploaded
        remote = RemoteOutput.open(opts)
        try:
            return _pack(
                root_s, splits, classes, from_dirs, remote.staging, opts, progress, remote, t0
            )
        finally:
            remote.close()
    out = opts.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PackError(f"cannot create {out}: {exc.strerror or exc}") from None
    return _pack(root_s, splits, classes, from_dirs, out, opts, progress, None, t0)


def _pack(
    root_s: str,
    splits: list[SplitList],
    classes: list[str],
    from_dirs: bool,
    out: Path,
    opts: PackOptions,
    progress: Progress | None,
    remote: RemoteOutput | None,
    t0: float,
) -> PackResult:
    early = None if opts.merge else _start_early(root_s, splits, opts)
    existing = read_existing_manifest(out)
    replaced_all = (
        existing is not None and opts.overwrite and set(existing.splits) <= {s.name for s in splits}
    )
    if existing is not None and not replaced_all:
        classes = check_classes(existing, classes, from_dirs, out)
    plans = []
    for s in splits:
        source = ", ".join(str(p) for p in s.files)
        labels = [entry_labels(e, opts.pack_label, source) for e in s.entries]
        plans.append(plan_split(s.name, s.entries, labels, root_s, classes, opts))
    extras = {
        p.name: {"lists": [f.name for f in s.files]} for p, s in zip(plans, splits, strict=True)
    }
    if opts.strict or opts.merge:  # needed now: --strict refuses before packing
        outside = _outside_root(root_s, splits, opts.strict)
        checked: Future[dict[str, list[dict[str, Any]]]] | None = None
    else:  # only the manifest needs it: an lstat walk that runs while the images are packed
        checker = ThreadPoolExecutor(1, thread_name_prefix="recordkit-outside")
        checked = checker.submit(_outside_root, root_s, splits, False)
        checker.shutdown(wait=False)

    if opts.merge:
        return merge_parts(out, plans, classes, from_dirs, extras, outside, t0)

    tasks: list[_Task] = []
    dones: dict[str, dict[int, DoneShard]] = {}
    for plan in plans:
        done = remote.prepare(plan) if remote is not None else _prepare(out, plan, opts)
        if done is None:
            logger.info("split %s is already packed in %s", plan.name, out)
            continue
        state = StateFile(out / state_name(plan.name, opts.part), plan, opts.part, opts.fsync)
        state.done = {k: v for k, v in done.items() if k % opts.part[1] == opts.part[0]}
        dones[plan.name] = done
        for shard in _owned(plan, opts.part):
            if shard.number not in done:
                tasks.append(_Task(plan, shard, state))
            else:
                logger.info("keeping finished shard %s", shard.file)
        for shard in _owned(plan, opts.part):
            _remove(
                p
                for p in (
                    out / (shard.file + ".tmp"),
                    out / (Path(shard.file).with_suffix(".idx").name + ".tmp"),
                )
            )

    stats = _Stats()
    _write_shards(tasks, root_s, classes, out, opts, progress, stats, early, remote)
    if checked is not None:
        outside = checked.result()

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
        owned = [s.number for s in _owned(plan, opts.part)]
        written = sum(1 for t in tasks if t.plan is plan)
        mine = [done[k] for k in owned]
        results[plan.name] = SplitResult(
            records=sum(d.entry.records for d in mine),
            shards=len(plan.shards),
            skipped=sum(len(d.skipped) for d in mine),
            shards_written=written,
            shards_reused=len(owned) - written,
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
                _remove(state_files(out, plan.name))
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


def _outside_root(
    root: str, splits: list[SplitList], strict: bool
) -> dict[str, list[dict[str, Any]]]:
    """Per split, the entries that resolve outside ROOT (im2rec packs them; so do we, naming
    them); with ``strict`` the first is an error."""
    out: dict[str, list[dict[str, Any]]] = {}
    for s in splits:
        found = outside_root(root, s.entries)
        if found and strict:
            k, why = found[0]
            raise PackError(
                f"{', '.join(str(p) for p in s.files)}: {text_path(s.entries[k].path)!r} is "
                f"outside ROOT ({why}); --strict refuses it (im2rec would pack it)"
            )
        if found:
            k, why = found[0]
            logger.warning(
                "split %s: %d input(s) outside ROOT, packed as im2rec does (first: %s: %s)",
                s.name,
                len(found),
                text_path(s.entries[k].path),
                why,
            )
        out[s.name] = [
            {
                "split": s.name,
                "path": text_path(s.entries[k].path.replace(os.sep, "/")),
                "reason": f"outside ROOT: {why}",
            }
            for k, why in found
        ]
    return out
