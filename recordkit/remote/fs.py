"""Reads from object stores and web servers through fsspec: retries, errors, range streams.

Everything here goes through one function, :func:`with_retries`: transient failures (HTTP 5xx
and 429, connection resets, timeouts, truncated bodies) are retried with exponential backoff;
403 and 404 end in one :class:`RemoteError` line naming the URL. fsspec and the protocol's
package (``aiohttp`` for http(s), ``s3fs``, ``gcsfs``) are imported on first use, and their
absence is an ImportError saying which ``pip install`` fixes it.
"""

from __future__ import annotations

import io
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

from recordkit.errors import RecordkitError
from recordkit.remote.urls import scheme_of

__all__ = [
    "RemoteError",
    "RangeStream",
    "filesystem",
    "read_all",
    "read_range",
    "remote_size",
    "with_retries",
    "RETRIES",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRIES = int(os.environ.get("RECORDKIT_REMOTE_RETRIES", "5"))
"""Retries after the first attempt of a transient failure (``RECORDKIT_REMOTE_RETRIES``)."""
BACKOFF = float(os.environ.get("RECORDKIT_REMOTE_BACKOFF", "0.2"))
"""The first retry's delay in seconds; each further retry doubles it (plus up to 25 % jitter)."""

_EXTRA = {"s3": "s3", "gs": "gcs", "gcs": "gcs", "http": "remote", "https": "remote"}
_PACKAGE = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp"}


class RemoteError(RecordkitError):
    """A remote read failed for good: access denied, not found, or still failing after retries.

    Attributes:
        url: The URL.
        status: The HTTP status when known (403, 404, 503, …), else None.
    """

    def __init__(self, url: str, message: str, status: int | None = None) -> None:
        self.url = url
        self.status = status
        super().__init__(f"{url}: {message}")


def install_hint(url: str) -> str:
    """The ``pip install`` line that brings the packages reading ``url``."""
    scheme = scheme_of(url) or "https"
    return f"pip install 'recordkit[{_EXTRA[scheme]}]'"


def filesystem(url: str) -> Any:
    """The fsspec filesystem for ``url`` (cached by fsspec per protocol and options).

    Options come from fsspec's usual places: ``FSSPEC_S3_ENDPOINT_URL`` style variables, the
    cloud SDKs' own environment (``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, …) and config files.

    Raises:
        ImportError: fsspec or the protocol's package is missing; the message names the fix.
    """
    scheme = scheme_of(url) or "https"
    try:
        import fsspec

        fs, _ = fsspec.core.url_to_fs(url)
    except ImportError as exc:
        raise ImportError(
            f"reading {scheme}:// URLs needs fsspec and {_PACKAGE[scheme]}: "
            f"{install_hint(url)} ({exc})"
        ) from None
    return fs


def _status(exc: BaseException) -> int | None:
    """The HTTP status an fsspec / aiohttp / botocore exception carries, if any."""
    for attr in ("status", "status_code", "code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        value = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(value, int):
            return value
    if type(exc) is OSError and str(exc).startswith("Forbidden: "):
        return 403  # gcsfs raises a bare OSError("Forbidden: <request URL>\n<body>") for 403
    return None


def _unresolvable(exc: BaseException) -> bool:
    """Whether ``exc`` is (or wraps) a failed host-name lookup: not worth retrying for minutes.

    aiohttp raises ``ClientConnectorDNSError`` around the resolver's ``socket.gaierror``; other
    stacks raise the ``gaierror`` itself or chain it.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, socket.gaierror) or type(exc).__name__ == "ClientConnectorDNSError":
            return True
        exc = getattr(exc, "os_error", None) or exc.__cause__ or exc.__context__
    return False


def classify(exc: BaseException) -> tuple[str, int | None]:
    """``("missing" | "denied" | "unresolvable" | "transient" | "fatal", status)`` for a failed
    remote call."""
    status = _status(exc)
    if status is None and _unresolvable(exc):
        return "unresolvable", None
    if isinstance(exc, FileNotFoundError) or status == 404:
        return "missing", 404
    if isinstance(exc, PermissionError) or status in (401, 403):
        return "denied", status or 403
    if status is not None:
        return ("transient" if status >= 500 or status in (408, 429) else "fatal"), status
    if isinstance(exc, (ConnectionError, TimeoutError, EOFError, _Truncated)):
        return "transient", None
    name = type(exc).__name__
    mod = type(exc).__module__ or ""
    if mod.startswith(("aiohttp", "botocore", "aiobotocore", "urllib3")) and (
        "Connection" in name
        or "Payload" in name
        or "Timeout" in name
        or "Disconnect" in name
        or "Endpoint" in name
        or "ReadTimeout" in name
        or "ResponseStreaming" in name
    ):
        return "transient", None
    if isinstance(exc, OSError) and not isinstance(exc, (IsADirectoryError, NotADirectoryError)):
        return "transient", None  # reset sockets surface as plain OSError in some stacks
    return "fatal", None


class _Truncated(Exception):
    """A response shorter than the range asked for (the connection closed early)."""


def with_retries(
    url: str, call: Callable[[], T], *, retries: int | None = None, what: str = "read"
) -> T:
    """Run ``call`` (one remote request for ``url``), retrying transient failures.

    Args:
        url: The URL, for messages.
        call: The request.
        retries: Retries after the first attempt (default :data:`RETRIES`).
        what: What the request does, for messages ("read", "list").

    Raises:
        RemoteError: 403/401 (access denied) or 404 (not found) at once; a transient failure
            still there after the last retry; any other HTTP error.
    """
    retries = RETRIES if retries is None else retries
    attempt = 0
    while True:
        try:
            return call()
        except RemoteError:
            raise
        except ImportError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified below; unknown kinds re-raise
            kind, status = classify(exc)
            if kind == "missing":
                raise RemoteError(url, "not found (404)", 404) from None
            if kind == "denied":
                raise RemoteError(
                    url, f"access denied ({status}); check the credentials and permissions", status
                ) from None
            if kind == "unresolvable":
                raise RemoteError(
                    url, "cannot resolve the host name; check the URL and the network"
                ) from None
            detail = " ".join(str(exc).split())[:160] or type(exc).__name__
            if kind == "fatal":
                if "Credentials" in type(exc).__name__:  # botocore's NoCredentialsError & co.
                    raise RemoteError(
                        url, f"no credentials ({detail}); configure them for this storage"
                    ) from None
                if status is None and not isinstance(exc, OSError):
                    raise
                raise RemoteError(url, f"{what} failed: {detail}", status) from None
            if attempt >= retries:
                raise RemoteError(
                    url, f"{what} failed after {attempt + 1} attempts: {detail}", status
                ) from None
            delay = BACKOFF * (2**attempt) * (1 + 0.25 * random.random())
            log.warning("%s: %s (%s); retrying in %.2f s", url, what, detail, delay)
            time.sleep(delay)
            attempt += 1


def read_range(url: str, start: int, end: int, *, fs: Any = None) -> bytes:
    """Bytes ``[start, end)`` of ``url`` with one range request (retried when transient).

    Raises:
        RemoteError: See :func:`with_retries`; also a server that ignores ``Range``.
    """
    if end <= start:
        return b""
    fs = fs or filesystem(url)

    def call() -> bytes:
        data = fs.cat_file(url, start=start, end=end)
        if len(data) < end - start:
            raise _Truncated(f"got {len(data)} of {end - start} bytes at offset {start}")
        return data

    data = with_retries(url, call)
    if len(data) != end - start:
        raise RemoteError(
            url,
            f"asked for bytes {start}-{end - 1}, got {len(data)} bytes: the server does not "
            "honour HTTP range requests",
        )
    return data


def read_all(url: str, *, limit: int, fs: Any = None) -> bytes:
    """The whole of a small remote file (a manifest, an index), at most ``limit`` bytes.

    Raises:
        RemoteError: See :func:`with_retries`; also a file larger than ``limit``.
    """
    fs = fs or filesystem(url)
    data = with_retries(url, lambda: fs.cat_file(url))
    if len(data) > limit:
        raise RemoteError(url, f"{len(data)} bytes, more than the {limit} expected")
    return data


def remote_size(url: str, *, fs: Any = None) -> int:
    """Size of a remote file in bytes (a HEAD / stat request)."""
    fs = fs or filesystem(url)
    info = with_retries(url, lambda: fs.info(url), what="stat")
    size = info.get("size")
    if not isinstance(size, int):
        raise RemoteError(url, "the server does not say how large the file is")
    return size


class RangeStream(io.RawIOBase):
    """A read-only, sequential file over ``url``: each ``read`` is a retried range request of at
    most ``block`` bytes, so a reset connection costs one block, not the whole file.

    Wrap it in :class:`io.BufferedReader` (as :meth:`open`) for small reads.

    Args:
        url: The file.
        size: Its size in bytes (from the manifest: no extra request).
        start: Where to begin.
        block: Largest single request.
    """

    def __init__(self, url: str, size: int, *, start: int = 0, block: int = 8 << 20) -> None:
        super().__init__()
        self.url = url
        self.size = size
        self.pos = start
        self.block = block
        self._fs = filesystem(url)

    @classmethod
    def open(
        cls, url: str, size: int, *, start: int = 0, block: int = 8 << 20
    ) -> io.BufferedReader:
        """A buffered stream over ``url`` from ``start`` (``tell()`` counts from the file's
        start)."""
        return io.BufferedReader(cls(url, size, start=start, block=block), buffer_size=block)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self.block, self.size - self.pos)
        if n <= 0:
            return 0
        data = read_range(self.url, self.pos, self.pos + n, fs=self._fs)
        buf[: len(data)] = data
        self.pos += len(data)
        return len(data)
