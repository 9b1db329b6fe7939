"""Progress files for resume and ``--part``, and the final manifest.

After each finished shard the packer rewrites (atomically) a small JSON file
``.pack-state.{split}.json`` (``.pack-state.{split}.part-K-of-N.json`` for ``--part K/N``)
holding the plan's fingerprint and, per finished shard, its ``ShardInfo`` fields and the inputs
it skipped. A shard counts as finished when it is in a state file with the same fingerprint
and its final-named ``.tfrecord`` and ``.idx`` agree with the recorded size and record count.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recordkit.classmap import existing_manifest, merge_classes
from recordkit.errors import DiskFullError, is_disk_full
from recordkit.format.manifest import (
    MANIFEST_NAME,
    Manifest,
    ShardEntry,
    SplitEntry,
    write_manifest,
)
from recordkit.pack.options import PackError, PackResult, SplitResult
from recordkit.pack.plan import SplitPlan

__all__ = [
    "DoneShard",
    "already_packed",
    "drop_split_from_manifest",
    "merge_parts",
    "packed_outside",
    "StateFile",
    "finished_shards",
    "parse_state",
    "read_existing_manifest",
    "state_files",
    "split_files",
    "state_data",
    "write_final_manifest",
]

logger = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass(frozen=True)
class DoneShard:
    """A finished shard as a state file records it."""

    entry: ShardEntry
    skipped: tuple[tuple[str, str], ...]  # (path, reason) in list order

    def to_dict(self) -> dict[str, Any]:
        return {**self.entry.to_dict(), "skipped": [list(s) for s in self.skipped]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DoneShard:
        entry = ShardEntry(
            file=str(d["file"]),
            index=str(d["index"]),
            records=int(d["records"]),
            bytes=int(d["bytes"]),
            sha256=str(d["sha256"]),
        )
        return cls(entry, tuple((str(p), str(r)) for p, r in d.get("skipped", [])))


def state_name(split: str, part: tuple[int, int]) -> str:
    k, n = part
    return f".pack-state.{split}.json" if n == 1 else f".pack-state.{split}.part-{k}-of-{n}.json"


def state_files(out: Path, split: str) -> list[Path]:
    """All state files of ``split`` in ``out`` (every part)."""
    return sorted(
        p for p in out.glob(f".pack-state.{split}.*json") if p.name.startswith(".pack-state.")
    )


def part_counts(out: Path, split: str) -> set[int]:
    """The ``N`` of every ``--part K/N`` run that left a state file of ``split`` in ``out``."""
    found = set()
    pattern = re.compile(rf"\.pack-state\.{re.escape(split)}\.part-\d+-of-(\d+)\.json")
    for path in state_files(out, split):
        match = pattern.fullmatch(path.name)
        if match:
            found.add(int(match.group(1)))
    return found


def split_files(out: Path, split: str) -> list[Path]:
    """Shard files (finished or temporary) of ``split`` in ``out``, of any shard count."""
    pats = (
        f"{split}-?????-of-?????.{ext}" for ext in ("tfrecord", "idx", "tfrecord.tmp", "idx.tmp")
    )
    return sorted({p for pat in pats for p in out.glob(pat)})


@dataclass
class StateFile:
    """The state file this run writes: one split, one part."""

    path: Path
    plan: SplitPlan
    part: tuple[int, int]
    fsync: bool = True
    done: dict[int, DoneShard] = field(default_factory=dict)

    def add(self, number: int, shard: DoneShard) -> None:
        self.done[number] = shard
        self.save()

    def save(self) -> None:
        data = state_data(self.plan, self.part, self.done)
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, ensure_ascii=False)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if is_disk_full(exc):
                raise DiskFullError(self.path, getattr(exc, "strerror", None)) from exc
            raise


def state_data(
    plan: SplitPlan, part: tuple[int, int], done: dict[int, DoneShard]
) -> dict[str, Any]:
    """The JSON content of a state file recording ``done`` shards of ``plan``."""
    return {
        "version": STATE_VERSION,
        "split": plan.name,
        "fingerprint": plan.fingerprint,
        "num_shards": len(plan.shards),
        "part": list(part),
        "shards": {str(k): v.to_dict() for k, v in sorted(done.items())},
    }


def parse_state(data: dict[str, Any], where: str, plan: SplitPlan) -> dict[int, DoneShard]:
    """The shards a state file's content records (empty when it is malformed).

    Raises:
        PackError: The state file was written for other lists or options.
    """
    if not isinstance(data, dict):
        logger.warning("ignoring malformed state file %s: not a JSON object", where)
        return {}
    if data.get("fingerprint") != plan.fingerprint:
        raise PackError(
            f"{where} was written by a pack of split {plan.name!r} with other lists or "
            "options; pack with the same ones, or use --overwrite to start over"
        )
    try:
        shards = {int(k): DoneShard.from_dict(v) for k, v in data["shards"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        logger.warning("ignoring malformed state file %s: %s", where, exc)
        return {}
    return {k: v for k, v in shards.items() if 0 <= k < len(plan.shards)}


def _load_state(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        logger.warning("ignoring unreadable state file %s: %s", path, exc)
        return None


def _consistent(out: Path, entry: ShardEntry) -> bool:
    """The final-named shard and index exist and agree with the recorded size and count."""
    try:
        if (out / entry.file).stat().st_size != entry.bytes:
            return False
        with open(out / entry.index, "rb") as f:
            return sum(1 for line in f if line.strip()) == entry.records
    except OSError:
        return False


def finished_shards(
    out: Path, plan: SplitPlan, ignore: frozenset[int] = frozenset()
) -> dict[int, DoneShard]:
    """Finished shards of ``plan`` recorded by any state file in ``out`` (shard numbers in
    ``ignore`` are not looked at).

    Raises:
        PackError: A state file of this split was written for other lists or options.
    """
    done: dict[int, DoneShard] = {}
    for path in state_files(out, plan.name):
        data = _load_state(path)
        if data is None:
            continue
        for k, shard in parse_state(data, str(path), plan).items():
            if k in ignore:
                continue
            if _consistent(out, shard.entry):
                done[k] = shard
            else:
                logger.warning(
                    "%s: recorded in %s but incomplete; redoing it", shard.entry.file, path
                )
    return done


def read_existing_manifest(out: Path) -> Manifest | None:
    """The manifest already in ``out``, or ``None``."""
    return existing_manifest(out, PackError)


def already_packed(existing: Manifest | None, plan: SplitPlan, place: str, *, resume: bool) -> bool:
    """Whether ``plan``'s split is packed already in the manifest ``existing`` (of ``place``: a
    directory or URL, for messages) and ``resume`` asks to keep it as it is.

    Returns:
        True: packed with the same fingerprint and ``resume`` (nothing to do); False: the split
        is not in the manifest.

    Raises:
        PackError: The split is packed there but ``resume`` is off, or it was packed from
            other lists or options.
    """
    if existing is None or plan.name not in existing.splits:
        return False
    if not resume:
        raise PackError(
            f"split {plan.name!r} is already packed in {place}; use --overwrite to replace it"
        )
    old = (existing.pack.get("splits") or {}).get(plan.name) or {}
    if old.get("fingerprint") == plan.fingerprint:
        return True
    raise PackError(
        f"split {plan.name!r} in {place} was packed from other lists or options; "
        "use --overwrite to replace it"
    )


def check_classes(existing: Manifest, classes: list[str], from_dirs: bool, out: Path) -> list[str]:
    """The class map to use when adding splits to ``existing`` (:func:`merge_classes`).

    Raises:
        PackError: The class maps conflict.
    """
    return merge_classes(
        existing.classes,
        classes,
        named=from_dirs,
        out=out,
        error=PackError,
        source="in the lists",
        hint="pack into another --out",
    )


def write_final_manifest(
    out: Path,
    classes: list[str],
    from_dirs: bool,
    results: Iterable[tuple[SplitPlan, dict[int, DoneShard], dict[str, Any]]],
    outside: dict[str, list[dict[str, Any]]] | None = None,
) -> Path:
    """Add (or replace) the packed splits in ``out/recordkit.json``, written atomically last.

    ``outside`` holds, per split, the inputs packed from outside the image root.
    """
    existing = read_existing_manifest(out)
    if existing is not None:
        classes = check_classes(existing, classes, from_dirs, out)
        manifest = Manifest(
            classes=classes,
            splits=dict(existing.splits),
            pack=dict(existing.pack),
            skipped=list(existing.skipped),
            outside_root=list(existing.outside_root),
        )
    else:
        manifest = Manifest(classes=classes)
    by_split = dict(manifest.pack.get("splits") or {})
    for plan, done, extra in results:
        shards = tuple(done[k].entry for k in range(len(plan.shards)))
        manifest.splits[plan.name] = SplitEntry(shards)
        manifest.skipped = [s for s in manifest.skipped if s.get("split") != plan.name]
        manifest.outside_root = [
            s for s in manifest.outside_root if s.get("split") != plan.name
        ] + list((outside or {}).get(plan.name, []))
        manifest.skipped.extend(
            {"split": plan.name, "path": p, "reason": r}
            for k in range(len(plan.shards))
            for p, r in done[k].skipped
        )
        params = {**plan.params, **extra, "fingerprint": plan.fingerprint}
        by_split[plan.name] = params
        manifest.pack.update(
            {k: v for k, v in params.items() if k not in ("lists", "fingerprint", "num_shards")}
        )
    manifest.pack["splits"] = by_split
    return write_manifest(manifest, out)


def drop_split_from_manifest(out: Path, name: str) -> None:
    """Remove a split being overwritten from the manifest, so no finished dataset lists it."""
    existing = read_existing_manifest(out)
    if existing is None or name not in existing.splits:
        return
    del existing.splits[name]
    existing.skipped = [s for s in existing.skipped if s.get("split") != name]
    existing.outside_root = [s for s in existing.outside_root if s.get("split") != name]
    (existing.pack.get("splits") or {}).pop(name, None)
    if existing.splits:
        write_manifest(existing, out)
    else:
        (out / MANIFEST_NAME).unlink()


def packed_outside(
    outside: list[dict[str, Any]], done: Iterable[DoneShard]
) -> list[dict[str, Any]]:
    """The outside-ROOT entries that were packed (a skipped one is listed as skipped only)."""
    gone = {path for d in done for path, _ in d.skipped}
    return [o for o in outside if o["path"] not in gone]


def _missing_parts(missing: list[tuple[int, str]], counts: set[int]) -> str:
    """The merge error: which parts (when the state files tell ``N``) and shards are missing.

    Args:
        missing: ``(shard number, file name)`` of every unfinished shard, over all splits.
        counts: The ``N`` of the ``--part K/N`` state files found.
    """
    files = [name for _, name in missing]
    shown = ", ".join(files[:8]) + (f" and {len(files) - 8} more" if len(files) > 8 else "")
    shards = f"{len(files)} shard(s) not finished: {shown}"
    if len(counts) != 1:  # no part ran yet, or parts of different N: name the shards only
        return f"cannot merge: {shards}"
    (n,) = counts
    parts = sorted({number % n for number, _ in missing})
    named = ", ".join(f"{k}/{n}" for k in parts[:16])
    if len(parts) > 16:
        named += f" and {len(parts) - 16} more"
    return (
        f"cannot merge: part(s) {named} not finished ({shards}); run pack with --part K/N "
        "(and --resume if it was interrupted) for each, then --merge again"
    )


def merge_parts(
    out: Path,
    plans: list[SplitPlan],
    classes: list[str],
    from_dirs: bool,
    extras: dict[str, dict[str, Any]],
    outside: dict[str, list[dict[str, Any]]],
    t0: float,
) -> PackResult:
    """``--merge``: the manifest of all ``--part`` runs, once every shard is finished.

    Raises:
        PackError: A shard of some split is not finished.
    """
    finals = []
    missing: list[tuple[int, str]] = []
    counts: set[int] = set()
    results: dict[str, SplitResult] = {}
    skipped: list[dict[str, Any]] = []
    existing = read_existing_manifest(out)
    for plan in plans:
        if existing is not None and plan.name in existing.splits:
            old = (existing.pack.get("splits") or {}).get(plan.name) or {}
            if old.get("fingerprint") == plan.fingerprint:
                logger.info("split %s is already merged in %s", plan.name, out)
                continue
        done = finished_shards(out, plan)
        missing += [(s.number, s.file) for s in plan.shards if s.number not in done]
        counts |= part_counts(out, plan.name)
        finals.append((plan, done, extras[plan.name]))
    if missing:
        raise PackError(_missing_parts(missing, counts))
    for plan, done, _ in finals:
        results[plan.name] = SplitResult(
            records=sum(d.entry.records for d in done.values()),
            shards=len(plan.shards),
            skipped=sum(len(d.skipped) for d in done.values()),
            shards_written=0,
            shards_reused=len(plan.shards),
        )
        skipped.extend(
            {"split": plan.name, "path": p, "reason": r}
            for k in range(len(plan.shards))
            for p, r in done[k].skipped
        )
        outside[plan.name] = packed_outside(outside[plan.name], done.values())
    path = (
        write_final_manifest(out, classes, from_dirs, finals, outside)
        if finals
        else out / MANIFEST_NAME
    )
    for plan, _, _ in finals:
        for p in state_files(out, plan.name):
            p.unlink(missing_ok=True)
    return PackResult(
        out=out,
        manifest=path,
        classes=classes,
        splits=results,
        skipped=skipped,
        images=0,
        bytes_in=0,
        bytes_out=0,
        seconds=time.perf_counter() - t0,
        outside_root=[o for name in results for o in outside.get(name, [])],
    )
