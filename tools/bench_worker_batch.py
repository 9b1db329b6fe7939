"""CPU a torch-loader worker spends per training sample besides the JPEG decode.

One process stands in for a DataLoader worker: it builds the loader as ``make_loader(...,
backend="torch", augment=Augment(train_antialias=False))`` does, replaces the window decode
(``decode_window``) by a copy of its precomputed result, and times batches of
``dataset[(index, seed)]`` x B + the loader's collate, with the collate told it runs in a
worker (so batches go to shared memory as they do there). CPU time of this thread
(``time.thread_time``), per batch the least of ``--passes`` passes: what is left is record
read + parse, JPEG header, crop draw, resize, flip and collate. With ``--baseline CHECKOUT``
the same is measured with recordkit imported from another checkout, alternating, each run in
a fresh process. Also times copying B samples into a fresh shared-memory block (what
``default_collate`` does in a worker) vs into one already mapped. Prints one JSON object.

    python tools/bench_worker_batch.py /tmp/lp/packs/shards --baseline /tmp/base --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def one(a: argparse.Namespace) -> dict[str, Any]:
    """This process's measurement, recordkit imported from ``a.code`` or this checkout."""
    sys.path.insert(0, str(Path(a.code).resolve()) if a.code else str(ROOT))
    import torch
    import torch.utils.data as tud

    torch.set_num_threads(1)
    import recordkit
    import recordkit.loaders.torch_loader as tl
    from recordkit.loaders import Augment, make_loader
    from recordkit.loaders import decode as dmod

    ld = make_loader(
        a.shards, "train", a.batch_size, 224, backend="torch", num_workers=2, seed=0, rank=0,
        world_size=1, augment=Augment(train_antialias=False),
    )  # fmt: skip
    dataset, collate = ld.dataset, ld.loader.collate_fn
    real, done = dmod.decode_window, {}
    codec: list[int] = []

    def window(data: bytes, box: Any) -> Any:
        key = (len(data), data[-32:], box)
        if key not in done:
            t = time.thread_time_ns()
            done[key] = real(data, box)
            codec.append(time.thread_time_ns() - t)
        return None if done[key] is None else done[key].copy()  # a fresh array, as decoded

    dmod.decode_window = window
    in_worker = object()
    tl.get_worker_info = lambda: in_worker  # type: ignore[attr-defined]
    tud.get_worker_info = tl.get_worker_info  # default_collate: fresh shared memory

    def batch(indices: range) -> None:
        out = collate([dataset[(i, i)] for i in indices])
        if len(out) > 3 and out[3] is not None:  # a reused block: the main process's release
            out[3].release()

    n = min(len(dataset), a.batches * a.batch_size) // a.batch_size * a.batch_size
    batches = [range(b, b + a.batch_size) for b in range(0, n, a.batch_size)]
    for idx in batches:
        batch(idx)
    best = [float("inf")] * len(batches)
    for _ in range(a.passes):
        for k, idx in enumerate(batches):
            t = time.thread_time_ns()
            batch(idx)
            best[k] = min(best[k], time.thread_time_ns() - t)
    ld.close()
    return {
        "recordkit": str(Path(recordkit.__file__).parent.parent),
        "non_codec_us_per_sample": round(sum(best) / n / 1e3, 1),
        "window_decode_us_per_sample": round(statistics.median(codec) / 1e3, 1),
    }


def copy_costs(batch_size: int, passes: int) -> dict[str, float]:
    """ms to copy ``batch_size`` 224 x 224 x 3 samples into a fresh shared-memory block (as
    ``default_collate`` in a worker) and into one already mapped; least of ``passes``."""
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    samples = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(batch_size)]
    shape = (batch_size, 224, 224, 3)
    mapped = np.zeros(shape, np.uint8)

    def fresh() -> None:
        storage = torch.UntypedStorage._new_shared(int(np.prod(shape)))
        out = torch.empty(0, dtype=torch.uint8).set_(storage).view(shape).numpy()
        for i, s in enumerate(samples):
            out[i] = s

    def reused() -> None:
        for i, s in enumerate(samples):
            mapped[i] = s

    out = {}
    for name, fn in (("fresh_shared_block_ms", fresh), ("mapped_block_ms", reused)):
        fn()
        times = []
        for _ in range(passes):
            t = time.thread_time_ns()
            fn()
            times.append(time.thread_time_ns() - t)
        out[name] = round(min(times) / 1e6, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "shards", help="a shard directory with a train split (e.g. bench_loader's rrc480 pack)"
    )
    ap.add_argument("--baseline", default=None, help="another recordkit checkout to compare")
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per checkout")
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--code", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a)))
        return
    load_before = [round(x, 2) for x in os.getloadavg()]
    codes = {"this": None, **({"base": a.baseline} if a.baseline else {})}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in codes}
    for _ in range(a.repeats):
        for name, code in codes.items():
            cmd = [sys.executable, __file__, a.shards, "--one", "--batches", str(a.batches)]
            cmd += ["--batch-size", str(a.batch_size), "--passes", str(a.passes)]
            if code:
                cmd += ["--code", code]
            res = subprocess.run(cmd, check=True, capture_output=True, text=True)
            runs[name].append(json.loads(res.stdout.strip().splitlines()[-1]))
    out: dict[str, Any] = {"load_before": load_before}
    for name, rs in runs.items():
        vals = [r["non_codec_us_per_sample"] for r in rs]
        out[name] = {
            "recordkit": rs[0]["recordkit"],
            "non_codec_us_per_sample": statistics.median(vals),
            "runs": vals,
            "window_decode_us_per_sample": statistics.median(
                r["window_decode_us_per_sample"] for r in rs
            ),
        }
    if a.baseline:
        out["base_over_this"] = [
            round(b["non_codec_us_per_sample"] / t["non_codec_us_per_sample"], 2)
            for t, b in zip(runs["this"], runs["base"], strict=True)
        ]
    out["copy"] = copy_costs(a.batch_size, a.passes * 2)
    out["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
