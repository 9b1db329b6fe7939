"""The shard cache and remote training against real servers on 127.0.0.1 (nginx, moto, the
GCS emulator): retries, one-line errors, nothing half-downloaded used, the limit held across an
epoch, two processes sharing one cache without downloading a shard twice."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_record, write_shards

import recordkit
from recordkit.errors import CorruptRecordError
from recordkit.loaders.streaming import (
    RemoteOptions,
    ShardFeeder,
    cached_split,
    shard_window_indices,
    window_for,
)
from recordkit.remote import fs as remote_fs
from recordkit.remote.cache import ShardCache
from recordkit.remote.fs import RemoteError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

N_TRAIN, PER_SHARD = 40, 5  # 8 shards


@pytest.fixture
def served(nginx, request):
    """A dataset under nginx's root: ``(local dir, URL)``."""
    name = request.node.name.replace("[", "_").replace("]", "_")
    root = write_shards(
        nginx.root / name,
        {"train": [make_record(i) for i in range(N_TRAIN)]},
        records_per_shard=PER_SHARD,
    )
    nginx.clear_log()
    yield root, f"{nginx.url}/{name}"
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(remote_fs, "BACKOFF", 0.01)


def _fetch_all(ds, cache):
    split = cached_split(ds["train"], cache)
    for r in split.readers:
        r.ensure()
    return split


def _part_files(cache: ShardCache) -> list[Path]:
    return [p for p in cache.directory.rglob(".*.part-*")]


# -- sampling: exactly once, a window of shards at a time -------------------------------------
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shard_window_order_is_exactly_once_and_windowed(world):
    counts = [5, 5, 5, 5, 5, 5, 5, 3]
    starts = np.cumsum([0, *counts])
    per_rank = [
        shard_window_indices(counts, r, world, shuffle=True, seed=7, epoch=2, window=2)
        for r in range(world)
    ]
    allidx = np.concatenate(per_rank)
    assert sorted(allidx.tolist()) == list(range(sum(counts)))
    for idx in per_rank:
        shard = np.searchsorted(starts, idx, side="right") - 1
        # each run of 5 consecutive reads (a batch) touches at most 2 windows = 4 shards
        for lo in range(0, len(shard), 5):
            assert len(set(shard[lo : lo + 5].tolist())) <= 4
    again = shard_window_indices(counts, 0, world, shuffle=True, seed=7, epoch=2, window=2)
    assert np.array_equal(again, per_rank[0])
    other = shard_window_indices(counts, 0, world, shuffle=True, seed=7, epoch=3, window=2)
    assert not np.array_equal(other, per_rank[0])


# -- downloads: verified, atomic, retried ----------------------------------------------------
def test_fetch_downloads_verified_copies_with_their_index(served, tmp_path):
    local, url = served
    cache = ShardCache.create(tmp_path / "cache", 10**9)
    split = _fetch_all(recordkit.open(url), cache)
    for r, e in zip(split.readers, split.entries, strict=True):
        assert r.path.read_bytes() == (local / e.file).read_bytes()
        assert r.path.with_suffix(".idx").read_bytes() == (local / e.index).read_bytes()
    assert [split.read_bytes(i) for i in range(N_TRAIN)] == [
        recordkit.open(local)["train"].read_bytes(i) for i in range(N_TRAIN)
    ]
    assert _part_files(cache) == []


def test_corrupt_download_is_refused_and_nothing_cached(served, tmp_path):
    local, url = served
    shard = local / "train-00003-of-00008.tfrecord"
    data = bytearray(shard.read_bytes())
    data[40] ^= 0x01  # inside the first record's data
    shard.write_bytes(bytes(data))
    cache = ShardCache.create(tmp_path / "cache", 10**9)
    split = cached_split(recordkit.open(url)["train"], cache)
    with pytest.raises(
        CorruptRecordError, match=r"train-00003-of-00008.tfrecord: offset 0: data CRC"
    ):
        split.readers[3].ensure()
    assert not split.readers[3].path.exists() and _part_files(cache) == []


def test_sha256_mismatch_is_refused(served, tmp_path):
    _, url = served
    cache = ShardCache.create(tmp_path / "cache", 10**9)
    split = cached_split(recordkit.open(url)["train"], cache)
    split.readers[1].sha256 = "0" * 64
    with pytest.raises(CorruptRecordError, match="SHA-256"):
        split.readers[1].ensure()
    assert not split.readers[1].path.exists() and _part_files(cache) == []


def test_cut_short_download_is_retried_and_never_used(served, fault_proxy, tmp_path):
    local, url = served
    url = url.replace(f":{fault_proxy.upstream_port}/", f":{fault_proxy.port}/")
    ds = recordkit.open(url)
    cache = ShardCache.create(tmp_path / "cache", 10**9)
    split = cached_split(ds["train"], cache)
    fault_proxy.fail("train-00002-of-00008.tfrecord", "short", "reset")
    split.readers[2].ensure()  # two failures, then the whole file
    assert split.readers[2].path.read_bytes() == (local / split.entries[2].file).read_bytes()
    # and when it never succeeds: an error, and nothing left in the cache
    fault_proxy.fail("train-00004-of-00008.tfrecord", *["short"] * 10)
    with pytest.raises(RemoteError, match=r"train-00004-of-00008.tfrecord: read failed after 6"):
        split.readers[4].ensure()
    assert not split.readers[4].path.exists() and _part_files(cache) == []


def test_part_file_of_a_dead_process_is_ignored_and_removed(served, tmp_path):
    _, url = served
    cache = ShardCache.create(tmp_path / "cache", 10**9)
    split = cached_split(recordkit.open(url)["train"], cache)
    r = split.readers[0]
    r.path.parent.mkdir(parents=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = r.path.with_name(f".{r.path.name}.part-{int(dead.stdout)}-{10**9}")
    stale.write_bytes(b"half")
    assert cache.usage() == 0 and not stale.exists()
    assert split.read_bytes(0) == recordkit.open(url)["train"].read_bytes(0)


@pytest.mark.parametrize("faults", [("503", "503"), ("reset",), ("500", "reset", "503")])
def test_transient_errors_are_retried_then_succeed(served, fault_proxy, faults):
    _, url = served
    url = url.replace(f":{fault_proxy.upstream_port}/", f":{fault_proxy.port}/")
    ds = recordkit.open(url)
    want = ds["train"].read_bytes(7)
    fault_proxy.fail("train-00001-of-00008.tfrecord", *faults)
    assert ds["train"].read_bytes(7) == want
    path = next(p for p in fault_proxy.hits if p.endswith("train-00001-of-00008.tfrecord"))
    assert fault_proxy.hits[path] == 2 + len(faults)


def test_retries_give_up_with_one_line_naming_the_url(served, fault_proxy):
    _, url = served
    url = url.replace(f":{fault_proxy.upstream_port}/", f":{fault_proxy.port}/")
    ds = recordkit.open(url)
    fault_proxy.fail("train-00000-of-00008.tfrecord", *["503"] * 10)
    with pytest.raises(RemoteError) as err:
        ds["train"].read_bytes(0)
    msg = str(err.value)
    assert msg.startswith(f"{url}/train-00000-of-00008.tfrecord: read failed after 6 attempts")
    assert err.value.status == 503 and "\n" not in msg


def test_403_and_404_are_not_retried(nginx, fault_proxy):
    fault_proxy.hits.clear()
    with pytest.raises(RemoteError, match=r"forbidden/x/recordkit.json: access denied \(403\)"):
        recordkit.open(f"{fault_proxy.url}/forbidden/x/")
    with pytest.raises(recordkit.ManifestError, match=r"none/recordkit.json: not found \(404\)"):
        recordkit.open(f"{fault_proxy.url}/none/")
    assert sorted(fault_proxy.hits.values()) == [1, 1]


# -- the limit, eviction, sharing -----------------------------------------------------------
def test_cache_limit_holds_across_an_epoch_of_streaming(served, nginx, tmp_path):
    _, url = served
    ds = recordkit.open(url)
    sp = ds["train"]
    largest = max(e.bytes for e in sp.entries)
    limit = 3 * largest + 10  # 3 of 8 shards
    cache = ShardCache.create(tmp_path / "cache", limit)
    split = cached_split(sp, cache)
    order = shard_window_indices(
        [e.records for e in sp.entries],
        0,
        1,
        shuffle=True,
        seed=1,
        epoch=0,
        window=window_for(sp, limit),
    )
    peak, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], cache.usage())

    watcher = threading.Thread(target=watch)
    watcher.start()
    feeder = ShardFeeder(split, limit).start(order)
    seen = []
    try:
        for k, i in enumerate(order.tolist()):
            seen.append(split[i].index)
            if k % 4 == 3:
                feeder.consumed(k + 1)
    finally:
        feeder.stop()
        stop.set()
        watcher.join()
    assert sorted(seen) == list(range(N_TRAIN))  # every record once
    assert 0 < peak[0] <= limit and cache.usage() <= limit
    # each shard downloaded exactly once over the epoch (evicted only after its last read)
    counts = {e.file: nginx.downloads(f"/{e.file}") for e in sp.entries}
    assert set(counts.values()) == {1}


_TWO = r"""
import sys, recordkit
from recordkit.remote.cache import ShardCache
from recordkit.loaders.streaming import cached_split
url, cache_dir, start = sys.argv[1], sys.argv[2], sys.argv[3]
import os, time
while not os.path.exists(start):  # both processes wait for the same start signal
    time.sleep(0.001)
split = cached_split(recordkit.open(url)["train"], ShardCache.create(cache_dir, 10**9))
got = [split.read_bytes(i) for i in range(len(split))]
import hashlib; print(hashlib.sha256(b"".join(got)).hexdigest())
"""


def test_two_processes_share_one_cache_and_download_each_shard_once(served, nginx, tmp_path):
    local, url = served
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _TWO, url, str(tmp_path / "cache"), str(go)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        for _ in range(2)
    ]
    time.sleep(1.0)  # both started and waiting
    go.touch()
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    import hashlib

    ref = recordkit.open(local)["train"]
    want = hashlib.sha256(b"".join(ref.read_bytes(i) for i in range(N_TRAIN))).hexdigest()
    assert outs == [want, want]
    for e in ref.entries:
        assert nginx.downloads(f"/{e.file}") == 1, e.file


def test_object_store_dataset_streams_through_the_cache(bucket_url, tmp_path):
    from remote_servers import upload_dir

    local = write_shards(
        tmp_path / "ds",
        {"train": [make_record(i) for i in range(N_TRAIN)]},
        records_per_shard=PER_SHARD,
    )
    upload_dir(local, f"{bucket_url}/ds")
    cache = ShardCache.create(tmp_path / "cache", 10**9)
    split = cached_split(recordkit.open(f"{bucket_url}/ds")["train"], cache)
    assert [split[i].index for i in range(N_TRAIN)] == list(range(N_TRAIN))
    assert len(list(cache.directory.rglob("*.tfrecord"))) == 8


def test_remote_options_validate():
    with pytest.raises(ValueError, match="read must be one of"):
        RemoteOptions(read="sometimes")


def _sleep(started, seconds: float) -> None:
    started.set()  # the at-fork handler has run by now
    time.sleep(seconds)


def test_a_forked_child_does_not_keep_the_parents_pins(served, tmp_path):
    """DataLoader workers are forked while the feeder holds pins: the pins must stay the
    parent's, or the cache could never evict those shards (a deadlock at the limit)."""
    import multiprocessing as mp

    _, url = served
    cache = ShardCache.create(tmp_path / "cache", 10**9)
    split = cached_split(recordkit.open(url)["train"], cache)
    pin = split.readers[0].ensure(pin=True)
    ctx = mp.get_context("fork")
    started = ctx.Event()
    child = ctx.Process(target=_sleep, args=(started, 5.0))
    child.start()
    try:
        assert started.wait(30)
        assert not cache._evict(split.readers[0].path)  # pinned by us
        pin.release()
        assert cache._evict(split.readers[0].path)  # the child holds nothing
        assert not split.readers[0].path.exists()
    finally:
        child.terminate()
        child.join()
