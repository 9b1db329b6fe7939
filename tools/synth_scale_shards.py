"""Write a large shard directory fast by recycling the images of a small packed one.

``tools/bench_scale.py`` packs its 1.28 M-image tree with ``recordkit pack`` (10+ minutes on two
cores). The ``open`` and ``first_batch`` steps only need shards of that shape, so this script
writes them directly: it reads the JPEG payloads of an existing shard directory (e.g. the 100 k
one bench_scale packed) and writes ``--records`` records cycling through them, each with its own
label (``k % classes``), file name and index, through :class:`recordkit.ShardWriter` and the
manifest module, split ``--train-ratio`` / rest into ``train`` and ``val`` and cut into shards of
about ``--shard-bytes`` like ``pack`` (1.28 M records: ~30 s). Then::

    python tools/synth_scale_shards.py --source WORK/n100000/shards \
        --records 1281000 --out WORK/n1281000/shards
    python tools/bench_scale.py --work WORK --sizes 10000,1281000 --steps open,first_batch

bench_scale skips ``pack`` for a size whose ``shards/recordkit.json`` exists; it still makes
(or reuses) that size's image tree and ``.lst`` files first. Prints one JSON line: records,
shards per split, bytes, seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from recordkit import Manifest, Record, ShardEntry, ShardWriter, SplitEntry, write_manifest
from recordkit import open as open_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, required=True, help="a packed shard directory")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--records", type=int, required=True)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--train-ratio", type=float, default=0.95)
    ap.add_argument("--shard-bytes", type=int, default=128 * 1024 * 1024)
    args = ap.parse_args()
    t0 = time.perf_counter()
    src = open_dataset(args.source)
    images = [r.image for name in src for r in src[name]]
    mean = sum(map(len, images)) / len(images) + 64  # + Example fields and framing
    n_train = round(args.records * args.train_ratio)
    counts = {"train": n_train, "val": args.records - n_train}
    args.out.mkdir(parents=True, exist_ok=True)
    splits: dict[str, SplitEntry] = {}
    k = 0
    total = 0
    for split, n in counts.items():
        shards = max(1, math.ceil(n * mean / args.shard_bytes))
        entries = []
        for s in range(shards):
            path = args.out / f"{split}-{s:05d}-of-{shards:05d}.tfrecord"
            with ShardWriter(path, fsync=False) as w:
                for _ in range(n * s // shards, n * (s + 1) // shards):
                    label = k % args.classes
                    w.write(
                        Record(
                            image=images[k % len(images)],
                            labels=label,
                            filename=f"n{label:08d}/n{label:08d}_{k}.png",
                            index=k,
                        )
                    )
                    k += 1
            info = w.info
            assert info is not None
            total += info.bytes
            entries.append(
                ShardEntry(path.name, info.index_path.name, info.records, info.bytes, info.sha256)
            )
        splits[split] = SplitEntry(tuple(entries))
    classes = [f"n{c:08d}" for c in range(args.classes)]
    write_manifest(Manifest(classes=classes, splits=splits), args.out)
    print(
        json.dumps(
            {
                "records": k,
                "shards": {s: len(e.shards) for s, e in splits.items()},
                "bytes": total,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
