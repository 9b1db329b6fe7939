"""Which ``.lst`` files to pack, their splits, and the class map they imply."""

from __future__ import annotations

import logging
import math
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from recordkit.classmap import check_class_count, class_names_from_lists
from recordkit.listing import ListEntry, ListError, read_list, text_path
from recordkit.pack.options import PackError

__all__ = [
    "SplitList",
    "entry_labels",
    "find_lists",
    "load_splits",
    "outside_root",
    "resolve_classes",
    "split_labels",
]

logger = logging.getLogger(__name__)

_SPLIT_SUFFIX = re.compile(r"_(train|val|test)\.lst$")
_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class SplitList:
    """The entries of one split, concatenated from its list files in order."""

    name: str
    files: tuple[Path, ...]
    entries: tuple[ListEntry, ...]


def _discover(prefix: Path, default_split: str) -> list[tuple[str, int, Path]]:
    """``(split, chunk, path)`` for each ``PREFIX[_chunk][_split].lst`` next to ``prefix``."""
    directory = prefix.parent
    base = re.escape(prefix.name)
    pattern = re.compile(rf"^{base}(?:_(\d+))?(?:_(train|val|test))?\.lst$")
    found = []
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise PackError(f"cannot read directory {directory}: {exc.strerror or exc}") from None
    for name in names:
        m = pattern.match(name)
        if m is None:
            continue
        chunk = int(m.group(1)) if m.group(1) is not None else -1
        found.append((m.group(2) or default_split, chunk, directory / name))
    return found


def find_lists(
    prefix: str | os.PathLike[str] | None, lists: Sequence[Path], default_split: str
) -> dict[str, list[Path]]:
    """Map split name → its list files, in the order they are concatenated.

    With ``lists``: each file's split comes from its ``_train`` / ``_val`` / ``_test`` suffix,
    else ``default_split``; files of one split are taken in the order given. Otherwise every
    ``PREFIX.lst``, ``PREFIX_{train,val,test}.lst`` and chunk file ``PREFIX_{k}[_split].lst``
    is found; the chunks of one split are concatenated in chunk order.

    Raises:
        PackError: No list found, or one split is given both chunked and unchunked.
    """
    out: dict[str, list[Path]] = {}
    if lists:
        for p in lists:
            if not p.is_file():
                raise PackError(f"no such list file: {p}")
            m = _SPLIT_SUFFIX.search(p.name)
            out.setdefault(m.group(1) if m else default_split, []).append(p)
        return out
    if prefix is None:
        raise PackError("give PREFIX or --list")
    prefix = Path(prefix)
    if prefix.suffix == ".lst" and prefix.is_file():
        return find_lists(None, [prefix], default_split)
    found = _discover(prefix, default_split)
    if not found:
        raise PackError(
            f"no list files {prefix}.lst, {prefix}_train.lst, … found "
            f"(make them with `recordkit list {prefix} ROOT`)"
        )
    by_split: dict[str, list[tuple[int, Path]]] = {}
    for split, chunk, path in found:
        by_split.setdefault(split, []).append((chunk, path))
    for split, items in sorted(by_split.items(), key=lambda kv: _SPLIT_ORDER.get(kv[0], 9)):
        chunks = [c for c, _ in items]
        if len(items) > 1 and -1 in chunks:
            shown = ", ".join(str(p.name) for _, p in items)
            raise PackError(
                f"lists {shown} all give split {split!r}; name the ones to pack with --list"
            )
        out[split] = [p for _, p in sorted(items)]
    return out


def load_splits(files: dict[str, list[Path]]) -> list[SplitList]:
    """Read the list files; empty splits are left out with a warning.

    Raises:
        PackError: A list is unreadable or malformed, or all lists are empty.
    """
    result = []
    for name, paths in files.items():
        entries: list[ListEntry] = []
        for p in paths:
            try:
                entries.extend(read_list(p))
            except ListError as exc:
                raise PackError(str(exc)) from None
        if not entries:
            logger.warning("split %s: %s list no images; skipping it", name, _names(paths))
            continue
        result.append(SplitList(name, tuple(paths), tuple(entries)))
    if not result:
        raise PackError(f"no images in {_names([p for ps in files.values() for p in ps])}")
    return result


def _names(paths: Sequence[Path]) -> str:
    return ", ".join(str(p) for p in paths)


def entry_labels(entry: ListEntry, pack_label: bool, source: str) -> tuple[int, ...]:
    """The integer labels stored for ``entry``: all of them with ``pack_label``, else the first.

    Raises:
        PackError: A stored label is not a non-negative integer.
    """
    if not pack_label or len(entry.labels) == 1:  # the common case, quickly
        v = entry.labels[0]
        if isinstance(v, float) and v >= 0 and v.is_integer():
            return (int(v),)
    values = entry.labels if pack_label else entry.labels[:1]
    out = []
    for v in values:
        if not math.isfinite(v) or v != int(v) or v < 0:
            raise PackError(
                f"{source}: label {v:f} of {entry.path!r} is not a non-negative integer class label"
            )
        out.append(int(v))
    return tuple(out)


def split_labels(split: SplitList, pack_label: bool) -> list[tuple[int, ...]]:
    """:func:`entry_labels` of every entry of ``split``, in order.

    Raises:
        PackError: A stored label is not a non-negative integer.
    """
    out: list[tuple[int, ...]] = []
    append = out.append
    known: dict[float, tuple[int, ...]] = {}  # few distinct labels: one tuple each
    for e in split.entries:
        labels = e.labels
        if len(labels) == 1 and (lab := known.get(labels[0])) is not None:
            append(lab)
            continue
        lab = entry_labels(e, pack_label, _names(split.files))
        if len(labels) == 1:
            known[labels[0]] = lab
        append(lab)
    return out


def resolve_classes(
    splits: Sequence[SplitList],
    pack_label: bool,
    labels: Sequence[Sequence[tuple[int, ...]]] | None = None,
) -> tuple[list[str], bool]:
    """Class names in label order, and whether they came from directory names.

    Names come from :func:`~recordkit.listing.classes_from_lists` over all splits (label →
    its directory, ``/``-separated). When that is impossible (flat lists, several directories
    per label, missing labels) or the labels exceed it, numbered names ``"0"``, ``"1"``, … are
    used and a warning is logged.

    Args:
        splits: The splits.
        pack_label: Whether every label of an entry is stored (else the first).
        labels: :func:`split_labels` of each split, when already known.

    Raises:
        PackError: A label is not a non-negative integer, or is so large that it would make
            more classes than there are images (and 2**20): a damaged label.
    """
    if labels is None:
        labels = [split_labels(s, pack_label) for s in splits]
    all_entries = [e for s in splits for e in s.entries]
    max_label = -1
    where = ""
    for s, labs in zip(splits, labels, strict=True):
        top = max(map(max, labs), default=-1)
        if top > max_label:
            k = next(k for k, lab in enumerate(labs) if max(lab) == top)
            max_label, where = top, f"{_names(s.files)}: {text_path(s.entries[k].path)!r}"
    check_class_count(max_label, len(all_entries), where, PackError)
    try:
        return class_names_from_lists(all_entries, max_label), True
    except ListError as exc:
        logger.warning("class names from numbers 0..%d (%s)", max_label, exc)
        return [str(k) for k in range(max_label + 1)], False


def outside_root(root: str, entries: Sequence[ListEntry]) -> list[tuple[int, str]]:
    """The entries whose file lies outside ``root``, and how: ``[(position, reason), ...]``.

    im2rec packs a ``.lst`` path such as ``../x.jpg``, ``/etc/x.jpg`` or a symlink to a file
    elsewhere without a word; recordkit packs them too but names them. A path is outside when
    it is absolute, when ``..`` leads out of ``root``, or when its real location (symlinks
    resolved) is not under ``root``'s. Costs one ``realpath`` and one ``scandir`` per directory
    (which says which names are symlinks), and an ``lstat`` only for names it did not list.
    """
    real_root = os.path.realpath(root)
    inside = real_root.rstrip(os.sep) + os.sep
    real_dirs: dict[str, str] = {}
    links: dict[str, dict[str, bool]] = {}
    found: list[tuple[int, str]] = []
    for k, entry in enumerate(entries):
        path = entry.path
        if os.path.isabs(path):
            found.append((k, "an absolute path"))
            continue
        if os.pardir in path:
            norm = os.path.normpath(path)
            if norm == os.pardir or norm.startswith(os.pardir + os.sep):
                found.append((k, "'..' leads out of ROOT"))
                continue
        full = join_root(root, path)
        parent, name = os.path.split(full)
        real_parent = real_dirs.get(parent)
        if real_parent is None:
            real_parent = real_dirs[parent] = os.path.realpath(parent)
            links[parent] = _symlinks(parent)
        is_link = links[parent].get(name)
        if is_link is None:  # not listed: a name scandir spells differently, or unreadable
            try:
                is_link = stat.S_ISLNK(os.lstat(full).st_mode)
            except (OSError, ValueError):
                continue  # missing or unreadable: the packer skips it with its own reason
        real = (
            os.path.realpath(full) if is_link else os.path.join(real_parent, os.path.basename(full))
        )
        if not (real + os.sep).startswith(inside):
            how = "a symlink" if is_link else "a symlinked directory"
            found.append((k, f"{how} leads out of ROOT"))
    return found


def _symlinks(directory: str) -> dict[str, bool]:
    """``{name: is a symlink}`` for the entries of ``directory`` (from ``d_type``, no ``stat``
    per file where the file system fills it in); empty when it cannot be listed."""
    try:
        with os.scandir(directory) as it:
            return {e.name: e.is_symlink() for e in it}
    except (OSError, ValueError):
        return {}


def join_root(root: str, path: str) -> str:
    """``os.path.join(root, path)`` for a relative ``path``, without its per-call cost."""
    if os.altsep or os.path.isabs(path) or not root:
        return os.path.join(root, path)
    return root + path if root.endswith(os.sep) else f"{root}{os.sep}{path}"
