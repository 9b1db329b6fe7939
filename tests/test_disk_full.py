"""A disk that fills up during ``pack`` (shards, manifest) and ``list``.

The low-level file writes raise a real ``OSError(ENOSPC)`` once a byte budget is spent, as a
full file system does; ``test_real_full_tmpfs`` does the same on a real, tiny tmpfs where the
machine allows mounting one in a user namespace.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import imagegen
import pytest
from test_pack import manifest_without_time, run_cli, shard_bytes

from recordkit.format import atomic as atomic_mod
from recordkit.format import writer as writer_mod
from recordkit.format.manifest import MANIFEST_NAME
from recordkit.listing import make_lists
from recordkit.verify import verify_shard

ARGS = ["--shard-size", "3", "--threads", "2", "-q"]


class Disk:
    """Free space shared by every file opened through :meth:`open` / :meth:`fdopen`."""

    def __init__(self, free: int) -> None:
        self.free = free

    def _raw(self, file: object, closefd: bool = True) -> io.FileIO:
        disk = self

        class FullFileIO(io.FileIO):
            def write(self, b) -> int:  # type: ignore[override]
                n = memoryview(b).nbytes
                if n > disk.free:  # a partial write first, as write(2) does near the end
                    if disk.free > 0:
                        done = super().write(memoryview(b).cast("B")[: disk.free])
                        disk.free -= done
                        return done
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                disk.free -= n
                return super().write(b)

        return FullFileIO(file, "w", closefd=closefd)

    def open(self, file, mode="r", buffering=-1, encoding=None, errors=None, newline=None):
        assert "w" in mode, mode
        buf = io.BufferedWriter(self._raw(file), buffer_size=512)  # small: fail mid-shard
        if "b" in mode:
            return buf
        return io.TextIOWrapper(buf, encoding=encoding, errors=errors, newline=newline)

    def fdopen(self, fd, mode="r", encoding=None, errors=None, newline=None, **_):
        buf = io.BufferedWriter(self._raw(fd), buffer_size=512)
        return io.TextIOWrapper(buf, encoding=encoding, errors=errors, newline=newline)


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "img"
    imagegen.make_tree(root, classes=3, per_class=8, size=(48, 64), fmt="JPEG")
    prefix = tmp_path / "data"
    make_lists(prefix, root, recursive=True)
    reference = tmp_path / "reference"
    assert run_cli("pack", prefix, root, "--out", reference, *ARGS).exit_code == 0
    return prefix, root, reference


def error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("Error: "), output
    return lines[0]


def assert_consistent(out: Path) -> None:
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
    for f in out.glob("*.tfrecord"):
        rep, _ = verify_shard(f, require_index=True)
        assert rep.ok, rep.problems


def test_disk_full_while_writing_a_shard(tmp_path, dataset, monkeypatch):
    prefix, root, reference = dataset
    out = tmp_path / "shards"
    first = sorted(p for p in reference.glob("train-*") if p.suffix in (".tfrecord", ".idx"))
    budget = sum(p.stat().st_size for p in first[:4]) + 100  # shards 0 and 1, then 100 bytes
    monkeypatch.setattr(writer_mod, "open", Disk(budget).open, raising=False)
    res = run_cli("pack", prefix, root, "--out", out, *ARGS)
    assert res.exit_code == 1
    line = error_line(res.output)
    shard = out / "train-00002-of-00008.tfrecord"
    assert f"No space left on device while writing {shard}" in line
    assert f"output directory {out}" in line and "--resume" in line
    assert_consistent(out)
    assert sorted(p.name for p in out.glob("*.tfrecord")) == [p.name for p in first[1:4:2]]
    assert not (out / MANIFEST_NAME).exists()

    monkeypatch.undo()  # space freed
    res = run_cli("pack", prefix, root, "--out", out, "--resume", *ARGS)
    assert res.exit_code == 0, res.output
    assert shard_bytes(out) == shard_bytes(reference)
    assert manifest_without_time(out) == manifest_without_time(reference)


def test_disk_full_while_writing_the_manifest(tmp_path, dataset, monkeypatch):
    prefix, root, reference = dataset
    out = tmp_path / "shards"
    monkeypatch.setattr(atomic_mod, "open", Disk(100).open, raising=False)
    res = run_cli("pack", prefix, root, "--out", out, *ARGS)
    assert res.exit_code == 1
    line = error_line(res.output)
    assert f"No space left on device while writing {out / MANIFEST_NAME}" in line
    assert "--resume" in line
    assert_consistent(out)
    assert not (out / MANIFEST_NAME).exists()
    assert len(list(out.glob("*.tfrecord"))) == 8

    monkeypatch.undo()
    res = run_cli("pack", prefix, root, "--out", out, "--resume", *ARGS)
    assert res.exit_code == 0, res.output
    assert shard_bytes(out) == shard_bytes(reference)
    assert manifest_without_time(out) == manifest_without_time(reference)


def test_disk_full_while_writing_a_list(tmp_path, monkeypatch):
    root = tmp_path / "img"
    imagegen.make_tree(root, classes=2, per_class=30, size=(8, 8), fmt="PNG")
    out = tmp_path / "lists"
    out.mkdir()
    monkeypatch.setattr(os, "fdopen", Disk(1000).fdopen)
    res = run_cli("list", out / "data", root, "--recursive", "--train-ratio", "0.5", "-q")
    monkeypatch.undo()
    assert res.exit_code == 1
    line = error_line(res.output)
    # val is written first and fits; train does not
    assert f"cannot write {out / 'data_train.lst'}: No space left on device" in line
    assert sorted(p.name for p in out.iterdir()) == ["data_val.lst"]


def _tmpfs_available() -> str | None:
    if sys.platform != "linux" or not shutil.which("unshare"):
        return "needs Linux and unshare(1)"
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt 2>&1 || exit 3"],
        capture_output=True,
        text=True,
    )
    if probe.returncode:
        return f"cannot mount a tmpfs in a user namespace here: {probe.stderr.strip()[:120]}"
    return None


def test_real_full_tmpfs(tmp_path, dataset):
    """`recordkit pack` onto a real 128 KiB tmpfs: ENOSPC from the kernel, not a mock."""
    why = _tmpfs_available()
    if why:
        pytest.skip(why)
    prefix, root, reference = dataset
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    total = sum(p.stat().st_size for p in reference.iterdir())
    script = (
        f"mount -t tmpfs -o size={total // 2} none {mnt} && "
        f"{sys.executable} -m recordkit pack {prefix} {root} --out {mnt}/s {' '.join(ARGS)}; "
        f"echo rc=$?; ls -a {mnt}/s"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env
    )
    assert "rc=1" in proc.stdout, (proc.stdout, proc.stderr)
    line = error_line(proc.stderr)
    assert "No space left on device while writing" in line and "--resume" in line
    assert ".tmp" not in proc.stdout.split("rc=1", 1)[1], proc.stdout


def test_disk_full_while_writing_an_index(tmp_path, monkeypatch):
    from recordkit.errors import DiskFullError
    from recordkit.format.index import write_index

    idx = tmp_path / "a.idx"
    idx.write_text("old\n")
    monkeypatch.setattr(atomic_mod, "open", Disk(10).open, raising=False)
    with pytest.raises(DiskFullError, match=f"No space left on device while writing {idx}"):
        write_index([(i * 100, 100) for i in range(50)], idx)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.idx"]
    assert idx.read_text() == "old\n"  # untouched
