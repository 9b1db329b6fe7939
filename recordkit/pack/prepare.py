"""What a pack run works out before and beside its images: the plan of every split, whether
the images may start before it (:func:`nothing_to_keep`), which shards to write, what lies
outside ROOT, and worker processes started early."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recordkit.format.manifest import Manifest
from recordkit.listing import text_path
from recordkit.pack.lists import SplitList, outside_root
from recordkit.pack.options import PackError, PackOptions
from recordkit.pack.plan import ShardPlan, SplitPlan, plan_split
from recordkit.pack.pool import ProcessWorkers, start_early
from recordkit.pack.remote import RemoteOutput
from recordkit.pack.state import (
    DoneShard,
    StateFile,
    already_packed,
    drop_split_from_manifest,
    finished_shards,
    read_existing_manifest,
    split_files,
    state_files,
    state_name,
)

__all__ = [
    "Planned",
    "Task",
    "nothing_to_keep",
    "outside_report",
    "owned",
    "plan_all",
    "remove",
    "shards_to_write",
    "start_early_workers",
]

logger = logging.getLogger(__name__)


@dataclass
class Task:
    plan: SplitPlan
    shard: ShardPlan
    state: StateFile


def remove(paths: Iterable[Path]) -> None:
    """Delete ``paths`` that exist."""
    for p in paths:
        p.unlink(missing_ok=True)


def owned(plan: SplitPlan, part: tuple[int, int]) -> list[ShardPlan]:
    """The shards of ``plan`` that ``--part K/N`` writes: numbers ``k`` with ``k % N == K``."""
    k, n = part
    return [s for s in plan.shards if s.number % n == k]


def _prepare(out: Path, plan: SplitPlan, opts: PackOptions) -> dict[int, DoneShard] | None:
    """Clear or check what ``out`` holds of this split; return the shards to keep.

    Returns ``None`` when the split is already packed with the same fingerprint (``resume``).
    """
    existing = read_existing_manifest(out)
    mine = owned(plan, opts.part)
    single = opts.part[1] == 1
    own_state = out / state_name(plan.name, opts.part)
    if single:
        leftovers = split_files(out, plan.name) + state_files(out, plan.name)
    else:
        names = {s.file for s in mine} | {Path(s.file).with_suffix(".idx").name for s in mine}
        leftovers = [p for p in split_files(out, plan.name) if p.name.split(".tmp")[0] in names]
        leftovers += [own_state] if own_state.exists() else []
    # A state file being rewritten when the process was killed leaves its temporary copy.
    remove(out.glob(f"{glob.escape(own_state.name)}.*.tmp"))
    if opts.overwrite:
        drop_split_from_manifest(out, plan.name)
        remove(leftovers)
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


def start_early_workers(
    root: str, splits: list[SplitList], opts: PackOptions
) -> ProcessWorkers | None:
    """Worker processes started now when a sample of 16 inputs says thumbnails (see
    :func:`recordkit.pack.pool.start_early`); they exit when dropped unused."""
    entries = [e for s in splits for e in s.entries]
    n = len(entries)
    sample = [os.path.join(root, entries[k * n // 16].path) for k in range(min(n, 16))]
    return start_early(opts.pool, opts.threads, n, sample, opts.image)


@dataclass
class Planned:
    """The shards of every split, and what the manifest records besides them."""

    plans: list[SplitPlan]
    extras: dict[str, dict[str, Any]]
    outside: dict[str, list[dict[str, Any]]] | None  # None: being checked beside the packing
    dones: dict[str, dict[int, DoneShard]] = field(default_factory=dict)


def plan_all(
    root: str,
    splits: list[SplitList],
    labels: list[list[tuple[int, ...]]],
    classes: list[str],
    opts: PackOptions,
) -> Planned:
    """Plan every split (with ``--strict`` or ``--merge``, check for entries outside ROOT)."""
    plans = [
        plan_split(s.name, s.entries, lab, root, classes, opts)
        for s, lab in zip(splits, labels, strict=True)
    ]
    extras = {s.name: {"lists": [f.name for f in s.files]} for s in splits}
    # --strict refuses before writing; --merge packs nothing to check beside
    outside = outside_report(root, splits, opts.strict) if opts.strict or opts.merge else None
    return Planned(plans, extras, outside)


def nothing_to_keep(
    out: Path, splits: list[SplitList], existing: Manifest | None, opts: PackOptions
) -> bool:
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


def shards_to_write(
    planned: Planned, out: Path, opts: PackOptions, remote: RemoteOutput | None, fresh: bool
) -> list[Task]:
    """The shards to write: the owned ones not finished already (``--resume``); clears what
    ``out`` holds of them. Records which shards are kept in ``planned.dones``.

    Raises:
        PackError: See :func:`_prepare`; with ``fresh`` (the images were processed before
            this was known), also when ``out`` now has shards to keep after all.
    """
    tasks: list[Task] = []
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
        for shard in owned(plan, opts.part):
            if shard.number not in done:
                tasks.append(Task(plan, shard, state))
            else:
                logger.info("keeping finished shard %s", shard.file)
        for shard in owned(plan, opts.part):
            remove(
                p
                for p in (
                    out / (shard.file + ".tmp"),
                    out / (Path(shard.file).with_suffix(".idx").name + ".tmp"),
                )
            )
    return tasks


def outside_report(
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
