"""Which dataset locations are URLs, and how file names join onto them (no fsspec import).

>>> is_url("s3://bucket/ds/"), is_url("shards/"), is_url("https://example.org/ds")
(True, False, True)
>>> join_url("s3://bucket/ds/", "recordkit.json")
's3://bucket/ds/recordkit.json'
"""

from __future__ import annotations

import os

__all__ = ["SCHEMES", "is_url", "join_url", "scheme_of"]

SCHEMES = ("s3", "gs", "gcs", "http", "https")
"""URL schemes recordkit reads through fsspec; anything else is a local path."""


def scheme_of(location: object) -> str | None:
    """The lower-cased scheme of a supported URL, else ``None`` (local paths, ``Path`` objects)."""
    if not isinstance(location, str):
        return None
    head, sep, _ = location.partition("://")
    if not sep:
        return None
    head = head.lower()
    return head if head in SCHEMES else None


def is_url(location: str | os.PathLike[str] | object) -> bool:
    """Whether ``location`` is an ``s3://``, ``gs://``, ``http://`` or ``https://`` URL."""
    return scheme_of(location) is not None


def join_url(base: str, name: str) -> str:
    """``name`` (a plain file name from the manifest) inside the "directory" URL ``base``."""
    return base.rstrip("/") + "/" + name
