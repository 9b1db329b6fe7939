"""make_loader on a split served by nginx (and in s3:// / gs:// buckets): the same pixels and
labels as the local split, every training record once per epoch, the cache under its limit;
DALI streams through the cache (fn.external_source) with the same guarantees, and resumes
mid-epoch exactly."""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections import Counter

import pytest
import torch
from conftest import write_shards
from test_loaders import NUM_TRAIN, NUM_VAL, SIZE, collect, png_record

from recordkit.loaders import Augment, make_loader
from recordkit.loaders.streaming import RemoteOptions
from recordkit.remote.cache import ShardCache

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def served(nginx):
    root = write_shards(
        nginx.root / "loaders",
        {
            "train": [png_record(i) for i in range(NUM_TRAIN)],
            "val": [png_record(i) for i in range(NUM_VAL)],
        },
        records_per_shard=4,
    )
    yield root, f"{nginx.url}/loaders/"
    shutil.rmtree(root, ignore_errors=True)


def _loader(path, split, backend="torch", **kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("num_workers", 0)
    return make_loader(path, split, image_size=SIZE, backend=backend, **kw)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("read", ["direct", "cache"])
def test_validation_matches_the_local_split(served, tmp_path, read, workers):
    local, url = served
    opts = RemoteOptions(cache_dir=tmp_path / "c", cache_limit=10**8, read=read)
    remote = _loader(url, "val", remote=opts, num_workers=workers)
    assert collect(remote) == collect(_loader(local, "val"))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world", [1, 2])
def test_training_through_the_cache_reads_each_record_once(served, tmp_path, workers, world):
    _, url = served
    largest = max(p.stat().st_size for p in served[0].glob("train-*.tfrecord"))
    limit = world * (3 * largest + 100)  # per rank: three shards of eight
    opts = RemoteOptions(cache_dir=tmp_path / "c", cache_limit=limit, read="cache")
    cache = ShardCache.create(tmp_path / "c", limit)
    peak, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], cache.usage())

    t = threading.Thread(target=watch)
    t.start()
    try:
        ids = []
        for rank in range(world):
            ld = _loader(
                url,
                "train",
                remote=opts,
                num_workers=workers,
                rank=rank,
                world_size=world,
                drop_last=False,
            )
            ld.set_epoch(3)
            ids += collect(ld)[0]
    finally:
        stop.set()
        t.join()
    assert sorted(ids) == list(range(NUM_TRAIN))
    assert 0 < peak[0] <= limit


def test_train_default_reads_through_the_cache(served, tmp_path, monkeypatch):
    _, url = served
    monkeypatch.setenv("RECORDKIT_CACHE", str(tmp_path / "envcache"))
    ld = _loader(url, "train", drop_last=False)
    assert ld.feeder is not None
    assert sorted(collect(ld)[0]) == list(range(NUM_TRAIN))
    assert len(list((tmp_path / "envcache").rglob("*.tfrecord"))) > 0


def test_cache_limit_below_three_shards_is_one_clear_error(served, tmp_path):
    _, url = served
    opts = RemoteOptions(cache_dir=tmp_path / "c", cache_limit=1000, read="cache")
    with pytest.raises(Exception, match="cache limit too small") as err:
        _loader(url, "train", remote=opts)
    assert "\n" not in str(err.value)


def test_object_store_training_epoch_through_the_cache(bucket_url, tmp_path):
    """An epoch over s3:// or gs:// streams every shard through the cache: each training record
    once, with its label, and the cache holds the downloaded shards."""
    from remote_servers import upload_dir

    local = write_shards(
        tmp_path / "ds", {"train": [png_record(i) for i in range(NUM_TRAIN)]}, records_per_shard=4
    )
    upload_dir(local, f"{bucket_url}/ds")
    opts = RemoteOptions(cache_dir=tmp_path / "c", cache_limit=10**8, read="cache")
    ld = _loader(f"{bucket_url}/ds/", "train", remote=opts, drop_last=False)
    ld.set_epoch(1)
    ids, labels, _ = collect(ld)
    assert sorted(ids) == list(range(NUM_TRAIN))
    assert dict(zip(ids, labels, strict=True)) == {i: i % 3 for i in range(NUM_TRAIN)}
    cached = sorted(p.name for p in (tmp_path / "c").rglob("train-*.tfrecord"))
    assert cached == sorted(p.name for p in local.glob("train-*.tfrecord"))


@contextlib.contextmanager
def cache_peak(directory, limit):
    """Samples the cache's bytes on a thread while the block runs; yields ``[peak]``."""
    cache = ShardCache.create(directory, limit)
    peak, stop = [0], threading.Event()

    def watch():
        while not stop.wait(0.002):
            peak[0] = max(peak[0], cache.usage())

    t = threading.Thread(target=watch)
    t.start()
    try:
        yield peak
    finally:
        stop.set()
        t.join()
    peak[0] = max(peak[0], cache.usage())


def _largest(root, split):
    return max(p.stat().st_size for p in root.glob(f"{split}-*.tfrecord"))


def _split_bytes(root, split):
    return sum(p.stat().st_size for p in root.glob(f"{split}-*.tfrecord"))


def _dali(path, split, **kw):
    pytest.importorskip("nvidia.dali")
    kw.setdefault("num_workers", 1)
    return _loader(path, split, backend="dali", device="cpu", **kw)


@pytest.mark.dali
def test_dali_validation_streams_within_the_limit_and_matches_local(served, tmp_path):
    local, url = served
    limit = 3 * _largest(local, "val") + 100  # half the split's six shards
    assert limit < _split_bytes(local, "val")
    opts = RemoteOptions(cache_dir=tmp_path / "c", cache_limit=limit)
    with cache_peak(tmp_path / "c", limit) as peak:
        ld = _dali(url, "val", remote=opts)
        got = collect(ld), collect(ld)  # two passes: the second streams again
    want = collect(_dali(local, "val"))
    assert got == (want, want)
    assert want[0] == list(range(NUM_VAL))
    assert 0 < peak[0] <= limit


@pytest.mark.dali
@pytest.mark.parametrize("world", [1, 2])
def test_dali_training_streams_each_record_once_within_the_limit(served, tmp_path, world):
    """Eight shards through a cache with room for three per rank: every record exactly once
    per epoch (the ranks together), the same records (pixels identified by their colour) and
    labels as the local DALI pipeline, and the cache never over its limit."""
    local, url = served
    limit = world * (3 * _largest(local, "train") + 100)
    assert limit < _split_bytes(local, "train")
    opts = RemoteOptions(cache_dir=tmp_path / "c", cache_limit=limit)
    remote, here = [], []
    with cache_peak(tmp_path / "c", limit) as peak:
        for rank in range(world):
            kw = dict(train=True, drop_last=False, rank=rank, world_size=world, seed=4)
            for path, out, extra in ((url, remote, {"remote": opts}), (local, here, {})):
                ld = _dali(path, "train", **kw, **extra)
                for epoch in (2, 3):
                    ld.set_epoch(epoch)
                    ids, labels, _ = collect(ld)
                    out.append((epoch, Counter(zip(ids, labels, strict=True))))
                ld.close()
    everything = Counter((i, i % 3) for i in range(NUM_TRAIN))
    for got in (remote, here):
        for epoch in (2, 3):
            assert sum((c for e, c in got if e == epoch), Counter()) == everything
    assert 0 < peak[0] <= limit


@pytest.mark.dali
def test_dali_streamed_training_pixels_equal_local_in_file_order(served, tmp_path):
    """Without shuffling and with the validation geometry for training (Augment mode none),
    the streamed pipeline's batches are bit for bit the local pipeline's."""
    local, url = served
    opts = RemoteOptions(cache_dir=tmp_path / "c", cache_limit=3 * _largest(local, "train") + 9)
    kw = dict(train=True, shuffle=False, augment=Augment(mode="none"), drop_last=True)
    a = list(_dali(url, "train", remote=opts, **kw))
    b = list(_dali(local, "train", **kw))
    assert len(a) == len(b) == NUM_TRAIN // 4
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.fixture(scope="module")
def colour_served(nginx):
    """Images with a dark bar (tests.tinyrun), so that random crops and flips show."""
    from tests.tinyrun import colour_shards

    root = colour_shards(nginx.root / "colour", ["a", "b", "c"], 40, 5)
    yield root, f"{nginx.url}/colour/"
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.dali
@pytest.mark.parametrize("with_state", [True, False])
def test_dali_streamed_resume_mid_epoch_yields_exactly_the_rest(
    colour_served, tmp_path, with_state
):
    """state_dict() after k batches, then a new loader's load_state_dict(): the rest of the
    epoch and the next epoch are bit for bit those of an uninterrupted run (random crops and
    flips included). With the DALI state the restored pipeline's external source starts at
    batch k; without it the loader runs and drops the first k batches."""
    local, url = colour_served
    opts = RemoteOptions(cache_dir=tmp_path / "c", cache_limit=3 * _largest(local, "train") + 9)
    kw = dict(train=True, drop_last=True, seed=5, epochs=2, remote=opts)

    def epoch(ld, e):
        ld.set_epoch(e)
        return [(x.clone(), y.clone()) for x, y in ld]

    whole = _dali(url, "train", **kw)
    full, nxt = epoch(whole, 0), epoch(whole, 1)
    whole.close()
    assert len(full) == 10
    k = 4
    first = _dali(url, "train", **kw)
    first.set_epoch(0)
    it = iter(first)
    head = [next(it) for _ in range(k)]
    state = first.state_dict()
    del it
    first.close()
    assert state["batch"] == k and "dali" in state
    if not with_state:
        del state["dali"]
    second = _dali(url, "train", **kw)
    second.load_state_dict(state)
    rest = [(x.clone(), y.clone()) for x, y in second]
    after = epoch(second, 1)
    second.close()
    for got, want in ((head, full[:k]), (rest, full[k:]), (after, nxt)):
        assert len(got) == len(want)
        for (xa, ya), (xb, yb) in zip(got, want, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.dali
def test_dali_stream_error_is_the_remote_error(served, tmp_path, nginx):
    """A shard that vanished from the server after the loader was made: the pass raises the
    remote error naming the URL (from the feeder or the read, through DALI)."""
    local, url = served
    copy = nginx.root / "vanish"
    shutil.copytree(local, copy)
    opts = RemoteOptions(cache_dir=tmp_path / "c", cache_limit=10**8)
    ld = _dali(f"{nginx.url}/vanish/", "val", remote=opts)
    (copy / "val-00002-of-00006.tfrecord").unlink()
    with pytest.raises(Exception, match="val-00002-of-00006.tfrecord"):
        collect(ld)
    shutil.rmtree(copy, ignore_errors=True)


def _cached(directory, split):
    return sorted(p.name for p in directory.rglob(f"{split}-*.tfrecord"))


def _backend_kw(backend):
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
        return {"backend": "dali", "device": "cpu", "num_workers": 1}
    return {"backend": "torch", "num_workers": 0}


BACKENDS = ["torch", pytest.param("dali", marks=pytest.mark.dali)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_pass_left_midway_then_close_pins_nothing(served, tmp_path, backend):
    """A pass abandoned after one batch (a stop request) and close(): every cached shard can
    be evicted again, so a later loader on the same cache (a resume in the same process) finds
    room."""
    local, url = served
    limit = 3 * _largest(local, "train") + 100
    opts = RemoteOptions(cache_dir=tmp_path / "c", cache_limit=limit)
    kw = _backend_kw(backend)
    ld = _loader(url, "train", remote=opts, train=True, **kw)
    it = iter(ld)
    next(it)
    ld.close()
    cache = ShardCache.create(tmp_path / "c", limit)
    cached = list((tmp_path / "c").rglob("train-*.tfrecord"))
    assert cached and all(cache._evict(p) for p in cached)
    del it


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_mid_epoch_resume_fetches_only_the_shards_still_to_read(served, tmp_path, backend):
    """Resumed at batch 4 of an unshuffled epoch (batches of 4, shards of 4 records): the
    loader downloads shards 4.. only, and yields records 16.. ."""
    local, url = served
    kw = dict(train=True, shuffle=False, drop_last=False, **_backend_kw(backend))
    first = _loader(url, "train", remote=RemoteOptions(tmp_path / "a", 10**8), **kw)
    it = iter(first)
    for _ in range(4):
        next(it)
    state = first.state_dict()
    del it
    first.close()
    ld = _loader(url, "train", remote=RemoteOptions(tmp_path / "b", 10**8), **kw)
    ld.load_state_dict(state)
    ids = collect(ld)[0]
    ld.close()
    assert ids == list(range(16, NUM_TRAIN))
    assert _cached(tmp_path / "b", "train") == [
        f"train-{i:05d}-of-00008.tfrecord" for i in (4, 5, 6, 7)
    ]


@pytest.mark.dali
def test_dali_streams_from_s3(served, moto_s3, tmp_path):
    """The same over s3:// (moto in server mode, s3fs): training through a cache of three of
    eight shards reads every record once; validation equals the local pipeline's batches."""
    from remote_servers import upload_dir

    local, _ = served
    upload_dir(local, "s3://recordkit-test/loaders")
    url = "s3://recordkit-test/loaders/"
    limit = 3 * _largest(local, "train") + 100
    opts = RemoteOptions(cache_dir=tmp_path / "c", cache_limit=limit)
    with cache_peak(tmp_path / "c", limit) as peak:
        ids, labels, _ = collect(_dali(url, "train", remote=opts, train=True, drop_last=False))
        val = collect(_dali(url, "val", remote=opts))
    assert sorted(zip(ids, labels, strict=True)) == [(i, i % 3) for i in range(NUM_TRAIN)]
    assert val == collect(_dali(local, "val"))
    assert 0 < peak[0] <= limit
