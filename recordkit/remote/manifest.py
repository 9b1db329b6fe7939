"""The manifest of a remote dataset (``<url>/recordkit.json``)."""

from __future__ import annotations

from recordkit.errors import ManifestError
from recordkit.format.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    Manifest,
    manifest_from_bytes,
)
from recordkit.remote.fs import RemoteError, read_all
from recordkit.remote.urls import join_url

__all__ = ["read_remote_manifest"]


def read_remote_manifest(url: str) -> Manifest:
    """Fetch and parse ``recordkit.json`` under the dataset URL ``url``.

    Raises:
        ManifestError: No manifest there (404: not a dataset, or an unfinished pack or
            upload), or a malformed one.
        RemoteError: Access denied, or the server keeps failing.
        ImportError: The URL's fsspec backend is not installed.
    """
    target = url if url.endswith(".json") else join_url(url, MANIFEST_NAME)
    try:
        raw = read_all(target, limit=MAX_MANIFEST_BYTES)
    except RemoteError as exc:
        if exc.status == 404:
            raise ManifestError(
                f"{target}: not found (404): not a recordkit dataset, or an unfinished "
                "pack or upload"
            ) from None
        raise
    return manifest_from_bytes(raw, target)
