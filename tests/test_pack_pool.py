"""Worker processes and tasks of several images: same bytes as threads, failures named."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagegen
import numpy as np
import pytest
from test_pack import make_dataset, manifest_without_time, opts, run_cli, shard_bytes

from recordkit.imaging import ImageOptions
from recordkit.listing import make_lists, read_list
from recordkit.memory import MemoryBudget
from recordkit.pack import pack
from recordkit.pack import pool as pool_mod
from recordkit.pack.pool import (
    ProcessWorkers,
    WorkerError,
    WorkerRaised,
    ordered,
    start_early,
)
from recordkit.pack.work import DEFAULT_LIMITS, Job, TaskLimits, run_task


@pytest.fixture
def mixed(tmp_path):
    """JPEGs and PNGs of several sizes, a zero-byte file and a text file named .jpg."""
    prefix, root = make_dataset(tmp_path, classes=2, per_class=6, fmt="PNG", size=(30, 40))
    imagegen.make_tree(root / "more", classes=1, per_class=4, size=(70, 50), fmt="JPEG")
    imagegen.make_zero_byte(root / "c0" / "empty.png")
    imagegen.make_text_as_jpg(root / "c1" / "text.jpg")
    make_lists(prefix, root, recursive=True)
    return prefix, root


def worker_children() -> list[int]:
    """Pids of this process's children that run a pack worker (Linux /proc)."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"worker_main" in cmd:
            found.append(int(d.name))
    return found


def wait_usable(workers: ProcessWorkers, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not workers.usable():
        assert time.monotonic() < deadline, "worker processes did not start"
        time.sleep(0.02)


def jobs_of(prefix, root) -> list[Job]:
    entries = read_list(f"{prefix}.lst")
    return [Job(str(root / e.path), (int(e.label),), e.path, e.index, "c") for e in entries]


@pytest.mark.parametrize("img", [{}, {"resize": 36, "upscale": True}])
def test_processes_write_the_same_bytes_as_threads(tmp_path, mixed, img):
    prefix, root = mixed
    a, b = tmp_path / "threads", tmp_path / "procs"
    pack(prefix, root, opts(a, threads=1, pool="threads", shard_size=5, img=img))
    res = pack(prefix, root, opts(b, threads=2, pool="processes", shard_size=5, img=img))
    assert res.splits["train"].skipped == 2
    assert shard_bytes(a) == shard_bytes(b)
    assert manifest_without_time(a) == manifest_without_time(b)


def test_images_too_large_for_a_process_are_done_on_threads(tmp_path, mixed, monkeypatch):
    prefix, root = mixed
    jobs = jobs_of(prefix, root)
    image = ImageOptions(quality=90)
    budget = MemoryBudget(200_000)  # a worker process takes on at most 200000 // 16 bytes
    on_threads = []

    def counting(jobs, *a, **kw):
        on_threads.append(len(jobs))
        return run_task(jobs, *a, **kw)

    monkeypatch.setattr(pool_mod, "run_task", counting)
    with ThreadPoolExecutor(2) as pool:
        got = list(ordered(pool, iter(jobs), len(jobs), image, 4, budget, mode="processes"))
    expected = run_task(jobs, image, MemoryBudget(1 << 30), TaskLimits(1 << 30, 1e9))[0]
    assert got == expected
    assert sum(on_threads) >= 10  # every decodable image is deferred: 30x40 costs 28.8 KB
    assert budget._free == budget.total  # every reservation given back


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_tasks_that_end_early_keep_order_and_bytes(mixed, mode):
    prefix, root = mixed
    jobs = jobs_of(prefix, root) * 3
    image = ImageOptions()
    small = TaskLimits(bytes=1, seconds=1e9)  # every task stops after its first image
    with ThreadPoolExecutor(2) as pool:
        budget = MemoryBudget(1 << 30)
        got = list(ordered(pool, iter(jobs), len(jobs), image, 3, budget, mode=mode, limits=small))
    assert got == run_task(jobs, image, MemoryBudget(1 << 30), TaskLimits(1 << 30, 1e9))[0]


def test_a_later_task_read_first_reads_the_earlier_answers_in_order(mixed):
    # a task that ended early is submitted again and read before tasks sent before it
    prefix, root = mixed
    jobs = jobs_of(prefix, root)
    workers = ProcessWorkers(1)
    budget = MemoryBudget(1 << 30)
    limits = TaskLimits(1 << 30, 1e9)
    try:
        workers.setup((ImageOptions(), limits, 1 << 20))
        wait_usable(workers)
        parts = [jobs[:3], jobs[3:6], jobs[6:9]]
        tasks = [workers.submit(p, budget, 10) for p in parts]
        expected = [run_task(p, ImageOptions(), budget, limits)[0] for p in parts]
        assert tasks[2].result()[0] == expected[2]
        assert tasks[0].result()[0] == expected[0]
        assert tasks[1].result()[0] == expected[1]
        assert budget._free == budget.total
    finally:
        workers.close(kill=True)


def test_a_worker_that_dies_fails_naming_its_files(mixed):
    prefix, root = mixed
    jobs = jobs_of(prefix, root)
    workers = ProcessWorkers(1)
    try:
        workers.setup((ImageOptions(), DEFAULT_LIMITS, 1 << 20))
        wait_usable(workers)
        workers._workers[0].proc.kill()
        task = workers.submit(jobs[:3], MemoryBudget(1 << 30), 10)
        with pytest.raises(WorkerError, match="killed by signal 9") as info:
            task.result()
        assert f"processing one of {jobs[0].path} ... {jobs[2].path}" in str(info.value)
    finally:
        workers.close(kill=True)


def test_a_worker_exception_comes_back_with_its_traceback(mixed):
    prefix, root = mixed
    job = next(j for j in jobs_of(prefix, root) if "img_" in j.path)
    job = job._replace(labels=("not a number",))
    workers = ProcessWorkers(1)
    try:
        workers.setup((ImageOptions(), DEFAULT_LIMITS, 1 << 20))
        wait_usable(workers)
        with pytest.raises(WorkerRaised, match="(?s)raised, processing .*Traceback.*TypeError"):
            workers.submit([job], MemoryBudget(1 << 30), 0).result()
    finally:
        workers.close(kill=True)


def test_auto_moves_small_images_to_processes(tmp_path, mixed, monkeypatch, caplog):
    prefix, root = mixed
    monkeypatch.setattr(pool_mod, "_MIN_MEASURED", 2)
    monkeypatch.setattr(pool_mod, "PROCESS_MIN_WORK_SECONDS", 0.0)
    monkeypatch.setattr(pool_mod, "PROCESS_BELOW_SECONDS", 10.0)  # whatever this machine does
    a, b = tmp_path / "threads", tmp_path / "auto"
    pack(prefix, root, opts(a, threads=2, pool="threads"))
    with caplog.at_level(logging.INFO, logger="recordkit.pack.pool"):
        pack(prefix, root, opts(b, threads=2, pool="auto"))
    assert "starting 2 worker processes" in caplog.text
    assert shard_bytes(a) == shard_bytes(b)


def test_start_early_only_for_many_thumbnails(tmp_path, monkeypatch):
    thumbs = [
        str(imagegen.write_image(tmp_path / f"t{i}.png", np.zeros((28, 28), np.uint8), "PNG"))
        for i in range(4)
    ]
    monkeypatch.setattr(pool_mod, "EARLY_MIN_IMAGES", 10)
    assert start_early("auto", 2, 5, thumbs, ImageOptions()) is None  # too few images
    assert start_early("threads", 2, 50, thumbs, ImageOptions()) is None
    assert start_early("auto", 1, 50, thumbs, ImageOptions()) is None
    upscaled = ImageOptions(resize=480, upscale=True)  # 480x480 to encode: not a thumbnail
    assert start_early("auto", 2, 50, thumbs, upscaled) is None
    workers = start_early("auto", 2, 50, thumbs, ImageOptions())
    assert isinstance(workers, ProcessWorkers)
    workers.close(kill=True)


def test_memory_budget_waits_for_room_and_wakes_on_release():
    import threading

    budget = MemoryBudget(100)
    held = budget.acquire(70)
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(budget.acquire(50)))
    waiter.start()
    time.sleep(0.05)
    assert not got  # 30 free, 50 wanted: it waits
    budget.release(held)
    waiter.join(5)
    assert got == [50] and budget._free == 50
    budget.release(50)
    assert budget.acquire(10**9) == 100  # more than the whole budget waits for all of it


def test_cli_pool_option(tmp_path, mixed):
    prefix, root = mixed
    outs = []
    for pool in ("threads", "processes"):
        out = tmp_path / pool
        res = run_cli("pack", prefix, root, "--out", out, "--pool", pool, "--threads", 2, "-q")
        assert res.exit_code == 0, res.output
        outs.append(shard_bytes(out))
    assert outs[0] == outs[1]
    bad = run_cli("pack", prefix, root, "--out", tmp_path / "x", "--pool", "fibers")
    assert bad.exit_code == 2


def test_interrupted_pack_on_processes_resumes_to_the_same_bytes(tmp_path, mixed):
    prefix, root = mixed
    reference, out = tmp_path / "reference", tmp_path / "shards"
    pack(prefix, root, opts(reference, shard_size=3, threads=1, pool="threads"))

    def stop(done: int, total: int) -> None:
        if done >= 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pack(prefix, root, opts(out, shard_size=3, threads=2, pool="processes"), progress=stop)
    assert not list(out.glob("*.tmp"))
    assert not worker_children()  # stopped and reaped, not left behind
    pack(prefix, root, opts(out, shard_size=3, threads=2, pool="processes", resume=True))
    assert shard_bytes(out) == shard_bytes(reference)
