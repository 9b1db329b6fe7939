"""For the upload tests: a forwarding HTTP proxy in front of the moto server
(:class:`remote_servers.MotoServer`) that logs every request and fails or holds chosen ones —
uploads included (PUT bodies are forwarded) — plus s3fs helpers.

Clients talk over HTTP with s3fs (endpoint + fake credentials in the environment), never
through in-process patching.
"""

from __future__ import annotations

import http.client
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from remote_servers import QuietHTTPServer


def s3_env(endpoint: str) -> dict[str, str]:
    """Environment variables that point boto (s3fs) at ``endpoint`` with fake credentials, one
    attempt per request (so the retries counted are recordkit's own)."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "FSSPEC_S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_RETRY_MODE": "standard",
    }


@dataclass
class Fault:
    """Requests matching ``method`` and the ``path`` regex get ``status`` (``times`` of them;
    -1: all) — or, with ``hold``, are held until ``release`` is set (``held`` is set then)."""

    method: str
    path: str
    status: int = 503
    times: int = -1
    hold: bool = False
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and re.search(self.path, path) is not None


_CODES = {403: "AccessDenied", 404: "NoSuchBucket", 500: "InternalError", 503: "SlowDown"}


class Proxy:
    """A forwarding HTTP proxy to ``target`` that logs every request and applies faults."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.log: list[tuple[str, str, int]] = []
        self.faults: list[Fault] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                path = self.path.split("?")[0]
                fault = proxy._fault(self.command, path)
                if fault is not None and fault.hold:
                    fault.held.set()
                    fault.release.wait(60)
                    self.close_connection = True
                    return
                if fault is not None:
                    proxy._record(self.command, self.path, fault.status)
                    msg = (
                        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>"
                        f"{_CODES.get(fault.status, 'Error')}</Code><Message>injected</Message>"
                        f"</Error>"
                    ).encode()
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(b"" if self.command == "HEAD" else msg)
                    return
                conn = http.client.HTTPConnection(*proxy.target, timeout=60)
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"
                }
                headers["Content-Length"] = str(len(body))
                headers.pop("Expect", None)
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                proxy._record(self.command, self.path, resp.status)
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                if self.command == "HEAD":
                    self.send_header("Content-Length", resp.getheader("Content-Length") or "0")
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.matches(method, path) and f.times != 0:
                    f.times -= 1 if f.times > 0 else 0
                    f.hits += 1
                    return f
        return None

    def _record(self, method: str, path: str, status: int) -> None:
        with self.lock:
            self.log.append((method, path, status))

    def puts(self, pattern: str = "") -> list[str]:
        """Successful PUT paths (query stripped) matching ``pattern``."""
        with self.lock:
            return [
                p.split("?")[0]
                for m, p, s in self.log
                if m == "PUT" and s < 300 and re.search(pattern, p)
            ]

    def close(self) -> None:
        for f in self.faults:
            f.release.set()
        self.server.shutdown()
        self.server.server_close()


def make_bucket(endpoint: str, name: str) -> None:
    """Create a bucket over HTTP (s3fs, as the code under test talks)."""
    s3 = s3fs_for(endpoint)
    s3.call_s3("create_bucket", Bucket=name)


def s3fs_for(endpoint: str) -> Callable[..., object]:
    import s3fs

    return s3fs.S3FileSystem(
        key="testing",
        secret="testing",
        client_kwargs={"endpoint_url": endpoint, "region_name": "us-east-1"},
        skip_instance_cache=True,
    )


def env_with(endpoint: str) -> dict[str, str]:
    return {**os.environ, **s3_env(endpoint)}
