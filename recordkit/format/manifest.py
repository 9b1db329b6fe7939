"""``recordkit.json``: the manifest that makes a directory of shards a finished dataset.

Schema (format version 1)::

    {
      "format": "recordkit",
      "format_version": 1,
      "created_by": "recordkit 0.1.0",
      "created": "2026-11-21T22:40:00Z",
      "classes": ["cat", "dog"],                     # label k is classes[k]
      "splits": {
        "train": {
          "records": 1000, "bytes": 123456789,
          "shards": [
            {"file": "train-00000-of-00002.tfrecord", "index": "train-00000-of-00002.idx",
             "records": 500, "bytes": 61728394, "sha256": "…"},
            …
          ]
        },
        "val": {…}
      },
      "pack": {"resize": 480, "quality": 95, …},     # the parameters the shards were made with
      "skipped": [{"split": "train", "path": "cat/bad.jpg", "reason": "…"}]
    }

File names are relative to the manifest's directory. The manifest is written last and
atomically (temporary file + rename): a directory without it is not a finished dataset.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recordkit.errors import ManifestError
from recordkit.format.atomic import atomic_write_text

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "ShardEntry",
    "SplitEntry",
    "Manifest",
    "read_manifest",
    "write_manifest",
]

FORMAT_VERSION = 1
MANIFEST_NAME = "recordkit.json"


@dataclass(frozen=True)
class ShardEntry:
    """One shard of a split, as the manifest records it."""

    file: str
    index: str
    records: int
    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "index": self.index,
            "records": self.records,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class SplitEntry:
    """The shards of one split, in order."""

    shards: tuple[ShardEntry, ...]

    @property
    def records(self) -> int:
        return sum(s.records for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "bytes": self.bytes,
            "shards": [s.to_dict() for s in self.shards],
        }


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _version() -> str:
    from recordkit import __version__

    return f"recordkit {__version__}"


@dataclass
class Manifest:
    """In-memory form of ``recordkit.json``.

    Attributes:
        classes: Class names in label order.
        splits: Split name → its shards.
        pack: The parameters the shards were packed with (free-form, JSON-serializable).
        skipped: Inputs left out and why: dicts with ``split``, ``path`` and ``reason``.
        format_version: Version of the on-disk format.
        created: UTC time stamp (ISO 8601).
        created_by: Name and version of the writer.
    """

    classes: list[str]
    splits: dict[str, SplitEntry] = field(default_factory=dict)
    pack: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    created: str = field(default_factory=_now)
    created_by: str = field(default_factory=_version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "recordkit",
            "format_version": self.format_version,
            "created_by": self.created_by,
            "created": self.created,
            "classes": list(self.classes),
            "splits": {name: s.to_dict() for name, s in self.splits.items()},
            "pack": self.pack,
            "skipped": self.skipped,
        }

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "manifest") -> Manifest:
        """Build a manifest from parsed JSON, validating its shape.

        Raises:
            ManifestError: The content is not a recordkit manifest, is malformed, or was
                written by a newer format version.
        """
        if not isinstance(d, dict) or d.get("format") != "recordkit":
            raise ManifestError(f"{source}: not a recordkit manifest (no 'format': 'recordkit')")
        version = d.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise ManifestError(f"{source}: invalid format_version {version!r}")
        if version > FORMAT_VERSION:
            raise ManifestError(
                f"{source}: written with format version {version}, but this recordkit reads "
                f"up to version {FORMAT_VERSION}; upgrade recordkit (pip install -U recordkit)"
            )
        try:
            classes = [str(c) for c in d["classes"]]
            splits: dict[str, SplitEntry] = {}
            for name, s in d["splits"].items():
                shards = tuple(
                    ShardEntry(
                        file=str(e["file"]),
                        index=str(e["index"]),
                        records=int(e["records"]),
                        bytes=int(e["bytes"]),
                        sha256=str(e["sha256"]),
                    )
                    for e in s["shards"]
                )
                splits[str(name)] = SplitEntry(shards)
            for entry in (e for s in splits.values() for e in s.shards):
                for name in (entry.file, entry.index):
                    if Path(name).name != name or name in ("", ".", ".."):
                        raise ValueError(f"shard file name {name!r} is not a plain file name")
            return cls(
                classes=classes,
                splits=splits,
                pack=dict(d.get("pack") or {}),
                skipped=list(d.get("skipped") or []),
                format_version=version,
                created=str(d.get("created", "")),
                created_by=str(d.get("created_by", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ManifestError(f"{source}: malformed manifest ({detail})") from None


def read_manifest(directory: str | os.PathLike[str]) -> Manifest:
    """Read ``recordkit.json`` from a shard directory.

    Args:
        directory: The shard directory (or the manifest file itself).

    Returns:
        The parsed :class:`Manifest`.

    Raises:
        ManifestError: No manifest (an unfinished pack, or not a shard directory), unreadable
            JSON, or a newer format version.
    """
    path = Path(directory)
    if not path.exists():
        raise ManifestError(f"no such directory: {directory}")
    if path.is_dir():
        path = path / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(
                f"{directory}: no {MANIFEST_NAME} (not a recordkit dataset, or an unfinished pack)"
            )
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    return Manifest.from_dict(d, source=str(path))


def write_manifest(manifest: Manifest, directory: str | os.PathLike[str]) -> Path:
    """Write ``recordkit.json`` atomically into ``directory``.

    Returns:
        The path of the manifest.
    """
    text = json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n"
    return atomic_write_text(Path(directory) / MANIFEST_NAME, text)
