"""Datasets on object stores and web servers: ``s3://``, ``gs://``, ``http(s)://`` (fsspec).

:mod:`recordkit.remote.urls` tells URLs from local paths without importing fsspec;
:mod:`~recordkit.remote.fs` reads (range requests, retries, one-line errors);
:mod:`~recordkit.remote.reader` is the remote shard reader behind ``recordkit.open(url)``;
:mod:`~recordkit.remote.cache` is the bounded local shard cache training streams through.
See ``docs/REMOTE.md``.
"""

from __future__ import annotations

from recordkit.remote.urls import is_url, join_url

__all__ = ["is_url", "join_url"]
