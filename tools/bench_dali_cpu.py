"""What each stage and knob of the DALI backend's CPU training pipeline costs (raw pipe.run()).

Runs pipelines over a recordkit shard directory (e.g. the one ``bench_loader.py --case rrc480``
packs, or any ``recordkit pack --resize 480`` output), batch 64, ``device_id=None``, and
reports images/s and CPU µs per image (``time.process_time``: DALI's threads are this
process's) for:

- stages, each adding one operator: ``read`` (readers.tfrecord), ``decode_full``
  (decoders.image), ``decode_roi`` (decoders.image_random_crop: only the crop's window),
  ``resize_linear`` / ``resize_antialias`` (fn.resize to 224 x 224), ``cmn_float``
  (crop_mirror_normalize to float32 CHW, the backend's graph), ``flip_uint8`` (fn.flip
  instead: uint8 HWC out, normalization left to the consumer);
- knobs on the full graph (antialiased): ``num_threads``, ``prefetch_queue_depth`` and the
  reader's / decoder's ``bytes_per_sample_hint``.

    python tools/bench_dali_cpu.py SHARDS [--threads 2] [--batches 15] [--repeats 2]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]
STAGES = (
    "read",
    "decode_full",
    "decode_roi",
    "resize_linear",
    "resize_antialias",
    "cmn_float",
    "flip_uint8",
)


def build(shards: Path, stage: str, threads: int, prefetch: int, hint: int) -> Any:
    import nvidia.dali.fn as fn
    import nvidia.dali.tfrecord as tfrec
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    files = sorted(str(p) for p in shards.glob("train-*.tfrecord"))
    hint_kw = {"bytes_per_sample_hint": hint} if hint else {}

    @pipeline_def
    def pipe() -> Any:
        inputs = fn.readers.tfrecord(
            path=files,
            index_path=[f[: -len(".tfrecord")] + ".idx" for f in files],
            features={
                "image/encoded": tfrec.FixedLenFeature((), tfrec.string, ""),
                "image/class/label": tfrec.VarLenFeature(tfrec.int64, -1),
            },
            random_shuffle=True,
            initial_fill=1024,
            **hint_kw,
        )
        jpegs = inputs["image/encoded"]
        if stage == "read":
            return jpegs
        if stage == "decode_full":
            return fn.decoders.image(jpegs, device="cpu", output_type=types.RGB, **hint_kw)
        images = fn.decoders.image_random_crop(
            jpegs,
            device="cpu",
            output_type=types.RGB,
            random_area=[0.08, 1.0],
            random_aspect_ratio=[3 / 4, 4 / 3],
            num_attempts=100,
            **hint_kw,
        )
        if stage == "decode_roi":
            return images
        images = fn.resize(
            images,
            resize_x=224,
            resize_y=224,
            interp_type=types.INTERP_LINEAR,
            antialias=stage != "resize_linear",
        )
        if stage.startswith("resize"):
            return images
        mirror = fn.random.coin_flip(probability=0.5)
        if stage == "flip_uint8":
            return fn.flip(images, horizontal=mirror)
        return fn.crop_mirror_normalize(
            images, dtype=types.FLOAT, output_layout="CHW", mean=MEAN, std=STD, mirror=mirror
        )

    p = pipe(
        batch_size=64, num_threads=threads, device_id=None, seed=0, prefetch_queue_depth=prefetch
    )
    p.build()
    return p


def measure(shards: Path, stage: str, threads: int, prefetch: int, hint: int, n: int) -> Any:
    p = build(shards, stage, threads, prefetch, hint)
    for _ in range(3):
        p.run()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        p.run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    del p
    return 64 * n / wall, 1e6 * cpu / (64 * n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("shards", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    load = [round(x, 2) for x in os.getloadavg()]
    t, hint = a.threads, 600_000  # > a 224x224 float CHW sample and a 640x480 RGB decode
    cases = [(s, t, 2, 0) for s in STAGES]
    cases += [("cmn_float", k, 2, 0) for k in (1, 3, 4) if k != t]
    cases += [("cmn_float", t, q, 0) for q in (1, 4)]
    cases += [("cmn_float", t, 2, hint)]
    runs: dict[str, list[Any]] = {}
    for _ in range(a.repeats):  # interleaved
        for stage, threads, prefetch, h in cases:
            key = f"{stage} threads={threads} prefetch={prefetch} hint={h}"
            runs.setdefault(key, []).append(
                measure(a.shards, stage, threads, prefetch, h, a.batches)
            )
    results = {
        k: {
            "images_per_sec": round(statistics.median(r[0] for r in v)),
            "cpu_us_per_image": round(statistics.median(r[1] for r in v)),
            "runs": [[round(x) for x in r] for r in v],
        }
        for k, v in runs.items()
    }
    print(
        json.dumps(
            {
                "batch_size": 64,
                "batches": a.batches,
                "cpus": os.cpu_count(),
                "loadavg_before": load,
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
