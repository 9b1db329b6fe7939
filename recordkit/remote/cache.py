"""A bounded local cache of whole remote shards, shared safely by the processes of one node.

Layout under the cache directory (``RECORDKIT_CACHE``, default ``~/.cache/recordkit``)::

    <dir>/<dataset key>/train-00003-of-00016.tfrecord   # complete, verified shards only
    <dir>/<dataset key>/train-00003-of-00016.idx        # its index (DALI reads it)
    <dir>/<dataset key>/.train-00003-of-00016.tfrecord.part-<pid>-<bytes>   # downloading
    <dir>/.locks/<dataset key>-<file>.get               # held while one process downloads it
    <dir>/.locks/<dataset key>-<file>.pin               # shared-locked while a process uses it
    <dir>/.locks/space                                  # held while space is counted / freed

- **Nothing half-downloaded is used**: a shard is written to a ``.part`` file, every record's
  CRCs, the index (offsets and sizes) and the manifest's SHA-256 and size are checked while it
  streams in, and only then is it renamed to its name (the index is written first, so a
  shard's presence implies its index's).
- **One download per node**: a process takes the shard's ``.get`` lock (``fcntl.flock``,
  exclusive) before downloading and checks again after getting it, so ranks and processes
  asking for the same shard at once wait for the first download instead of repeating it.
- **The size limit holds for the whole directory**: before a download the ``space`` lock is
  taken, finished shards and in-flight ``.part`` files (by their announced size) are counted,
  and unpinned shards are evicted, least recently used first, until the new one fits.
- **Shards in use are never evicted**: a user holds a shared lock on the shard's ``.pin``;
  eviction takes it exclusively without waiting, and skips the shard when it cannot.

fcntl's ``flock`` is in the standard library and gives shared and exclusive locks on Linux and
macOS (the ``filelock`` package has no shared locks); the locks vanish with their process, so a
killed process leaves no stale lock behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import logging
import os
import re
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from recordkit.errors import CorruptRecordError, DiskFullError, RecordkitError, is_disk_full
from recordkit.format import framing
from recordkit.format.index import format_index
from recordkit.format.record_index import RecordIndex
from recordkit.remote.fs import RangeStream

__all__ = ["CacheFullError", "Pin", "ShardCache", "default_cache_dir", "default_cache_limit"]

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 20 * 1000**3
"""The cache limit when neither ``--cache-limit`` nor ``RECORDKIT_CACHE_LIMIT`` says (20 GB)."""
_PART = re.compile(r"^\..+\.part-(\d+)-(\d+)$")


class CacheFullError(RecordkitError):
    """No room in the cache: every shard in it is in use and the limit is reached."""


def default_cache_dir() -> Path:
    """``RECORDKIT_CACHE``, else ``$XDG_CACHE_HOME/recordkit``, else ``~/.cache/recordkit``."""
    env = os.environ.get("RECORDKIT_CACHE", "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "recordkit"


def default_cache_limit() -> int:
    """``RECORDKIT_CACHE_LIMIT`` (``50GB``, ``500MiB``, …), else :data:`DEFAULT_LIMIT`."""
    from recordkit.sizes import parse_size

    env = os.environ.get("RECORDKIT_CACHE_LIMIT", "").strip()
    return parse_size(env) if env else DEFAULT_LIMIT


def dataset_key(url: str) -> str:
    """A directory name for the dataset at ``url``: readable tail + a hash of the whole URL."""
    base = url.rstrip("/")
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", base.rsplit("/", 1)[-1])[:40] or "dataset"
    return f"{tail}-{hashlib.sha256(base.encode()).hexdigest()[:16]}"


# Lock descriptors open in this process. A forked child (a DataLoader worker) inherits them,
# and with them the locks, which would then outlive the parent's release: the child closes
# its copies at once (the parent's locks stay held by the parent's descriptors).
_LOCK_FDS: set[int] = set()
_PINS: weakref.WeakSet[Pin] = weakref.WeakSet()


def _close_inherited_locks() -> None:
    for fd in list(_LOCK_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _LOCK_FDS.clear()
    for pin in list(_PINS):
        pin._fd = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


def _open_lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    _LOCK_FDS.add(fd)
    return fd


def _close_lock(fd: int) -> None:
    _LOCK_FDS.discard(fd)
    os.close(fd)  # releases the lock


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[int]:
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        _close_lock(fd)


class Pin:
    """A shared lock on one cached shard: it is not evicted while the pin is held.

    Attributes:
        path: The local shard file.
        size: Its size in bytes.
    """

    def __init__(self, path: Path, size: int, lock_path: Path) -> None:
        self.path = path
        self.size = size
        self._fd: int | None = _open_lock(lock_path)
        _PINS.add(self)
        fcntl.flock(self._fd, fcntl.LOCK_SH)

    def release(self) -> None:
        """Let the shard be evicted again (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            _close_lock(fd)

    def __enter__(self) -> Pin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()


@dataclass(frozen=True)
class ShardCache:
    """The shard cache at ``directory``, holding at most ``limit`` bytes of shards.

    Picklable (a directory and a number), so DataLoader workers use the same cache.

    Args:
        directory: Where (default :func:`default_cache_dir`).
        limit: Most bytes of shards (finished and downloading) kept; default
            :func:`default_cache_limit`.
        wait: Seconds a download waits for room while every cached shard is in use, before
            :class:`CacheFullError`.
    """

    directory: Path
    limit: int
    wait: float = 600.0

    @classmethod
    def create(
        cls, directory: str | os.PathLike[str] | None = None, limit: int | None = None
    ) -> ShardCache:
        """A cache with the defaults filled in and its directory made."""
        d = Path(directory).expanduser() if directory is not None else default_cache_dir()
        cache = cls(d, default_cache_limit() if limit is None else int(limit))
        if cache.limit < 1:
            raise RecordkitError(f"cache limit must be positive, got {cache.limit}")
        (d / ".locks").mkdir(parents=True, exist_ok=True)
        return cache

    # -- naming ------------------------------------------------------------------------------
    def path_for(self, dataset_url: str, name: str) -> Path:
        """Where shard ``name`` of the dataset at ``dataset_url`` is cached."""
        return self.directory / dataset_key(dataset_url) / name

    def _lock(self, path: Path, kind: str) -> Path:
        return self.directory / ".locks" / f"{path.parent.name}-{path.name}.{kind}"

    # -- use ---------------------------------------------------------------------------------
    def pin(self, path: Path) -> Pin | None:
        """Pin ``path`` if it is cached (complete), else None."""
        pin = Pin(path, 0, self._lock(path, "pin"))
        try:
            pin.size = path.stat().st_size
        except FileNotFoundError:
            pin.release()
            return None
        return pin

    def fetch(
        self,
        url: str,
        path: Path,
        *,
        size: int,
        index: RecordIndex,
        sha256: str | None = None,
        pin: bool = False,
    ) -> Pin | Path:
        """Make sure shard ``url`` is cached at ``path`` (complete and verified); download it
        unless it already is, or another process is downloading it (then wait for that).

        Args:
            url: The remote shard.
            path: Its place in the cache (:meth:`path_for`).
            size: Its size in bytes (the manifest's).
            index: Its index, checked against the records as they stream in (and written next
                to the shard as ``.idx``).
            sha256: The manifest's SHA-256, checked when given.
            pin: Return a :class:`Pin` held on the shard (else the path).

        Raises:
            CorruptRecordError: The download does not match: bad CRC, index disagreement,
                wrong size or SHA-256 (the partial file is removed; nothing is cached).
            RemoteError: The shard cannot be read (after retries).
            CacheFullError: No room within the limit for ``wait`` seconds.
        """
        if size > self.limit:
            raise CacheFullError(
                f"{url} is {size} bytes, more than the cache limit of {self.limit} bytes "
                f"({self.directory}); raise --cache-limit / RECORDKIT_CACHE_LIMIT"
            )
        held = self.pin(path) if pin else None
        if held is not None:
            os.utime(path)  # recently used: evicted last
            return held
        if not pin and path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        with _flock(self._lock(path, "get"), fcntl.LOCK_EX):
            held = Pin(path, size, self._lock(path, "pin")) if pin else None
            try:
                if not path.exists():
                    self._download(url, path, size=size, index=index, sha256=sha256)
            except BaseException:
                if held is not None:
                    held.release()
                raise
        return held if held is not None else path

    # -- space -------------------------------------------------------------------------------
    def usage(self) -> int:
        """Bytes the cache holds now: finished shards plus the announced size of downloads."""
        return sum(size for _, size, _ in self._entries())

    def _entries(self) -> list[tuple[Path, int, float]]:
        """``(path, bytes, mtime)`` of every finished shard and every in-flight ``.part``
        (its announced size; mtime 0 marks it not evictable)."""
        out = []
        for sub in self.directory.iterdir() if self.directory.exists() else ():
            if not sub.is_dir() or sub.name == ".locks":
                continue
            for p in sub.iterdir():
                m = _PART.match(p.name)
                if m:
                    if _alive(int(m.group(1))):
                        out.append((p, int(m.group(2)), 0.0))
                    else:  # left by a killed process
                        p.unlink(missing_ok=True)
                    continue
                if p.suffix == ".idx" or p.name.startswith("."):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = p.stat()
                    out.append((p, st.st_size, st.st_mtime))
        return out

    def _reserve(self, path: Path, size: int) -> Path:
        """Make room for ``size`` bytes and create the ``.part`` file that claims them."""
        deadline = time.monotonic() + self.wait
        part = path.with_name(f".{path.name}.part-{os.getpid()}-{size}")
        while True:
            with _flock(self.directory / ".locks" / "space", fcntl.LOCK_EX):
                entries = self._entries()
                used = sum(s for _, s, _ in entries)
                for p, s, _ in sorted((e for e in entries if e[2] > 0), key=lambda e: e[2]):
                    if used + size <= self.limit:
                        break
                    if self._evict(p):
                        used -= s
                if used + size <= self.limit:
                    part.touch()
                    return part
            if time.monotonic() > deadline:
                raise CacheFullError(
                    f"cache {self.directory} is full ({used} of {self.limit} bytes in use by "
                    f"this and other processes) and {path.name} needs {size}; raise "
                    "--cache-limit / RECORDKIT_CACHE_LIMIT"
                )
            time.sleep(0.05)

    def _evict(self, path: Path) -> bool:
        """Remove a finished shard unless some process pins it."""
        fd = _open_lock(self._lock(path, "pin"))
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            path.unlink(missing_ok=True)
            path.with_suffix(".idx").unlink(missing_ok=True)
            log.debug("cache: evicted %s", path)
            return True
        finally:
            _close_lock(fd)

    # -- download ----------------------------------------------------------------------------
    def _download(
        self, url: str, path: Path, *, size: int, index: RecordIndex, sha256: str | None
    ) -> None:
        part = self._reserve(path, size)
        try:
            with open(part, "wb") as out, RangeStream.open(url, size) as src:
                tee = _Tee(src, out)
                _check_stream(tee, url, size, index)
                if sha256 is not None and tee.sha.hexdigest() != sha256:
                    raise CorruptRecordError(
                        url, 0, f"SHA-256 {tee.sha.hexdigest()} differs from the manifest's"
                    )
                out.flush()
                os.fsync(out.fileno())
            idx = path.with_suffix(".idx")
            tmp_idx = idx.with_name(f".{idx.name}.tmp-{os.getpid()}")
            tmp_idx.write_text(format_index(index), encoding="ascii")
            os.replace(tmp_idx, idx)
            os.replace(part, path)
            log.debug("cache: downloaded %s -> %s", url, path)
        except BaseException as exc:
            part.unlink(missing_ok=True)
            if is_disk_full(exc):
                raise DiskFullError(path, getattr(exc, "strerror", None)) from exc
            raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


class _Tee(io.RawIOBase):
    """Reads from ``src``, writing every byte read to ``out`` and into a SHA-256."""

    def __init__(self, src: BinaryIO, out: BinaryIO) -> None:
        super().__init__()
        self.src, self.out = src, out
        self.sha = hashlib.sha256()
        self.pos = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n)
        self.out.write(data)
        self.sha.update(data)
        self.pos += len(data)
        return data


def _check_stream(f: _Tee, url: str, size: int, index: RecordIndex) -> None:
    """Scan every record of the download (CRCs) and compare it with the index."""
    want = index.offsets
    k = 0
    for offset, framed, _ in framing.scan(f, path=url, verify_crc=True, file_size=size):  # type: ignore[arg-type]
        if k >= len(index) or offset != want[k] or offset + framed != want[k + 1]:
            raise CorruptRecordError(url, offset, f"record {k} disagrees with the index")
        k += 1
    if k != len(index) or f.pos != size:
        raise CorruptRecordError(
            url, f.pos, f"{k} records in {f.pos} bytes; the index lists {len(index)} records"
        )
