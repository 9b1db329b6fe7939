"""Real servers on 127.0.0.1 for the remote-dataset tests, started and stopped by the tests.

- :class:`NginxServer`: Debian's nginx with a generated config serving a directory (byte
  ranges on, as nginx always serves static files), ``/forbidden/`` answering 403, and an
  access log of ``<status> <uri> <range>`` lines so tests count what was downloaded.
- :class:`MotoServer`: ``moto`` in server mode (``python -m moto.server``) as a subprocess, an
  S3 endpoint that s3fs talks to over HTTP (no in-process patching).
- :class:`GcsServer`: ``gcp-storage-emulator`` as a subprocess, a GCS JSON-API endpoint that
  gcsfs talks to over HTTP (``STORAGE_EMULATOR_HOST``).
- :class:`FaultProxy`: a small HTTP proxy in front of nginx that fails chosen requests on
  purpose (503, a reset connection, a body cut short) before passing the rest through, for the
  retry tests.

Pytest fixtures wrapping these live in ``tests/conftest.py`` (``nginx``, ``moto_s3``,
``gcs``, ``fault_proxy``); other test modules import this module for the classes and helpers.
"""

from __future__ import annotations

import http.client
import http.server
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "FaultProxy",
    "GcsServer",
    "MotoServer",
    "NginxServer",
    "QuietHTTPServer",
    "free_port",
    "nginx_binary",
    "nginx_skip_reason",
    "upload_dir",
]


class QuietHTTPServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server that does not print a traceback when a client hangs up.

    Tests that fail uploads or reads on purpose make clients abort mid-request; the default
    ``handle_error`` writes those resets to ``sys.stderr``, where an in-process ``CliRunner``
    would capture them as part of the command's output.
    """

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_file():
    """Where a server's output goes: a temporary file, never a pipe (nobody reads a pipe while
    the tests run, and moto logs a line per request: a full pipe stalls the server)."""
    return tempfile.TemporaryFile()


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = getattr(proc, "log_file", None)
            out = ""
            if log is not None:
                log.seek(0)
                out = log.read().decode(errors="replace")
            raise RuntimeError(f"{what} exited with {proc.returncode}: {out[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")


def nginx_binary() -> str | None:
    """The nginx executable (``PATH``, then Debian's ``/usr/sbin/nginx``), or None."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def nginx_skip_reason() -> str | None:
    """Why the nginx tests cannot run here, or None when they can."""
    if nginx_binary() is None:
        return (
            "nginx is not installed (Debian: apt-get install -y nginx-light; `make test` "
            "installs it when run as root)"
        )
    return None


class _ServerProcess:
    """A server run as a subprocess listening on ``self.port`` of 127.0.0.1: :meth:`start`
    spawns :meth:`command` with its output in a temporary file (shown if it dies before
    listening), :meth:`stop` terminates it (kills it after 10 s); a context manager."""

    name = "server"
    start_timeout = 60.0

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The command line to run (after any setup the server needs)."""
        raise NotImplementedError

    def start(self):
        self.proc = subprocess.Popen(
            self.command(), stdout=(log := _log_file()), stderr=subprocess.STDOUT
        )
        self.proc.log_file = log  # type: ignore[attr-defined]
        _wait_port(self.port, self.proc, self.name, timeout=self.start_timeout)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_NGINX_CONF = """\
worker_processes 1;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    log_format rk '$status $request_method $uri $http_range';
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        access_log {prefix}/access.log rk;
        root {root};
        location /forbidden/ {{ return 403; }}
    }}
}}
"""


class NginxServer(_ServerProcess):
    """nginx serving ``root`` on ``http://127.0.0.1:<port>/``.

    Args:
        root: The directory served.
        prefix: A directory for its config, pid file and logs.
    """

    name = "nginx"

    def __init__(self, root: Path, prefix: Path) -> None:
        super().__init__()
        self.root = Path(root)
        self.prefix = Path(prefix)

    @property
    def url(self) -> str:
        return self.endpoint

    @property
    def access_log(self) -> Path:
        return self.prefix / "access.log"

    def command(self) -> list[str]:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError(nginx_skip_reason())
        self.prefix.mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        # as root nginx would drop its workers to "nobody", who cannot read pytest's 0700 dirs
        user = "user root;" if os.geteuid() == 0 else ""
        conf.write_text(
            _NGINX_CONF.format(user=user, prefix=self.prefix, port=self.port, root=self.root)
        )
        log = str(self.prefix / "error.log")
        return [binary, "-p", str(self.prefix), "-c", str(conf), "-e", log, "-g", "daemon off;"]

    def log_lines(self) -> list[tuple[int, str, str, str]]:
        """The access log so far: ``(status, method, uri, range header or "-")`` per request.

        nginx writes each line when the response ends, so a test reads it after its requests.
        """
        if not self.access_log.exists():
            return []
        out = []
        for line in self.access_log.read_text().splitlines():
            status, method, uri, rng = (line.split(" ", 3) + ["-"])[:4]
            out.append((int(status), method, uri, rng))
        return out

    def clear_log(self) -> None:
        """Empty the access log (nginx keeps appending to the same file)."""
        if self.access_log.exists():
            with open(self.access_log, "r+") as f:
                f.truncate(0)

    def downloads(self, name: str) -> int:
        """Downloads of a file whose path ends with ``name``: GETs answered 200, or 206 for a
        range from byte 0 (how recordkit's cache streams a shard: 8 MiB range requests)."""
        return sum(
            1
            for st, m, uri, rng in self.log_lines()
            if m == "GET"
            and uri.endswith(name)
            and (st == 200 or (st == 206 and rng.startswith("bytes=0-")))
        )


class MotoServer(_ServerProcess):
    """``moto`` in server mode on ``http://127.0.0.1:<port>`` (a subprocess).

    :meth:`env` is what a process needs for s3fs to talk to it (fake credentials, the
    endpoint through botocore's ``AWS_ENDPOINT_URL_S3``).
    """

    name = "moto_server"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ENDPOINT_URL": self.endpoint,
            "FSSPEC_S3_ENDPOINT_URL": self.endpoint,
        }

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def reset(self) -> None:
        """Forget every bucket (moto's reset endpoint)."""
        _request(self.port, "POST", "/moto-api/reset")


class GcsServer(_ServerProcess):
    """``gcp-storage-emulator`` (a pure-Python GCS JSON API server, in memory) on
    ``http://127.0.0.1:<port>`` as a subprocess; gcsfs talks to it over HTTP.

    :meth:`env` is what a process needs for gcsfs to use it: ``STORAGE_EMULATOR_HOST`` (gcsfs's
    endpoint switch), anonymous credentials without probing for a GCE metadata server, and
    gcsfs's experimental zonal/HNS bucket probe off (on by default since gcsfs 2025.x, it asks a
    gRPC control-plane API that emulators do not serve, and waits 60 s for it on every call).
    The last one is read when gcsfs is imported, so it must be in the environment before that.
    """

    name = "gcp-storage-emulator"

    def env(self) -> dict[str, str]:
        return {
            "STORAGE_EMULATOR_HOST": self.endpoint,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "FSSPEC_GS_TOKEN": "anon",
            "FSSPEC_GS_PROJECT": "recordkit-test",
            "NO_GCE_CHECK": "true",
        }

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "gcp_storage_emulator",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--in-memory",
            "--quiet",
        ]

    def reset(self) -> None:
        """Forget every bucket and object (the emulator's wipe endpoint)."""
        _request(self.port, "GET", "/wipe")


def _request(port: int, method: str, path: str) -> None:
    """One request to a server on 127.0.0.1, its answer read and dropped."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path)
    conn.getresponse().read()
    conn.close()


def upload_dir(local: Path, url: str) -> None:
    """Copy every file of ``local`` to ``url`` (``s3://bucket/prefix``, ``gs://…``) with fsspec."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    for p in sorted(Path(local).iterdir()):
        if p.is_file():
            fs.put_file(str(p), f"{root.rstrip('/')}/{p.name}")


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream`` that fails chosen requests.

    ``faults`` maps a path suffix to a list of actions taken by the next requests for it, one
    each: ``"503"`` (answer 503), ``"500"``, ``"reset"`` (close the socket with an RST before
    answering), ``"short"`` (send the headers and half the body, then close). Requests with no
    action left are forwarded unchanged (``Range`` included). ``hits`` counts the requests
    seen per path.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.faults: dict[str, list[str]] = {}
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _action(self) -> str | None:
                with proxy.lock:
                    proxy.hits[self.path] = proxy.hits.get(self.path, 0) + 1
                    for suffix, actions in proxy.faults.items():
                        if self.path.endswith(suffix) and actions:
                            return actions.pop(0)
                return None

            def _handle(self, body: bool) -> None:
                action = self._action()
                if action in ("503", "500"):
                    self.send_response(int(action))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if action == "reset":
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.close_connection = True
                    self.connection.close()
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request(self.command, self.path, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "keep-alive", "transfer-encoding"):
                        self.send_header(k, v)
                self.end_headers()
                if not body:
                    return
                if action == "short":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._handle(body=True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._handle(body=False)

        self.server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, suffix: str, *actions: str) -> None:
        """Make the next requests for paths ending with ``suffix`` fail with ``actions``."""
        with self.lock:
            self.faults[suffix] = list(actions)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def iter_lines(path: Path) -> Iterator[str]:  # pragma: no cover - a debugging aid
    yield from Path(path).read_text().splitlines()
