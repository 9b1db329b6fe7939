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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recordkit.errors import ManifestError
from recordkit.format.atomic import atomic_write_text
from recordkit.format.framing import OVERHEAD
from recordkit.safeio import InputFileError, read_regular

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "ShardEntry",
    "SplitEntry",
    "Manifest",
    "read_manifest",
    "manifest_from_bytes",
    "write_manifest",
]

FORMAT_VERSION = 1
MANIFEST_NAME = "recordkit.json"
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
"""The largest manifest read (a million skipped inputs take about 120 MB)."""


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
    """The shards of one split, in order.

    Attributes:
        shards: The shards.
        stated_records: The split's own ``records`` as read from a manifest (None when
            absent or built in memory); :func:`recordkit.verify` checks it against the files.
        stated_bytes: Likewise for ``bytes``.
    """

    shards: tuple[ShardEntry, ...]
    stated_records: int | None = field(default=None, compare=False)
    stated_bytes: int | None = field(default=None, compare=False)

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
        outside_root: Inputs packed although they resolve outside the image root (a ``..``
            component, an absolute path, or a symlink), as im2rec packs them: dicts with
            ``split``, ``path`` and ``reason``. Written only when not empty.
        format_version: Version of the on-disk format.
        created: UTC time stamp (ISO 8601).
        created_by: Name and version of the writer.
    """

    classes: list[str]
    splits: dict[str, SplitEntry] = field(default_factory=dict)
    pack: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    outside_root: list[dict[str, Any]] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    created: str = field(default_factory=_now)
    created_by: str = field(default_factory=_version)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "format": "recordkit",
            "format_version": self.format_version,
            "created_by": self.created_by,
            "created": self.created,
            "classes": list(self.classes),
            "splits": {name: s.to_dict() for name, s in self.splits.items()},
            "pack": self.pack,
            "skipped": self.skipped,
        }
        if self.outside_root:
            out["outside_root"] = self.outside_root
        return out

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "manifest") -> Manifest:
        """Build a manifest from parsed JSON, validating its shape and every value's type.

        Counts and sizes must be JSON integers (not ``true``, ``4.0`` or ``Infinity``) in
        ``[0, 2**63)``, each shard's ``records`` must fit its ``bytes`` (a record takes at least
        16 bytes), file names must be plain names (no directory part, no control character)
        and no file may be listed twice. A split's own ``records`` / ``bytes`` are kept as
        ``stated_records`` / ``stated_bytes`` for :func:`recordkit.verify` to check.

        Raises:
            ManifestError: The content is not a recordkit manifest, is malformed, or was
                written by a newer format version.
        """
        if not isinstance(d, dict) or d.get("format") != "recordkit":
            raise ManifestError(f"{source}: not a recordkit manifest (no 'format': 'recordkit')")
        version = d.get("format_version")
        if type(version) is not int or version < 1:
            raise ManifestError(f"{source}: invalid format_version {_show(version)}")
        if version > FORMAT_VERSION:
            raise ManifestError(
                f"{source}: written with format version {version}, but this recordkit reads "
                f"up to version {FORMAT_VERSION}; upgrade recordkit (pip install -U recordkit)"
            )
        try:
            if "classes" not in d:
                raise KeyError("classes")
            classes = _list(d["classes"], "classes")
            for k, c in enumerate(classes):
                _text(c, f"classes[{k}]")
            if "splits" not in d:
                raise KeyError("splits")
            splits_d = _dict(d["splits"], "splits")
            splits: dict[str, SplitEntry] = {}
            seen: dict[str, str] = {}
            for name, s in splits_d.items():
                where = f"split {_show(name)}"
                if not name or not _printable(name):
                    raise ValueError(f"{where}: a split name must be printable text")
                s = _dict(s, where)
                shards = tuple(
                    _shard(e, f"{where} shard {k}")
                    for k, e in enumerate(_list(_key(s, "shards", where), f"{where} shards"))
                )
                for k, entry in enumerate(shards):
                    for fname in (entry.file, entry.index):
                        if fname in seen:
                            raise ValueError(
                                f"{where} shard {k} names {fname!r}, "
                                f"already listed by {seen[fname]}"
                            )
                        seen[fname] = f"{where} shard {k}"
                stated = {
                    key: _count(s[key], f"{where} {key}") if key in s else None
                    for key in ("records", "bytes")
                }
                entry = SplitEntry(shards, stated["records"], stated["bytes"])
                for key, total in (("records", entry.records), ("bytes", entry.bytes)):
                    if total >= _LIMIT:
                        raise ValueError(f"{where}: shard {key} add up to {total}, over 2**63")
                splits[name] = entry
            pack = _dict(d.get("pack") if d.get("pack") is not None else {}, "pack")
            skipped = _list(d.get("skipped") if d.get("skipped") is not None else [], "skipped")
            outside = d.get("outside_root") if d.get("outside_root") is not None else []
            outside = _list(outside, "outside_root")
            for k, item in enumerate([*skipped, *outside]):
                _dict(item, f"skipped/outside_root entry {k}")
            created = d.get("created", "")
            created_by = d.get("created_by", "")
            _text(created, "created")
            _text(created_by, "created_by")
            return cls(
                classes=list(classes),
                splits=splits,
                pack=dict(pack),
                skipped=list(skipped),
                outside_root=list(outside),
                format_version=version,
                created=created,
                created_by=created_by,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ManifestError(f"{source}: malformed manifest ({detail})") from None


_LIMIT = 2**63
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _show(value: Any) -> str:
    """A short, one-line rendering of a JSON value for messages."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _key(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise ValueError(f"{where}: missing key {key!r}")
    return d[key]


def _dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a JSON object, got {_show(value)}")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"{what} must be a JSON array, got {_show(value)}")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {_show(value)}")
    return value


def _printable(text: str) -> bool:
    return text.isprintable()


def _count(value: Any, what: str) -> int:
    """A JSON integer in ``[0, 2**63)``; ``true``, ``4.0``, ``Infinity`` and ``"4"`` are not."""
    if type(value) is not int:
        raise TypeError(f"{what} must be an integer, got {_show(value)}")
    if not 0 <= value < _LIMIT:
        raise ValueError(f"{what} must be in [0, 2**63), got {_show(value)}")
    return value


def _file_name(value: Any, what: str) -> str:
    name = _text(value, what)
    if (
        name in ("", ".", "..")
        or Path(name).name != name
        or "\\" in name
        or not _printable(name)
        or len(name.encode("utf-8", "surrogateescape")) > 255  # NAME_MAX
    ):
        raise ValueError(f"shard file name {_show(name)} is not a plain file name")
    return name


def _shard(e: Any, where: str) -> ShardEntry:
    e = _dict(e, where)
    records = _count(_key(e, "records", where), f"{where} records")
    size = _count(_key(e, "bytes", where), f"{where} bytes")
    if records * OVERHEAD > size:
        raise ValueError(
            f"{where}: {records} records cannot fit in {size} bytes "
            f"({OVERHEAD} bytes per record at least)"
        )
    sha = _text(_key(e, "sha256", where), f"{where} sha256")
    if not _SHA256.fullmatch(sha):
        raise ValueError(f"{where}: sha256 {_show(sha)} is not 64 lower-case hex digits")
    return ShardEntry(
        file=_file_name(_key(e, "file", where), f"{where} file"),
        index=_file_name(_key(e, "index", where), f"{where} index"),
        records=records,
        bytes=size,
        sha256=sha,
    )


def read_manifest(directory: str | os.PathLike[str]) -> Manifest:
    """Read ``recordkit.json`` from a shard directory.

    The file must be a regular file of at most :data:`MAX_MANIFEST_BYTES`; ``NaN`` and
    ``Infinity`` are not numbers here, and nesting too deep for the JSON parser is refused.

    Args:
        directory: The shard directory (or the manifest file itself).

    Returns:
        The parsed :class:`Manifest`.

    Raises:
        ManifestError: No manifest (an unfinished pack, or not a shard directory), not a
            regular file, unreadable JSON, a malformed manifest, or a newer format version.
    """
    path = Path(directory)
    if not path.exists():
        raise ManifestError(f"no such directory: {directory}")
    if path.is_dir():
        path = path / MANIFEST_NAME
        if not path.exists():
            raise ManifestError(
                f"{directory}: no {MANIFEST_NAME} (not a recordkit dataset, or an unfinished pack)"
            )
    try:
        raw = read_regular(path, limit=MAX_MANIFEST_BYTES, what="manifest")
    except InputFileError as exc:
        raise ManifestError(str(exc)) from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return manifest_from_bytes(raw, str(path))


def manifest_from_bytes(raw: bytes, source: str) -> Manifest:
    """Parse a manifest's bytes (read from a file or a URL ``source``, named in errors).

    Raises:
        ManifestError: See :func:`read_manifest`.
    """
    path = source
    try:
        d = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, int digit limit, NaN
        raise ManifestError(f"{path}: not valid JSON ({_one_line(exc)})") from None
    except RecursionError:
        raise ManifestError(f"{path}: not a recordkit manifest (JSON nested too deeply)") from None
    return Manifest.from_dict(d, source=str(path))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def write_manifest(manifest: Manifest, directory: str | os.PathLike[str]) -> Path:
    """Write ``recordkit.json`` atomically into ``directory``.

    Returns:
        The path of the manifest.
    """
    text = json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n"
    return atomic_write_text(Path(directory) / MANIFEST_NAME, text)
