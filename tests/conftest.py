"""Shared fixtures: tiny generated records and shard directories whose bytes encode indices.

Every record made here carries its index in its image bytes (``b"img17" * k``), filename and
``index`` field, so tests compare exact values rather than "something came back".
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from recordkit import Manifest, Record, ShardEntry, ShardWriter, SplitEntry, write_manifest


def image_bytes(i: int, repeat: int | None = None) -> bytes:
    """Fake "encoded image" bytes that name record ``i``; the length varies with ``i``."""
    return f"img{i}".encode() * (repeat if repeat is not None else 1 + i % 7)


def make_record(i: int, num_classes: int = 3, **overrides: object) -> Record:
    """A record whose image bytes, label, filename and index all derive from ``i``."""
    fields: dict[str, object] = {
        "image": image_bytes(i),
        "labels": i % num_classes,
        "filename": f"class{i % num_classes}/{i:05d}.jpg",
        "index": i,
        "height": 10 + i % 5,
        "width": 20 + i % 3,
    }
    fields.update(overrides)
    return Record(**fields)  # type: ignore[arg-type]


def read_idx(path: Path) -> list[tuple[int, int]]:
    """Parse a ``.idx`` file independently of recordkit: ``[(offset, framed size), ...]``."""
    out = []
    for line in Path(path).read_text(encoding="ascii").splitlines():
        off, size = line.split(" ")
        out.append((int(off), int(size)))
    return out


def assert_one_line_error(result, *needles: str) -> None:
    """A CLI result that failed with exit code 1 and one ``Error: …`` line naming ``needles``."""
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for n in needles:
        assert n in lines[-1], lines[-1]


def cli_without(module: str, *args: object) -> subprocess.CompletedProcess:
    """``recordkit ARGS`` in a fresh interpreter where importing ``module`` fails, as when an
    optional package is not installed (``sys.modules[module] = None`` also stops
    ``importlib.import_module``, which fsspec uses to load a protocol's package)."""
    code = (
        f"import sys; sys.modules[{module!r}] = None; from recordkit.cli import main; "
        "main(sys.argv[1:])"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


def assert_one_line_stderr_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    """A subprocess result that failed with one ``Error: …`` line on stderr naming ``needles``."""
    assert res.returncode == 1, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def shard_name(split: str, i: int, n: int) -> str:
    return f"{split}-{i:05d}-of-{n:05d}.tfrecord"


def write_shards(
    root: Path,
    splits: Mapping[str, Sequence[Record]],
    records_per_shard: int = 4,
    classes: Sequence[str] | None = None,
    shard_sizes: Mapping[str, Sequence[int]] | None = None,
) -> Path:
    """Write ``splits`` as ``{split}-{i:05d}-of-{n:05d}.tfrecord`` + ``.idx`` and a manifest.

    Args:
        root: Directory to write into (created if missing).
        splits: Split name → its records, in order.
        records_per_shard: Records per shard (the last shard of a split may hold fewer).
        classes: Class names for the manifest (default ``class0..class2``).
        shard_sizes: Per split, explicit shard sizes (may include 0) overriding
            ``records_per_shard``; they must add up to the split's record count.

    Returns:
        ``root``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    entries: dict[str, SplitEntry] = {}
    for split, records in splits.items():
        if shard_sizes is not None and split in shard_sizes:
            sizes = list(shard_sizes[split])
            assert sum(sizes) == len(records), (split, sizes, len(records))
        else:
            sizes = [
                min(records_per_shard, len(records) - s)
                for s in range(0, len(records), records_per_shard)
            ] or [0]
        shards = []
        start = 0
        for i, size in enumerate(sizes):
            path = root / shard_name(split, i, len(sizes))
            with ShardWriter(path, fsync=False) as w:
                for rec in records[start : start + size]:
                    w.write(rec)
            info = w.info
            assert info is not None and info.records == size
            shards.append(
                ShardEntry(
                    file=path.name,
                    index=info.index_path.name,
                    records=info.records,
                    bytes=info.bytes,
                    sha256=info.sha256,
                )
            )
            start += size
        entries[split] = SplitEntry(tuple(shards))
    manifest = Manifest(
        classes=list(classes) if classes is not None else ["class0", "class1", "class2"],
        splits=entries,
    )
    write_manifest(manifest, root)
    return root


@pytest.fixture
def make_shards() -> Callable[..., Path]:
    """``make_shards(tmp_path, splits={"train": [...]}, records_per_shard=k, classes=[...])``."""
    return write_shards


@pytest.fixture
def make_records() -> Callable[..., list[Record]]:
    """``make_records(n, start=0)`` → ``[make_record(start), ..., make_record(start + n - 1)]``."""

    def _records(n: int, start: int = 0, num_classes: int = 3) -> list[Record]:
        return [make_record(i, num_classes) for i in range(start, start + n)]

    return _records


# --- real servers on 127.0.0.1 for the remote-dataset tests (tests/remote_servers.py) ---------
@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory):
    """nginx serving a fresh directory (``nginx.root``) at ``nginx.url``; skipped with the
    reason when nginx is not installed."""
    from remote_servers import NginxServer, nginx_skip_reason

    reason = nginx_skip_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("www")
    with NginxServer(root, tmp_path_factory.mktemp("nginx")) as server:
        yield server


@pytest.fixture
def fault_proxy(nginx):
    """A :class:`remote_servers.FaultProxy` in front of the ``nginx`` fixture's server."""
    from remote_servers import FaultProxy

    with FaultProxy(nginx.port) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def moto_server():
    """``moto`` in server mode (a subprocess) for the whole session."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    pytest.importorskip("s3fs", reason="s3fs is not installed")
    from remote_servers import MotoServer

    with MotoServer() as server:
        yield server


@pytest.fixture
def moto_s3(moto_server, monkeypatch):
    """The moto server with this process's environment pointing s3fs at it, and a fresh
    bucket ``s3://recordkit-test``; yields the server (``moto_s3.env()`` for subprocesses)."""
    for k, v in moto_server.env().items():
        monkeypatch.setenv(k, v)
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True, endpoint_url=moto_server.endpoint)
    moto_server.reset()
    fs.mkdir("recordkit-test")
    fsspec.filesystem("s3").invalidate_cache()
    yield moto_server
    # the cached instance holds this fixture's endpoint: a later test with its own server
    # (tests/test_pack_remote.py) would otherwise get it back from recordkit.open
    type(fs).clear_instance_cache()


@pytest.fixture(scope="session")
def gcs_server():
    """``gcp-storage-emulator`` (a subprocess) for the whole session; skipped with the reason
    when it or gcsfs is not installed."""
    import importlib.util

    for module, extra in (("gcp_storage_emulator", "gcp-storage-emulator"), ("gcsfs", "gcsfs")):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{extra} is not installed (pip install -e '.[test]')")
    from remote_servers import GcsServer

    with GcsServer() as server:
        # before gcsfs is first imported (see GcsServer.env): without it every call waits 60 s
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        yield server


@pytest.fixture
def gcs(gcs_server, monkeypatch):
    """The GCS emulator with this process's environment and fsspec's ``gs`` defaults pointing
    gcsfs at it (anonymous), and a fresh bucket ``gs://recordkit-test``; yields the server
    (``gcs.env()`` for subprocesses)."""
    for k, v in gcs_server.env().items():
        monkeypatch.setenv(k, v)
    import fsspec.config
    import gcsfs

    if gcsfs.GCSFileSystem is not gcsfs.core.GCSFileSystem:
        pytest.fail(
            "gcsfs was imported before GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false was set: its "
            "bucket-type probe (gRPC) cannot reach the emulator"
        )
    monkeypatch.setitem(fsspec.config.conf, "gs", {"token": "anon", "project": "recordkit-test"})
    gcs_server.reset()
    fs = fsspec.filesystem("gs", skip_instance_cache=True)
    fs.mkdir("recordkit-test")
    fsspec.filesystem("gs").invalidate_cache()
    yield gcs_server
    type(fs).clear_instance_cache()


@pytest.fixture(params=["s3", "gs"])
def bucket_url(request) -> str:
    """An empty bucket on a real server on 127.0.0.1 — moto (``s3://recordkit-test``) or the GCS
    emulator (``gs://recordkit-test``) — with this process pointed at it; its URL. Tests that
    take it run once per object store."""
    request.getfixturevalue("moto_s3" if request.param == "s3" else "gcs")
    return f"{request.param}://recordkit-test"


@pytest.fixture
def gcs_proxy(gcs, monkeypatch):
    """A :class:`upload_proxy.Proxy` in front of the GCS emulator, gcsfs pointed at it (it reads
    ``STORAGE_EMULATOR_HOST`` on every request): tests add faults (403, 503) to its requests."""
    from upload_proxy import Proxy

    proxy = Proxy(gcs.endpoint)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    yield proxy
    proxy.close()


# Files whose tests each launch several torch processes (torchrun ranks, launchers): under
# ``pytest -n N --dist loadgroup`` (``make test TEST_WORKERS=N``) they share one xdist worker,
# so two of them never compete for the cores while the single-process tests run on the others.
_MULTI_PROCESS_FILES = ("test_multinode.py", "test_train_preempt.py", "test_train_crash.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in _MULTI_PROCESS_FILES or "torchrun" in item.name:
            item.add_marker(pytest.mark.xdist_group("multi_process"))
