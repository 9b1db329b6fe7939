"""Our shards read by third-party readers (DALI, the ``tfrecord`` package), and theirs by us.

DESIGN.md contracts 1 and 3. The ``tfrecord`` package runs in a subprocess with its torch
module stubbed out (``import tfrecord`` imports torch, seconds of start-up). Its
``example_pb2`` registers the file name ``example.proto``; recordkit's registers
``recordkit/format/example.proto`` so both load into one process
(``test_tfrecord_and_recordkit_coexist``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import image_bytes, make_record, read_idx, write_shards

import recordkit
from recordkit import ShardReader

SIZES = [5, 7, 4]  # uneven shards; 16 records in all
N = sum(SIZES)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Three uneven train shards of single-label records; record 1 has an empty image."""
    root = tmp_path_factory.mktemp("interop")
    recs = [make_record(i) for i in range(N)]
    recs[1] = make_record(1, image=b"")
    return write_shards(root, {"train": recs}, shard_sizes={"train": SIZES})


@pytest.fixture(scope="module")
def multi_label_dataset(tmp_path_factory) -> Path:
    """Like ``dataset``, but every odd record has three labels (DALI's FixedLen would not do)."""
    root = tmp_path_factory.mktemp("interop-multi")
    recs = [make_record(i, labels=(i % 3, 10 + i, 20 + i) if i % 2 else i % 3) for i in range(N)]
    recs[2] = make_record(2, image=b"")
    return write_shards(root, {"train": recs}, shard_sizes={"train": SIZES})


def _shard_paths(root: Path) -> list[Path]:
    return [root / s.file for s in recordkit.read_manifest(root).splits["train"].shards]


def _expected(root: Path) -> list[recordkit.Record]:
    return list(recordkit.open(root)["train"])


# --------------------------------------------------------------------------------------------
# DALI: fn.readers.tfrecord over our shards with our .idx files


def _dali_partition(n: int, shard_id: int, num_shards: int) -> range:
    # DALI's Reader::start_index: size * shard_id / shard_num, in integer arithmetic.
    return range(n * shard_id // num_shards, n * (shard_id + 1) // num_shards)


@pytest.mark.dali
@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_dali_reads_every_record_once(dataset, batch_size):
    pytest.importorskip("nvidia.dali")
    import nvidia.dali.fn as fn
    import nvidia.dali.tfrecord as tfrec
    from nvidia.dali import Pipeline

    paths = _shard_paths(dataset)
    expected = _expected(dataset)
    num_shards = 3
    seen: list[tuple[bytes, int]] = []
    for shard_id in range(num_shards):
        pipe = Pipeline(batch_size=batch_size, num_threads=1, device_id=None, seed=1)
        with pipe:
            out = fn.readers.tfrecord(
                path=[str(p) for p in paths],
                index_path=[str(p.with_suffix(".idx")) for p in paths],
                features={
                    "image/encoded": tfrec.FixedLenFeature((), tfrec.string, ""),
                    "image/class/label": tfrec.FixedLenFeature([1], tfrec.int64, -1),
                },
                shard_id=shard_id,
                num_shards=num_shards,
                random_shuffle=False,
                pad_last_batch=True,
                name="Reader",
            )
            pipe.set_outputs(out["image/encoded"], out["image/class/label"])
        pipe.build()
        meta = pipe.reader_meta("Reader")
        assert meta["epoch_size"] == N
        # with pad_last_batch, epoch_size() is not the record count but the padded size
        padded = num_shards * math.ceil(N / num_shards)  # 18, whatever the batch size
        assert pipe.epoch_size("Reader") == meta["epoch_size_padded"] == padded
        assert (meta["shard_id"], meta["number_of_shards"]) == (shard_id, num_shards)

        want = _dali_partition(N, shard_id, num_shards)
        assert want == recordkit.partition(N, shard_id, num_shards)
        got: list[tuple[bytes, int]] = []
        for _ in range(math.ceil(len(want) / batch_size)):
            images, labels = pipe.run()
            for k in range(len(images)):
                got.append((bytes(images.at(k)), int(labels.at(k)[0])))
        # the epoch of this shard, then DALI's padding: copies of the shard's last sample
        epoch, padding = got[: len(want)], got[len(want) :]
        assert epoch == [(expected[i].image, expected[i].label) for i in want]
        assert padding == [epoch[-1]] * len(padding)
        seen.extend(epoch)
        del pipe
    assert seen == [(image_bytes(i) if i != 1 else b"", i % 3) for i in range(N)]


# --------------------------------------------------------------------------------------------
# The tfrecord PyPI package, in a subprocess


# tfrecord/__init__.py imports its torch helpers (and so torch: seconds); the reader, writer
# and tfrecord2idx modules tested here do not need them.
_NO_TORCH = (
    "import sys, types; sys.modules['tfrecord.torch'] = types.ModuleType('tfrecord.torch')\n"
)

_TFRECORD_SCRIPT = _NO_TORCH + textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from tfrecord.reader import tfrecord_loader
    from tfrecord.tools.tfrecord2idx import create_index
    from tfrecord.writer import TFRecordWriter

    args = json.loads(sys.argv[1])
    desc = {"image/encoded": "byte", "image/class/label": "int"}

    def plain(ex):
        img = ex["image/encoded"]
        img = bytes(img) if not isinstance(img, np.ndarray) else [bytes(x) for x in img]
        return [img.hex() if isinstance(img, bytes) else [x.hex() for x in img],
                [int(x) for x in ex["image/class/label"]]]

    out = {"indexed": [], "sharded": [], "no_index": []}
    for path in args["shards"]:
        idx = path[: -len(".tfrecord")] + ".idx"
        out["indexed"].append([plain(e) for e in tfrecord_loader(path, idx, desc, shard=(0, 1))])
        out["no_index"].append([plain(e) for e in tfrecord_loader(path, None, desc)])
        out["sharded"].append(
            [[plain(e) for e in tfrecord_loader(path, idx, desc, shard=(k, 3))] for k in range(3)]
        )

    foreign = args["foreign"]
    w = TFRecordWriter(foreign)
    for i in range(6):
        w.write({
            "image/encoded": (("foreign%d" % i).encode() * (i + 1), "byte"),
            "image/class/label": ([i % 4] if i != 5 else [1, 2], "int"),
            "image/height": (10 + i, "int"),
            "extra/score": ([0.5 * i], "float"),
        })
    w.close()
    create_index(foreign, args["foreign_idx"])
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def tfrecord_run(multi_label_dataset, tmp_path_factory) -> dict:
    """Run the tfrecord package on our shards and have it write a file of its own."""
    if importlib.util.find_spec("tfrecord") is None:
        pytest.skip("the tfrecord package is not installed")
    out_dir = tmp_path_factory.mktemp("foreign")
    args = {
        "shards": [str(p) for p in _shard_paths(multi_label_dataset)],
        "foreign": str(out_dir / "foreign.tfrecord"),
        "foreign_idx": str(out_dir / "foreign.tfindex"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _TFRECORD_SCRIPT, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["args"] = args
    return result


def _ours_per_shard(root: Path) -> list[list[list]]:
    out = []
    for path in _shard_paths(root):
        out.append([[r.image.hex(), list(r.labels)] for r in ShardReader(path)])
    return out


def test_tfrecord_package_reads_our_shards(tfrecord_run, multi_label_dataset):
    ours = _ours_per_shard(multi_label_dataset)
    assert [len(s) for s in ours] == SIZES
    assert tfrecord_run["indexed"] == ours
    assert tfrecord_run["no_index"] == ours
    assert any(len(labels) == 3 for shard in ours for _, labels in shard)  # multi-label seen
    # its (index, count) sharding over our .idx uses the same formula as DALI and recordkit
    for shard, parts in zip(ours, tfrecord_run["sharded"], strict=True):
        assert parts == [
            [shard[i] for i in recordkit.partition(len(shard), k, 3)] for k in range(3)
        ]


def test_we_read_a_tfrecord_package_file(tfrecord_run):
    foreign = Path(tfrecord_run["args"]["foreign"])
    their_idx = read_idx(Path(tfrecord_run["args"]["foreign_idx"]))
    assert recordkit.build_index(foreign) == their_idx
    assert len(their_idx) == 6
    reader = ShardReader(foreign, index_path=tfrecord_run["args"]["foreign_idx"])
    recs = [reader[i] for i in range(6)]
    assert recs == list(ShardReader(foreign))  # sequential (no index) agrees
    for i, rec in enumerate(recs):
        assert rec.image == f"foreign{i}".encode() * (i + 1)
        assert rec.labels == ((i % 4,) if i != 5 else (1, 2))
        assert rec.height == 10 + i
        # features the writer did not set take the Record defaults
        assert (rec.filename, rec.index, rec.format, rec.text) == ("", -1, "jpeg", None)
    rep = recordkit.verify(foreign)
    assert rep.ok and rep.records == 6, rep.problems


@pytest.mark.parametrize("order", ["tfrecord first", "recordkit first"])
def test_tfrecord_and_recordkit_coexist(order):
    if importlib.util.find_spec("tfrecord") is None:
        pytest.skip("the tfrecord package is not installed")
    mods = ["tfrecord.reader", "recordkit"]
    if order == "recordkit first":
        mods.reverse()
    code = _NO_TORCH + "; ".join(f"import {m}" for m in mods)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr.strip().splitlines()[-1]
