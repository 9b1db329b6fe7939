"""Interrupted packs, ``--resume``, ``--part K/N`` + ``--merge``, and the bounded window."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagegen
import pytest
from test_pack import make_dataset, manifest_without_time, opts, run_cli, shard_bytes

import recordkit
from recordkit.format.manifest import MANIFEST_NAME
from recordkit.imaging import ImageOptions
from recordkit.listing import make_lists
from recordkit.memory import MemoryBudget
from recordkit.pack import PackError, pack
from recordkit.pack import pool as pool_mod
from recordkit.pack import work as pack_work
from recordkit.pack.work import Job
from recordkit.verify import verify_shard


class Interrupt(Exception):
    pass


def stop_after(k: int):
    def progress(done: int, total: int) -> None:
        if done >= k:
            raise Interrupt(f"stopped after {done} of {total}")

    return progress


def assert_finished_files_complete(out: Path) -> None:
    """No final-named file is incomplete: every .tfrecord verifies against its .idx."""
    assert not list(out.glob("*.tmp")), list(out.glob("*.tmp"))
    for f in out.glob("*.tfrecord"):
        rep, _ = verify_shard(f, require_index=True)
        assert rep.ok, rep.problems


@pytest.fixture
def dataset(tmp_path):
    prefix, root = make_dataset(tmp_path, per_class=10, train_ratio=0.8)
    imagegen.make_text_as_jpg(root / "c2" / "bad.jpg")  # a skip inside some shard
    make_lists(prefix, root, recursive=True, train_ratio=0.8)
    reference = tmp_path / "reference"
    pack(prefix, root, opts(reference, shard_size=3, threads=2))
    return prefix, root, reference


def test_resume_after_interruption_is_byte_identical(tmp_path, dataset):
    prefix, root, reference = dataset
    out = tmp_path / "shards"
    with pytest.raises(Interrupt):
        pack(prefix, root, opts(out, shard_size=3, threads=3), progress=stop_after(14))
    assert not (out / MANIFEST_NAME).exists()
    assert_finished_files_complete(out)
    state = json.loads((out / ".pack-state.train.json").read_text())
    assert len(state["shards"]) == 4  # 14 inputs seen: shards 0..3 done, shard 4 aborted

    # a plain re-run refuses; --resume finishes without redoing finished shards
    with pytest.raises(PackError, match="--resume"):
        pack(prefix, root, opts(out, shard_size=3))
    # what a kill during a state-file rewrite leaves behind
    (out / ".pack-state.train.json.999.tmp").write_text("{")
    (out / "train-00004-of-00008.tfrecord.tmp").write_bytes(b"partial")
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("train-*.tfrecord")}
    res = pack(prefix, root, opts(out, shard_size=3, threads=1, resume=True))
    assert res.splits["train"].shards_reused == 4
    assert res.splits["train"].shards_written == res.splits["train"].shards - 4
    for name, t in mtimes.items():
        assert (out / name).stat().st_mtime_ns == t, name
    assert shard_bytes(out) == shard_bytes(reference)
    assert manifest_without_time(out) == manifest_without_time(reference)
    assert not list(out.glob(".pack-state*"))


def test_resume_with_other_options_is_refused(tmp_path, dataset):
    prefix, root, _ = dataset
    out = tmp_path / "shards"
    with pytest.raises(Interrupt):
        pack(prefix, root, opts(out, shard_size=3), progress=stop_after(7))
    with pytest.raises(PackError, match="other lists or options"):
        pack(prefix, root, opts(out, shard_size=3, resume=True, img={"quality": 80}))
    # --overwrite starts over and gives the reference bytes
    pack(prefix, root, opts(out, shard_size=3, overwrite=True))


def test_resume_redoes_a_shard_whose_file_is_damaged(tmp_path, dataset):
    prefix, root, reference = dataset
    out = tmp_path / "shards"
    with pytest.raises(Interrupt):
        pack(prefix, root, opts(out, shard_size=3), progress=stop_after(10))
    victim = out / "train-00001-of-00008.tfrecord"
    victim.write_bytes(victim.read_bytes()[:-5])
    res = pack(prefix, root, opts(out, shard_size=3, resume=True))
    assert res.splits["train"].shards_reused == 2
    assert shard_bytes(out) == shard_bytes(reference)


def test_sigkill_then_resume_is_byte_identical(tmp_path):
    """A real SIGKILL of `recordkit pack` in a subprocess, then `--resume`."""
    root = tmp_path / "img"
    imagegen.make_tree(root, classes=4, per_class=60, size=(96, 128), fmt="PNG")
    prefix = tmp_path / "data"
    make_lists(prefix, root, recursive=True)
    args = ["--shard-size", "2", "--threads", "1", "--encoding", ".png", "-q"]
    reference = tmp_path / "reference"
    assert run_cli("pack", prefix, root, "--out", reference, *args).exit_code == 0

    out = tmp_path / "shards"
    cmd = [sys.executable, "-m", "recordkit", "pack", str(prefix), str(root), "--out", str(out)]
    proc = subprocess.Popen(cmd + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = out / ".pack-state.train.json"
    deadline = time.monotonic() + 60
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = len(json.loads(state.read_text())["shards"])
        except (OSError, ValueError, KeyError):
            done = 0
        if done >= 5:
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.002)
    proc.wait()
    if not killed:
        pytest.skip(f"the pack finished before it could be killed (rc {proc.returncode})")
    assert proc.returncode == -signal.SIGKILL
    assert not (out / MANIFEST_NAME).exists()
    for f in out.glob("*.tfrecord"):  # .tmp files may be left; final names are complete
        rep, _ = verify_shard(f, require_index=True)
        assert rep.ok, rep.problems
    n_final = len(list(out.glob("*.tfrecord")))
    assert 5 <= n_final < 120

    res = run_cli("pack", prefix, root, "--out", out, "--resume", *args)
    assert res.exit_code == 0, res.output
    assert "reused" in res.output
    assert shard_bytes(out) == shard_bytes(reference)
    assert manifest_without_time(out) == manifest_without_time(reference)


def test_parts_then_merge_equal_a_single_run(tmp_path, dataset):
    prefix, root, reference = dataset
    out = tmp_path / "shards"
    common = ["--out", out, "--shard-size", "3", "-q"]
    res = run_cli("pack", prefix, root, "--part", "1/2", *common)
    assert res.exit_code == 0, res.output
    assert "run with --merge" in res.output
    assert not (out / MANIFEST_NAME).exists()
    assert sorted(p.name for p in out.glob("train-*.tfrecord")) == [
        f"train-{i:05d}-of-00008.tfrecord" for i in (1, 3, 5, 7)
    ]
    res = run_cli("pack", prefix, root, "--merge", *common)
    assert res.exit_code == 1
    assert "shard(s) not finished" in res.output and "train-00000-of-00008" in res.output

    res = run_cli("pack", prefix, root, "--part", "0/2", *common)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.glob(".pack-state*")) == [
        ".pack-state.train.part-0-of-2.json",
        ".pack-state.train.part-1-of-2.json",
        ".pack-state.val.part-0-of-2.json",
        ".pack-state.val.part-1-of-2.json",
    ]
    res = run_cli("pack", prefix, root, "--merge", *common)
    assert res.exit_code == 0, res.output
    assert shard_bytes(out) == shard_bytes(reference)
    assert manifest_without_time(out) == manifest_without_time(reference)
    assert recordkit.verify(out).ok
    res = run_cli("pack", prefix, root, "--merge", *common)  # merging again changes nothing
    assert res.exit_code == 0 and "packed nothing" in res.output
    assert shard_bytes(out) == shard_bytes(reference)


def test_window_bounds_tasks_in_flight_and_keeps_order(monkeypatch):
    """At most `window` tasks are submitted but not yet consumed, and order is kept."""
    lock = threading.Lock()
    state = {"submitted": 0, "consumed": 0, "max_ahead": 0, "tasks": 0}

    def fake(jobs, image, budget, limits=None, defer_above=None):
        time.sleep(0.001 * (len(jobs) % 3))
        return [(None, job.path, 0) for job in jobs], 1e-5 * len(jobs)

    real_submit = ThreadPoolExecutor.submit

    def counting_submit(self, fn, *a, **kw):
        with lock:
            state["tasks"] += 1
            state["submitted"] += len(a[0])
            ahead = state["submitted"] - state["consumed"]
            state["max_ahead"] = max(state["max_ahead"], ahead)
        return real_submit(self, fn, *a, **kw)

    monkeypatch.setattr(pool_mod, "run_task", fake)
    monkeypatch.setattr(ThreadPoolExecutor, "submit", counting_submit)
    jobs = [Job(str(i), (0,), str(i), i, "c") for i in range(2000)]
    with ThreadPoolExecutor(4) as pool:
        out = []
        stream = pool_mod.ordered(pool, iter(jobs), len(jobs), None, 6, MemoryBudget(1 << 30))
        for _, reason, _ in stream:
            state["consumed"] += 1
            out.append(reason)
    assert out == [str(i) for i in range(2000)]
    # tasks grow to TASK_IMAGES_MAX images when each takes 10 us (4 ms / 10 us > 256)
    assert state["tasks"] < 2000 // 100
    assert state["max_ahead"] <= 7 * pool_mod.TASK_IMAGES_MAX  # the window (+1) of tasks


def test_worker_exception_surfaces_with_traceback(monkeypatch, tmp_path):
    prefix, root = make_dataset(tmp_path, classes=1, per_class=3)

    def boom(data: bytes, image: ImageOptions):
        raise RuntimeError("codec exploded")

    monkeypatch.setattr(pack_work, "process_image", boom)
    out = tmp_path / "shards"
    with pytest.raises(RuntimeError, match="codec exploded") as info:
        pack(prefix, root, opts(out))
    assert any(t.name == "boom" for t in info.traceback)
    assert not (out / MANIFEST_NAME).exists()
    assert not list(out.glob("*.tmp")) and not list(out.glob("*.tfrecord"))
    assert os.path.isdir(out)
