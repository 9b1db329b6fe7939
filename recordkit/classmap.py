"""Class maps shared by ``pack`` and ``convert-rec``: names from list folders, adding a split to
a directory that already holds others. Light: no OpenCV, torch or DALI.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from recordkit.errors import ManifestError, RecordkitError
from recordkit.format.manifest import MANIFEST_NAME, Manifest, read_manifest
from recordkit.listing import ListEntry, ListError, classes_from_lists, text_path

__all__ = [
    "MIN_CLASS_BOUND",
    "check_class_count",
    "class_names_from_lists",
    "existing_manifest",
    "merge_classes",
]

logger = logging.getLogger(__name__)

MIN_CLASS_BOUND = 1 << 20
"""Labels may reach ``max(images, MIN_CLASS_BOUND) - 1``; beyond that a label is damaged."""


def check_class_count(max_label: int, images: int, where: str, error: type[RecordkitError]) -> None:
    """Refuse a label that would make more classes than there are images (and 2**20).

    Class names ``0..max_label`` are built for numbered classes; one flipped bit in a float
    label (``2**25``) or a typo (``1e9``) must not build a billion of them.

    Raises:
        RecordkitError: (``error``) ``max_label`` is out of bounds; the message names ``where``.
    """
    bound = max(images, MIN_CLASS_BOUND)
    if max_label >= bound:
        raise error(
            f"{where}: label {max_label} would make {max_label + 1} classes for {images} "
            f"images; class labels run 0..K-1 with K at most max(images, {MIN_CLASS_BOUND}) "
            "(a damaged label?)"
        )


def class_names_from_lists(entries: Sequence[ListEntry], max_label: int) -> list[str]:
    """Class names for labels ``0..max_label`` from the entries' class folders (im2rec's rule).

    Raises:
        ListError: Images directly in the root, or a label without a folder.
    """
    names = [text_path(c.replace(os.sep, "/")) for c in classes_from_lists(entries)]
    if "." in names:
        raise ListError("images directly in the list's root have no class directory")
    if max_label >= len(names):
        raise ListError(f"label {max_label} has no class directory")
    return names


def existing_manifest(out: Path, error: type[RecordkitError]) -> Manifest | None:
    """The manifest already in ``out``, or None; an unreadable one raises ``error``."""
    if not (out / MANIFEST_NAME).exists():
        return None
    try:
        return read_manifest(out)
    except ManifestError as exc:
        raise error(f"cannot add to {out}: {exc}") from None


def merge_classes(
    old: Sequence[str],
    new: Sequence[str],
    *,
    named: bool,
    out: Path,
    error: type[RecordkitError],
    source: str,
    hint: str,
) -> list[str]:
    """The class map to use when adding a split whose classes are ``new`` to ``out``.

    Names from folders must match the existing ones label by label (a split may lack the last
    classes). Numbered fallback names (``named`` False) defer to the existing names when there
    are enough of them.

    Args:
        old: The classes of the splits already in ``out``.
        new: The classes of the split being added.
        named: Whether ``new`` are real names (else numbers).
        out: The output directory (for messages).
        error: The exception class to raise.
        source: Where ``new`` come from, for messages (e.g. "in the lists").
        hint: What to do instead, for messages (e.g. "pack into another --out").

    Raises:
        RecordkitError: (``error``) The class maps conflict.
    """
    old, new = list(old), list(new)
    where = out / MANIFEST_NAME
    if new == old:
        return old
    if len(new) <= len(old) and (not named or old[: len(new)] == new):
        if not named:
            logger.warning("using the class names of %s", where)
        return old
    for k, (a, b) in enumerate(zip(new, old, strict=False)):
        if a != b:
            raise error(
                f"class map conflicts with {where}: label {k} is {a!r} {source} but {b!r} in "
                f"the splits already there; {hint}"
            )
    raise error(
        f"class map conflicts with {where}: {len(new)} classes {source}, {len(old)} in the "
        f"splits already there; {hint}"
    )
