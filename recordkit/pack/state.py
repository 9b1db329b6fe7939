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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recordkit.classmap import existing_manifest, merge_classes
from recordkit.errors import DiskFullError, is_disk_full
from recordkit.format.manifest import (
    Manifest,
    ShardEntry,
    SplitEntry,
    write_manifest,
)
from recordkit.pack.options import PackError
from recordkit.pack.plan import SplitPlan

__all__ = [
    "DoneShard",
    "StateFile",
    "finished_shards",
    "read_existing_manifest",
    "state_files",
    "split_files",
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
        data = {
            "version": STATE_VERSION,
            "split": self.plan.name,
            "fingerprint": self.plan.fingerprint,
            "num_shards": len(self.plan.shards),
            "part": list(self.part),
            "shards": {str(k): v.to_dict() for k, v in sorted(self.done.items())},
        }
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


def finished_shards(out: Path, plan: SplitPlan) -> dict[int, DoneShard]:
    """Finished shards of ``plan`` recorded by any state file in ``out``.

    Raises:
        PackError: A state file of this split was written for other lists or options.
    """
    done: dict[int, DoneShard] = {}
    for path in state_files(out, plan.name):
        data = _load_state(path)
        if data is None:
            continue
        if data.get("fingerprint") != plan.fingerprint:
            raise PackError(
                f"{path} was written by a pack of split {plan.name!r} with other lists or "
                "options; pack with the same ones, or use --overwrite to start over"
            )
        try:
            shards = {int(k): DoneShard.from_dict(v) for k, v in data["shards"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            logger.warning("ignoring malformed state file %s: %s", path, exc)
            continue
        for k, shard in shards.items():
            if k < len(plan.shards) and _consistent(out, shard.entry):
                done[k] = shard
            else:
                logger.warning(
                    "%s: recorded in %s but incomplete; redoing it", shard.entry.file, path
                )
    return done


def read_existing_manifest(out: Path) -> Manifest | None:
    """The manifest already in ``out``, or ``None``."""
    return existing_manifest(out, PackError)


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
