"""Per-sample cost of the training transforms on the torch backend, and of defining a DALI
pipeline with an auto-augment policy.

``--torch``: one thread runs ``recordkit.loaders.decode.TrainDecode`` (decode + crop + flip +
policy, what a DataLoader worker does per sample) on a ``--size`` px photo-like PNG for each
setting; microseconds per sample, median of ``--repeats`` runs of ``--n`` samples.
``--dali``: seconds to define + build one CPU training pipeline (``build_pipeline``) per
policy; DALI traces a policy's conditionals with AutoGraph in Python, once per pipeline, and
the training loader builds one pipeline per epoch.

    flock /work/bench.lock python tools/bench_augment.py --torch --size 32
    flock /work/bench.lock python tools/bench_augment.py --dali --size 32
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_PC = {"mode": "pad-crop", "val_resize_ratio": 1.0}
SETTINGS: dict[str, dict[str, object]] = {
    "rrc": {},
    "pad-crop": _PC,
    "pad-crop+randaugment": {**_PC, "auto_augment": "randaugment"},
    "pad-crop+trivialaugment": {**_PC, "auto_augment": "trivialaugment"},
    "pad-crop+autoaugment": {**_PC, "auto_augment": "autoaugment"},
}  # fmt: skip


def _record(size: int):  # type: ignore[no-untyped-def]
    from PIL import Image

    from recordkit import Record

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size]
    img = (np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], -1)).astype(
        np.int32
    ) + rng.integers(-20, 20, (size, size, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "PNG")
    return Record(
        image=buf.getvalue(), labels=(0,), filename="a.png", index=0, format="png",
        height=size, width=size, channels=3,
    )  # fmt: skip


def bench_torch(size: int, n: int, repeats: int) -> dict[str, float]:
    import torch

    from recordkit.loaders import Augment
    from recordkit.loaders.decode import TrainDecode

    torch.set_num_threads(1)
    rec = _record(size)
    out = {}
    for name, kw in SETTINGS.items():
        decode = TrainDecode(size, Augment(**kw))  # type: ignore[arg-type]
        for s in range(20):
            decode(rec, s)
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            for s in range(n):
                decode(rec, s)
            runs.append((time.perf_counter() - start) / n * 1e6)
        out[name] = round(statistics.median(runs), 1)
    return out


def bench_dali(size: int) -> dict[str, float]:
    from recordkit.loaders import Augment
    from recordkit.loaders.dali import build_pipeline
    from tests.conftest import write_shards

    with tempfile.TemporaryDirectory() as tmp:
        root = write_shards(Path(tmp), {"train": [_record(size)] * 8}, records_per_shard=8)
        files = sorted(str(p) for p in root.glob("train-*.tfrecord"))
        out = {}
        for name, kw in SETTINGS.items():
            start = time.perf_counter()
            build_pipeline(
                files, [f[: -len(".tfrecord")] + ".idx" for f in files], batch_size=8,
                image_size=size, train=True, augment=Augment(**kw), shard_id=0, num_shards=1,
                shuffle=False, seed=1, num_threads=1, device_id=None,
            )  # type: ignore[arg-type]  # fmt: skip
            out[name] = round(time.perf_counter() - start, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torch", action="store_true", help="per-sample cost, torch backend")
    ap.add_argument("--dali", action="store_true", help="pipeline definition time, DALI")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    result: dict[str, object] = {"size": a.size, "load_before": os.getloadavg()[0]}
    if a.torch or not a.dali:
        result["torch_us_per_sample"] = bench_torch(a.size, a.n, a.repeats)
    if a.dali:
        result["dali_pipeline_build_s"] = bench_dali(a.size)
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
