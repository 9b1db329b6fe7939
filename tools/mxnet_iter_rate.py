"""MXNet ``ImageRecordIter`` throughput on a ``.rec`` file (run by ``tools/bench_loader.py``).

Runs under MXNet's own Python (e.g. ``/work/mxvenv/bin/python``, mxnet 1.9.1); imports nothing
from recordkit. The training transform matches the bench's equal-work case: random resized
crop (area ``0.08-1``, aspect ``3/4-4/3``), mirror, ``S x S``, ImageNet mean/std, float32 NCHW,
``ctx='cpu'`` so that ``preprocess_threads`` decoding threads run (with the default
``ctx='gpu'`` it uses ``max(nprocs / 2 - 1, 1)``); set ``OMP_NUM_THREADS`` to the same count.

Times, like the bench's ``run``: ``steady`` = epoch 0 after ``--warmup`` batches to its last
full batch; ``epochs`` = epochs ``1..E`` whole (``reset()`` included; every record counted
once per epoch, the real images of the last, partial batch too). CPU seconds are the whole process's
(``time.process_time``: every thread), so ``cpu_us_per_image`` is what one image costs in CPU.
Prints one JSON object.

    OMP_NUM_THREADS=2 python tools/mxnet_iter_rate.py --rec data.rec --idx data.idx --threads 2
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rec", required=True)
    ap.add_argument("--idx", required=True)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument(
        "--inter-method",
        type=int,
        default=1,
        help="OpenCV interpolation: 1 bilinear (MXNet's default), 2 bicubic, 3 area",
    )
    a = ap.parse_args()
    import mxnet as mx

    s = a.image_size
    it = mx.io.ImageRecordIter(
        path_imgrec=a.rec,
        path_imgidx=a.idx,
        data_shape=(3, s, s),
        batch_size=a.batch_size,
        shuffle=True,
        seed=0,
        random_resized_crop=True,
        min_random_area=0.08,
        max_random_area=1.0,
        min_aspect_ratio=3 / 4,
        max_aspect_ratio=4 / 3,
        rand_mirror=True,
        inter_method=a.inter_method,
        mean_r=123.675,
        mean_g=116.28,
        mean_b=103.53,
        std_r=58.395,
        std_g=57.12,
        std_b=57.375,
        preprocess_threads=a.threads,
        round_batch=False,
        ctx="cpu",
        dtype="float32",
    )

    with open(a.idx) as f:
        records = sum(1 for line in f if line.strip())
    full = records // a.batch_size

    def wait(batch: object) -> None:
        batch.data[0].wait_to_read()  # type: ignore[attr-defined]

    # With round_batch=False the last batch holds records % batch real images; the rest of it
    # is left over from the batch before (checked: neither decoded nor counted in ``pad``).
    images = 0
    start, cpu0 = time.perf_counter(), time.process_time()
    for seen, batch in enumerate(it, 1):
        wait(batch)
        if seen == a.warmup:
            start, cpu0 = time.perf_counter(), time.process_time()
        elif seen > a.warmup:
            images += a.batch_size
        if seen == full:  # the steady window ends with the last full batch, as drop_last
            break
    steady = (images, time.perf_counter() - start, time.process_time() - cpu0)
    images = 0
    start, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(a.epochs):
        it.reset()
        left = records
        for batch in it:
            wait(batch)
            images += min(a.batch_size, left)
            left -= min(a.batch_size, left)
    epochs = (images, time.perf_counter() - start, time.process_time() - cpu0)
    out = {"mxnet": mx.__version__, "batch_shape": list(batch.data[0].shape)}
    for name, (n, wall, cpu) in (("steady", steady), ("epoch", epochs)):
        out[name] = {"images": n, "seconds": wall, "cpu_seconds": cpu}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
