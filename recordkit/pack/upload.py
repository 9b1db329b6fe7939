"""Packing to object storage: stage shards locally, upload each as it finishes, manifest last.

``recordkit pack … --out s3://bucket/ds/`` (or ``gs://…``, or any other fsspec URL whose file
system can write) packs into a local *staging* directory exactly as a local pack does; each
finished shard (``.tfrecord`` + ``.idx``) is handed to a small pool of upload threads while
the next one is packed, and deleted locally once its upload is confirmed (the remote size
checked), so the staging directory holds at most ``pending + 1`` shards. After every upload
the remote state file ``.pack-state.{split}.json`` (the same format as a local pack's) is
rewritten; ``recordkit.json`` is uploaded only after every shard, so a reader never sees a
manifest that names a missing shard, and the state files are removed after it.

``--resume`` reads the remote state file: a shard recorded there whose remote ``.tfrecord``
and ``.idx`` have the recorded sizes is kept (never uploaded again); a shard finished in the
staging directory but not recorded remotely is uploaded without being packed again; every
other shard (including one whose upload was cut off) is packed and uploaded again.

Every request goes through :func:`recordkit.remote.fs.with_retries`, as the reading side's do:
transient errors (5xx, 429, connection resets, timeouts) are retried with exponential backoff
(``RECORDKIT_REMOTE_RETRIES``, ``RECORDKIT_REMOTE_BACKOFF``); access denied (403), not found
(404) and missing credentials fail at once with one line naming the URL
(:class:`~recordkit.remote.fs.RemoteError`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from recordkit.errors import RecordkitError
from recordkit.remote.fs import RemoteError, install_hint, with_retries
from recordkit.remote.urls import is_url

__all__ = [
    "RemoteDir",
    "RemoteError",
    "Uploader",
    "default_staging",
    "is_url",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def default_staging(url: str) -> Path:
    """The staging directory of a pack to ``url``: ``$RECORDKIT_STAGING/<hash of the URL>``,
    by default under the temporary directory (``$TMPDIR``, ``/tmp``).

    The same URL always gets the same directory, so ``--resume`` finds shards that were
    packed but not yet uploaded (lost ones, e.g. after a reboot, are packed again: the remote
    state is what counts). Not under ``RECORDKIT_CACHE``: the shard cache's eviction owns
    every file there. The staging directory holds a few shards at most (``upload_window``
    plus the one being written), so a temporary directory is big enough.
    """
    root = os.environ.get("RECORDKIT_STAGING", "").strip()
    base = (
        Path(root).expanduser()
        if root
        else Path(tempfile.gettempdir())
        / (f"recordkit-staging-{os.getuid()}" if hasattr(os, "getuid") else "recordkit-staging")
    )
    return base / hashlib.sha256(url.rstrip("/").encode("utf-8")).hexdigest()[:16]


def _describe(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _call(fn: Callable[[], T], url: str, what: str) -> T:
    """``fn()`` through :func:`recordkit.remote.fs.with_retries` (transient errors retried with
    backoff, 403/404 one line), with missing credentials and any other failure of the storage
    library also ending in one :class:`RemoteError` line naming ``url``."""
    try:
        return with_retries(url, fn, what=what)
    except RemoteError:
        raise
    except Exception as exc:
        name = type(exc).__name__
        if "Credentials" in name or "credentials" in str(exc).lower():
            raise RemoteError(
                url, f"no credentials ({_describe(exc)}); configure them for this storage"
            ) from None
        raise RemoteError(url, f"{what} failed: {name}: {_describe(exc)}") from None


def _filesystem(url: str) -> tuple[Any, str]:
    """The fsspec file system of ``url`` and the path inside it."""
    scheme = url.split("://", 1)[0].lower()
    try:
        import fsspec

        # A fresh instance: fsspec's cache keys on arguments, not on the environment
        # (AWS_ENDPOINT_URL, credentials) that the instance was built from.
        fs, path = fsspec.core.url_to_fs(url, skip_instance_cache=True)
    except ImportError as exc:
        raise RecordkitError(
            f"{url}: writing {scheme}:// URLs needs an extra package ({_describe(exc)}): "
            f"{install_hint(url)}"
        ) from None
    except ValueError as exc:
        raise RecordkitError(f"{url}: {_describe(exc)}") from None
    if scheme in ("http", "https"):
        fs = _HttpPut(fs)
    return fs, path.rstrip("/")


class _HttpPut:
    """fsspec's HTTP file system with PUT uploads (WebDAV-style servers, e.g. nginx's
    ``dav_methods PUT DELETE``). It cannot list, so leftovers of an earlier pack are not
    found; state files and sizes (HEAD) work as on object stores."""

    def __init__(self, fs: Any) -> None:
        self._fs = fs

    def put_file(self, lpath: str, rpath: str) -> None:
        self._fs.put_file(lpath, rpath, method="put")

    def pipe_file(self, rpath: str, data: bytes) -> None:
        self._fs.pipe_file(rpath, data)  # a PUT

    def info(self, rpath: str) -> dict[str, Any]:
        return self._fs.info(rpath)

    def cat_file(self, rpath: str) -> bytes:
        return self._fs.cat_file(rpath)

    def rm_file(self, rpath: str) -> None:
        import urllib.error
        import urllib.request

        try:  # fsspec's HTTP file system has no delete
            with urllib.request.urlopen(urllib.request.Request(rpath, method="DELETE"), timeout=60):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise

    def ls(self, rpath: str, detail: bool = False) -> list[Any]:
        return []

    def invalidate_cache(self, path: str | None = None) -> None:
        pass


class RemoteDir:
    """A directory of a remote file system (an S3/GCS prefix, a WebDAV folder) as the packer
    needs it: sizes, small text files, uploads and deletes, each retried when transient.

    Args:
        url: ``scheme://bucket/path`` (a trailing ``/`` is optional).

    Raises:
        RecordkitError: fsspec or the scheme's package (s3fs, gcsfs) is missing, or the URL
            is malformed.
    """

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = _filesystem(self.url)
        self.listable = not isinstance(self.fs, _HttpPut)

    def child(self, name: str) -> str:
        """The URL of ``name`` in this directory."""
        return f"{self.url}/{name}"

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}" if not isinstance(self.fs, _HttpPut) else self.child(name)

    def size(self, name: str) -> int | None:
        """The size of ``name``, or ``None`` when it does not exist."""

        def go() -> int | None:
            try:
                self.fs.invalidate_cache(self._path(name))
                return int(self.fs.info(self._path(name))["size"])
            except FileNotFoundError:
                return None

        return _call(go, self.child(name), "read the size")

    def read_text(self, name: str) -> str | None:
        """The text of ``name``, or ``None`` when it does not exist."""

        def go() -> str | None:
            try:
                return self.fs.cat_file(self._path(name)).decode("utf-8")
            except FileNotFoundError:
                return None

        return _call(go, self.child(name), "read")

    def write_text(self, name: str, text: str) -> None:
        """Upload ``text`` as ``name`` (one PUT: readers see the old object or the new)."""
        data = text.encode("utf-8")
        _call(lambda: self.fs.pipe_file(self._path(name), data), self.child(name), "upload")

    def upload(self, local: Path, name: str) -> None:
        """Upload ``local`` as ``name`` and check the remote size.

        Raises:
            RemoteError: The upload failed for good, or the object has another size after it.
        """
        want = local.stat().st_size

        def go() -> None:
            self.fs.put_file(os.fspath(local), self._path(name))
            self.fs.invalidate_cache(self._path(name))
            got = int(self.fs.info(self._path(name))["size"])
            if got != want:
                raise OSError(errno.EIO, f"uploaded {want} bytes but the object holds {got}")

        _call(go, self.child(name), "upload")

    def remove(self, names: list[str]) -> None:
        """Delete ``names`` (missing ones are fine)."""
        for name in names:

            def go(name: str = name) -> None:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(self._path(name))

            _call(go, self.child(name), "delete")

    def names(self) -> list[str]:
        """The file names directly in this directory (empty when it does not exist or the file
        system cannot list, as plain HTTP)."""

        def go() -> list[str]:
            try:
                self.fs.invalidate_cache(self.root)
                entries = self.fs.ls(self.root, detail=False)
            except FileNotFoundError:
                return []
            return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)

        return _call(go, self.url + "/", "list")

    def check_bucket(self) -> None:
        """Fail early, naming the URL, when the bucket is missing or not ours to read."""
        if not self.listable:
            return
        bucket = self.root.split("/", 1)[0]

        def go() -> None:
            try:
                self.fs.invalidate_cache(bucket)
                self.fs.ls(bucket, detail=False)
            except FileNotFoundError:
                raise FileNotFoundError(f"no bucket {bucket!r}") from None

        scheme = self.url.split("://", 1)[0]
        _call(go, f"{scheme}://{bucket}/", "list the bucket")


@dataclass
class _Upload:
    split: str
    number: int
    files: tuple[Path, ...]
    done: Any  # DoneShard, recorded once its files are up


class Uploader:
    """Uploads finished shards on background threads, at most ``pending`` waiting.

    :meth:`submit` blocks while ``pending`` uploads are unfinished (so the staging directory
    holds at most ``pending`` finished shards plus the one being written) and re-raises the
    first upload error in the caller's thread. After each shard's files are up, ``record``
    is called (under a lock) to update the remote state, then the local files are deleted.

    Args:
        remote: Where to upload.
        record: ``record(split, number, done)``: called once a shard is fully uploaded.
        pending: Most shards uploading or waiting at once (at least 1).
        threads: Upload threads.
    """

    def __init__(
        self,
        remote: RemoteDir,
        record: Callable[[str, int, Any], None],
        pending: int = 2,
        threads: int = 2,
    ) -> None:
        self.remote = remote
        self._record = record
        self._lock = threading.Lock()
        self._pending = max(1, pending)
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="recordkit-upload")
        self._futures: deque[Future[int]] = deque()
        self.uploaded = 0
        self.bytes = 0

    def _run(self, item: _Upload) -> int:
        total = 0
        for path in item.files:
            self.remote.upload(path, path.name)
            total += path.stat().st_size
        with self._lock:
            self._record(item.split, item.number, item.done)
        for path in item.files:
            path.unlink(missing_ok=True)
        logger.info("uploaded %s", self.remote.child(item.files[0].name))
        return total

    def submit(self, split: str, number: int, files: tuple[Path, ...], done: Any) -> None:
        """Queue the upload of one finished shard's ``files``; waits while the window is full."""
        while len(self._futures) >= self._pending:
            self._collect(self._futures.popleft())
        self._futures.append(self._pool.submit(self._run, _Upload(split, number, files, done)))

    def _collect(self, fut: Future[int]) -> None:
        self.bytes += fut.result()
        self.uploaded += 1

    def finish(self) -> None:
        """Wait for every queued upload; raise the first error."""
        while self._futures:
            self._collect(self._futures.popleft())

    def close(self) -> None:
        """Stop: cancel queued uploads and wait for running ones (after an error)."""
        for fut in self._futures:
            fut.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._futures.clear()
