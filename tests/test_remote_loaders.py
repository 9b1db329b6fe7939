"""make_loader on a split served by nginx (and in s3:// / gs:// buckets): the same pixels and
labels as the local split, every training record once per epoch, the cache under its limit;
DALI reads the cache."""

from __future__ import annotations

import shutil
import threading

import pytest
from conftest import write_shards
from test_loaders import NUM_TRAIN, NUM_VAL, SIZE, collect, png_record

from recordkit.loaders import make_loader
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


@pytest.mark.dali
def test_dali_reads_the_split_from_the_cache(served, tmp_path):
    pytest.importorskip("nvidia.dali")
    local, url = served
    opts = RemoteOptions(cache_dir=tmp_path / "c", cache_limit=10**8)
    ld = _loader(url, "val", backend="dali", device="cpu", num_workers=1, remote=opts)
    assert collect(ld) == collect(_loader(local, "val", backend="dali", num_workers=1))
    assert len(list((tmp_path / "c").rglob("val-*.tfrecord"))) == len(
        list(local.glob("val-*.tfrecord"))
    )
