"""The packer: plan shards, run read → process → frame on threads or processes, write in order."""

from __future__ import annotations

import glob
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
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
    outside_root,
    resolve_classes,
    split_labels,
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
from recordkit.pack.work import Job, Outcome

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


@dataclass
class _Planned:
    """The shards of every split, and what the manifest records besides them."""

    plans: list[SplitPlan]
    extras: dict[str, dict[str, Any]]
    outside: dict[str, list[dict[str, Any]]] | None  # None: being checked beside the packing
    dones: dict[str, dict[int, DoneShard]] = field(default_factory=dict)


def _plan(
    root: str,
    splits: list[SplitList],
    labels: list[list[tuple[int, ...]]],
    classes: list[str],
    opts: PackOptions,
) -> _Planned:
    """Plan every split (with ``--strict`` or ``--merge``, check for entries outside ROOT)."""
    plans = [
        plan_split(s.name, s.entries, lab, root, classes, opts)
        for s, lab in zip(splits, labels, strict=True)
    ]
    extras = {s.name: {"lists": [f.name for f in s.files]} for s in splits}
    # --strict refuses before writing; --merge packs nothing to check beside
    outside = _outside_root(root, splits, opts.strict) if opts.strict or opts.merge else None
    return _Planned(plans, extras, outside)


def _fresh(out: Path, splits: list[SplitList], existing: Any, opts: PackOptions) -> bool:
    """Whether ``out`` holds nothing of these splits to keep or to refuse on, so that every
    entry will be packed whatever the plan: one pack (no ``--part``), and either ``--overwrite``
    or no shard, state file or manifest entry of any of the splits."""
    if opts.part[1] != 1:
        return False
    if opts.overwrite:
        return True
    return not any(
        (existing is not None and s.name in existing.splits)
        or split_files(out, s.name)
        or state_files(out, s.name)
        for s in splits
    )


def _tasks(
    planned: _Planned, out: Path, opts: PackOptions, remote: RemoteOutput | None, fresh: bool
) -> list[_Task]:
    """The shards to write: the owned ones not finished already (``--resume``); clears what
    ``out`` holds of them. Records which shards are kept in ``planned.dones``.

    Raises:
        PackError: See :func:`_prepare`; with ``fresh`` (the images were processed before
            this was known), also when ``out`` now has shards to keep after all.
    """
    tasks: list[_Task] = []
    for plan in planned.plans:
        done = remote.prepare(plan) if remote is not None else _prepare(out, plan, opts)
        if fresh and done != {}:
            raise PackError(f"{out} changed while split {plan.name!r} was planned; pack again")
        if done is None:
            logger.info("split %s is already packed in %s", plan.name, out)
            continue
        state = StateFile(out / state_name(plan.name, opts.part), plan, opts.part, opts.fsync)
        state.done = {k: v for k, v in done.items() if k % opts.part[1] == opts.part[0]}
        planned.dones[plan.name] = done
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
    return tasks


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
    planned: Future[_Planned], stream: Iterator[Outcome], limit: int, seen: Callable[[], None]
) -> tuple[_Planned, deque[Outcome]]:
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
    planned: _Planned | Future[_Planned],
    tasks_of: Callable[[_Planned], list[_Task]],
    jobs: Iterable[Job],
    total: int,
    root: str,
    out: Path,
    opts: PackOptions,
    progress: Progress | None,
    stats: _Stats,
    early: ProcessWorkers | None = None,
    remote: RemoteOutput | None = None,
) -> tuple[_Planned, list[_Task]]:
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
    labels = [split_labels(s, opts.pack_label) for s in splits]
    classes, from_dirs = resolve_classes(splits, opts.pack_label, labels)
    if isinstance(opts.out, str):  # a URL: packed into a staging directory, then uploaded
        remote = RemoteOutput.open(opts)
        try:
            staging = remote.staging
            return _pack(
                root_s, splits, labels, classes, from_dirs, staging, opts, progress, remote, t0
            )
        finally:
            remote.close()
    out = opts.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PackError(f"cannot create {out}: {exc.strerror or exc}") from None
    return _pack(root_s, splits, labels, classes, from_dirs, out, opts, progress, None, t0)


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
    t0: float,
) -> PackResult:
    early = None if opts.merge else _start_early(root_s, splits, opts)
    existing = read_existing_manifest(out)
    replaced_all = (
        existing is not None and opts.overwrite and set(existing.splits) <= {s.name for s in splits}
    )
    if existing is not None and not replaced_all:
        classes = check_classes(existing, classes, from_dirs, out)
    if opts.merge:
        planned = _plan(root_s, splits, labels, classes, opts)
        outside = planned.outside
        assert outside is not None
        return merge_parts(out, planned.plans, classes, from_dirs, planned.extras, outside, t0)
    checked: Future[dict[str, list[dict[str, Any]]]] | None = None
    if not opts.strict:  # only the manifest needs it: an lstat walk beside the packing
        checker = ThreadPoolExecutor(1, thread_name_prefix="recordkit-outside")
        checked = checker.submit(_outside_root, root_s, splits, False)
        checker.shutdown(wait=False)

    stats = _Stats()
    if remote is None and _fresh(out, splits, existing, opts):
        # Every entry is packed whatever the plan says: the images need not wait for it.
        planner = ThreadPoolExecutor(1, thread_name_prefix="recordkit-plan")
        future = planner.submit(_plan, root_s, splits, labels, classes, opts)
        planner.shutdown(wait=False)
        whole = ((s.entries, lab, 0, len(s.entries)) for s, lab in zip(splits, labels, strict=True))
        total = sum(len(s.entries) for s in splits)
        jobs = _jobs(root_s, classes, whole)

        def tasks_of(planned: _Planned) -> list[_Task]:
            return _tasks(planned, out, opts, remote, fresh=True)

        planned, tasks = _write_shards(
            future, tasks_of, jobs, total, root_s, out, opts, progress, stats, early, remote
        )
    else:
        planned = _plan(root_s, splits, labels, classes, opts)
        tasks = _tasks(planned, out, opts, remote, fresh=False)
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
