"""``recordkit.open``: splits across uneven shards, random access, partitioned iteration."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import make_record, write_shards

import recordkit
from recordkit import Dataset, Split

CLASSES = ["cat", "dog", "fox"]
SPLITS = {"train": 23, "val": 10, "test": 1}
SHARD_SIZES = {"train": [5, 5, 5, 5, 3], "val": [6, 1, 3], "test": [1]}


def _split_records(name: str) -> list[recordkit.Record]:
    start = {"train": 0, "val": 1000, "test": 2000}[name]
    return [make_record(start + i) for i in range(SPLITS[name])]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_shards(
        tmp_path_factory.mktemp("ds"),
        {name: _split_records(name) for name in SPLITS},
        classes=CLASSES,
        shard_sizes=SHARD_SIZES,
    )


@pytest.fixture(scope="module")
def ds(root) -> Dataset:
    return recordkit.open(root)


def test_classes_and_splits(ds, root):
    assert isinstance(ds, Dataset)
    assert ds.classes == CLASSES and ds.num_classes == 3
    assert list(ds.splits) == list(ds) == ["train", "val", "test"]
    assert len(ds) == 3 and "val" in ds
    assert {name: len(ds[name]) for name in ds} == SPLITS
    assert [p.name for p in ds["val"].files] == [
        "val-00000-of-00003.tfrecord",
        "val-00001-of-00003.tfrecord",
        "val-00002-of-00003.tfrecord",
    ]
    assert ds["val"].nbytes == sum(p.stat().st_size for p in ds["val"].files)
    assert ds.classes is not ds.manifest.classes  # a copy: callers cannot edit the manifest
    assert recordkit.open_dataset(root).classes == CLASSES
    assert "val=10" in repr(ds) and repr(ds["val"]) == "Split('val', records=10, shards=3)"


@pytest.mark.parametrize("name", list(SPLITS))
def test_random_access_every_record(ds, name):
    split = ds[name]
    want = _split_records(name)
    assert isinstance(split, Split)
    assert [split[i] for i in range(len(split))] == want
    assert [split[-k] for k in range(1, len(split) + 1)] == want[::-1]
    assert [split.read_bytes(i) for i in range(len(split))] == [
        recordkit.format.encode_example(r) for r in want
    ]
    assert list(split) == want
    for bad in (len(want), -len(want) - 1):
        with pytest.raises(IndexError):
            split[bad]


def test_slices(ds):
    val, want = ds["val"], _split_records("val")
    for sl in (slice(None), slice(2, 8), slice(5, 7), slice(-3, None), slice(None, None, 3),
               slice(9, 0, -2), slice(4, 4), slice(100, 200)):  # fmt: skip
        assert val[sl] == want[sl], sl


def test_locate_across_uneven_shards(ds):
    val = ds["val"]
    assert [val.locate(i) for i in range(10)] == [(0, j) for j in range(6)] + [(1, 0)] + [
        (2, j) for j in range(3)
    ]
    assert val.locate(-1) == (2, 2)


def test_unknown_split(ds):
    with pytest.raises(KeyError) as ei:
        ds["validation"]
    msg = str(ei.value)
    assert "validation" in msg and "train, val, test" in msg


def _dali_start_index(n: int, shard_id: int, num_shards: int) -> int:
    # nvidia/dali/operators/reader/loader/loader.h: start_index(shard_id, shard_num, size)
    return n * shard_id // num_shards


@pytest.mark.parametrize("num_shards", range(1, 8))
def test_partition_covers_each_index_once(num_shards):
    for n in range(51):
        parts = [recordkit.partition(n, k, num_shards) for k in range(num_shards)]
        assert [i for p in parts for i in p] == list(range(n)), (n, num_shards)
        for k, p in enumerate(parts):
            assert p.step == 1
            assert p.start == _dali_start_index(n, k, num_shards)
            assert p.stop == _dali_start_index(n, k + 1, num_shards)
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(("shard_id", "num_shards"), [(0, 0), (-1, 2), (2, 2), (0, -1)])
def test_partition_rejects_bad_arguments(shard_id, num_shards):
    with pytest.raises(ValueError):
        recordkit.partition(10, shard_id, num_shards)


@pytest.mark.parametrize("name", list(SPLITS))
@pytest.mark.parametrize("num_shards", range(1, 6))
def test_partitioned_iteration_is_exactly_once(ds, name, num_shards):
    split = ds[name]
    want = _split_records(name)
    union: list[recordkit.Record] = []
    for k in range(num_shards):
        part = list(split.iter(k, num_shards))
        assert part == [want[i] for i in recordkit.partition(len(want), k, num_shards)]
        raw = list(split.iter_bytes(k, num_shards))
        assert raw == [recordkit.format.encode_example(r) for r in part]
        union.extend(part)
    assert union == want


@pytest.fixture
def with_empty_shards(tmp_path):
    recs = [make_record(i) for i in range(7)]
    return write_shards(
        tmp_path, {"train": recs}, classes=CLASSES, shard_sizes={"train": [0, 3, 0, 0, 4, 0]}
    )


def test_empty_shards_random_access(with_empty_shards):
    split = recordkit.open(with_empty_shards)["train"]
    assert len(split) == 7
    assert [split[i] for i in range(7)] == [make_record(i) for i in range(7)]
    assert recordkit.verify(with_empty_shards).ok
    # two partitions: [0, 3) is shard 1 alone and [3, 7) shard 4 alone
    assert list(split.iter(0, 2)) == [make_record(i) for i in range(3)]
    assert list(split.iter(1, 2)) == [make_record(i) for i in range(3, 7)]


@pytest.mark.parametrize("num_shards", [1, 3])  # a partition spans the empty shards 2 and 3
def test_empty_shards_iteration(with_empty_shards, num_shards):
    split = recordkit.open(with_empty_shards)["train"]
    union = [r for k in range(num_shards) for r in split.iter(k, num_shards)]
    assert union == [make_record(i) for i in range(7)]


def test_verify_a_good_dataset(root):
    rep = recordkit.verify(root)
    assert rep.ok, rep.problems
    assert rep.records == sum(SPLITS.values())
    assert rep.files == sum(len(s) for s in SHARD_SIZES.values())
    assert rep.warnings == []


def test_open_without_crc_check(root):
    split = recordkit.open(root, verify_crc=False)["train"]
    assert list(split) == _split_records("train")
    assert split.readers[0].verify_crc is False


def test_import_is_light():
    code = (
        "import sys, recordkit\n"
        "heavy = ['torch', 'numpy', 'PIL', 'cv2', 'nvidia.dali', 'torchvision', 'click']\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
