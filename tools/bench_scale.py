"""The cost curve of the data path from 10 k to 1.28 M tiny images: list, pack, open, first
batch, verify, inspect, with the time and peak RSS of each.

Usage::

    python tools/bench_scale.py --work /tmp/scale --sizes 10000,100000,1281000

For each size N the script generates (once, cached under ``--work``) an ImageNet-shaped tree of
N tiny images (``--classes`` folders of ``--image-px`` square RGB PNGs, CIFAR-like; their pixels
come from a pool of ``--pool`` distinct images), then runs each step as a fresh process, the way
a user would, and measures it with ``os.wait4`` (wall time, CPU time, peak RSS of that process):

* ``list``: ``recordkit list PREFIX ROOT --recursive --train-ratio 0.95``
* ``pack``: ``recordkit pack PREFIX ROOT --threads T`` (PNG → JPEG q95, no resize)
* ``open``: ``recordkit.open(shards)`` and ``len()`` of every split, in a fresh interpreter
* ``first_batch``: ``make_loader(shards, "train", backend=…, num_workers=W)`` and its first batch:
  time, and the main process's RSS growth over ``import recordkit, torch`` and the loader's
  modules (what is left is per-dataset state: the index above all); then each DataLoader
  worker's private dirty memory and the sum of their PSS (``/proc/PID/smaps_rollup``; pages
  shared with the parent after ``fork`` count in neither the private figure nor in full)
* ``verify`` / ``inspect``: the commands over the shards, with MB/s of shard data; with
  ``verify``, also ``sha256_bound``: ``hashlib.sha256`` over the same ``.tfrecord`` files in
  8 MiB blocks in a fresh process (verify's bound on a CPU without SHA instructions), and
  verify's wall time as a multiple of it

When only ``open``/``first_batch``/``verify``/``inspect`` are asked for and ``WORK/nN/shards``
already holds a manifest (e.g. from ``tools/synth_scale_shards.py``), no images are generated.

With ``--repeat R`` (and ``first_batch`` among the steps) the first batch is measured R times,
the sizes alternating in each round, and ``first_batch_rounds`` reports every round's times,
the ratio of the last size's time to the first size's in each round (e.g. 1.28 M over 10 k),
and the median and range of both: on a shared machine compare ratios within a round.

Prints one JSON object; per-item costs (µs per image or record) show whether each step is
linear in N. Steps can be chosen with ``--steps``; the pack output is cached too (reused when
its manifest exists) unless ``pack`` is among the steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

STEPS = ("list", "pack", "open", "first_batch", "verify", "inspect")

_SHA256 = r"""
import hashlib, json, sys, time
from pathlib import Path
t = time.perf_counter()
n = 0
for p in sorted(Path(sys.argv[1]).glob("*.tfrecord")):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while b := f.read(8 << 20):
            h.update(b)
            n += len(b)
print(json.dumps({"hashed_bytes": n, "hash_s": round(time.perf_counter() - t, 3)}))
"""

_FIRST_BATCH = r"""
import json, sys, time
def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
import recordkit, torch
import recordkit.loaders.torch_loader  # the loader's own imports (cv2, torchvision): ~190 MB
base = rss_mb()
t0 = time.perf_counter()
ds = recordkit.open(sys.argv[1])
n = len(ds["train"])
t_open = time.perf_counter() - t0
rss_open = rss_mb()
batch, px, backend, workers = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
loader = recordkit.make_loader(ds, "train", batch_size=batch, image_size=px, backend=backend,
                               num_workers=workers)
rss_loader = rss_mb()
images, labels = next(iter(loader))
t_first = time.perf_counter() - t0
rss_first = rss_mb()
def rollup(pid):  # a worker's private dirty pages and proportional share of shared ones, MB
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            kv = dict(line.split()[:2] for line in f)
        return float(kv["Private_Dirty:"]) / 1024, float(kv["Pss:"]) / 1024
    except (OSError, KeyError):
        return None
import multiprocessing
kids = [rollup(p.pid) for p in multiprocessing.active_children()]
kids = [k for k in kids if k is not None]
print(json.dumps({"records": n, "open_s": t_open, "first_batch_s": t_first,
                  "batch_shape": list(images.shape), "rss_base_mb": base,
                  "rss_after_open_mb": rss_open - base, "rss_after_loader_mb": rss_loader - base,
                  "rss_after_first_batch_mb": rss_first - base,
                  "worker_private_mb": [round(k[0], 1) for k in kids],
                  "worker_pss_sum_mb": round(sum(k[1] for k in kids), 1)}))
"""

_OPEN = r"""
import json, sys, time
t0 = time.perf_counter()
import recordkit
t1 = time.perf_counter()
ds = recordkit.open(sys.argv[1])
sizes = {name: len(split) for name, split in ds.items()}
print(json.dumps({"import_s": t1 - t0, "open_and_len_s": time.perf_counter() - t1,
                  "records": sizes}))
"""


def run_measured(cmd: list[str], *, capture: bool = False) -> dict:
    """Like :func:`run`, with the child's CPU seconds and peak RSS from ``os.wait4``."""
    t = time.perf_counter()
    out_f = subprocess.PIPE if capture else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out_f, stderr=subprocess.PIPE)
    # read the pipes before reaping so a chatty child cannot block; then wait4 for rusage
    out = proc.stdout.read() if capture else b""
    err = proc.stderr.read()
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err.decode()[-2000:]}")
    res = {
        "wall_s": round(wall, 3),
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
        "peak_rss_mb": round(ru.ru_maxrss / 1024, 1),
    }
    if capture:
        res["stdout"] = out.decode()
    return res


def generate(root: Path, n: int, classes: int, px: int, pool: int) -> float:
    """Write ``n`` tiny PNGs into ``classes`` folders under ``root`` (skipped when complete)."""
    done = root / ".complete"
    if done.exists() and done.read_text() == f"{n} {classes} {px} {pool}":
        return 0.0
    import cv2
    import numpy as np

    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    blobs = []
    yy, xx = np.mgrid[0:px, 0:px].astype(np.float32) / px
    for _ in range(pool):
        a, b, c = rng.uniform(0, 255, 3)
        img = np.stack([a * xx + (255 - a) * yy, b * yy, c * (1 - xx)], axis=-1)
        img += rng.normal(0, 12, img.shape)
        ok, enc = cv2.imencode(".png", np.clip(img, 0, 255).astype(np.uint8))
        assert ok
        blobs.append(enc.tobytes())
    per = -(-n // classes)
    k = 0
    for c in range(classes):
        d = root / f"n{c:08d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(min(per, n - k)):
            (d / f"n{c:08d}_{i}.png").write_bytes(blobs[(k + i) % pool])
        k += min(per, n - k)
    done.write_text(f"{n} {classes} {px} {pool}")
    return time.perf_counter() - t


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.suffix == ".tfrecord")


def first_batch_cmd(shards: Path, args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-c", _FIRST_BATCH, str(shards), str(args.batch_size),
            str(args.image_px), args.backend, str(args.workers)]  # fmt: skip


def repeat_first_batch(args: argparse.Namespace, results: list[dict]) -> dict:
    """Rounds 2..R of ``first_batch`` (round 1 is in ``results``), sizes alternating."""
    import statistics

    sizes = [row["images"] for row in results]
    seconds = [[row["first_batch"]["first_batch_s"] for row in results]]
    for _ in range(args.repeat - 1):
        times = []
        for n in sizes:
            r = run_measured(first_batch_cmd(args.work / f"n{n}" / "shards", args), capture=True)
            times.append(json.loads(r["stdout"])["first_batch_s"])
        seconds.append(times)
        print(json.dumps({"first_batch_s": dict(zip(sizes, times, strict=True))}), file=sys.stderr)
    ratios = [t[-1] / t[0] for t in seconds]
    return {
        "sizes": sizes,
        "seconds": [[round(x, 3) for x in t] for t in seconds],
        "median_s": [round(statistics.median(t[k] for t in seconds), 3) for k in range(len(sizes))],
        "ratio_last_to_first": [round(x, 2) for x in ratios],
        "ratio_median": round(statistics.median(ratios), 2),
        "ratio_range": [round(min(ratios), 2), round(max(ratios), 2)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="cache directory (images, shards)")
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated image counts")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--image-px", type=int, default=32)
    ap.add_argument("--pool", type=int, default=4096, help="distinct images to draw from")
    ap.add_argument("--threads", type=int, default=2, help="pack --threads")
    ap.add_argument("--workers", type=int, default=4, help="loader workers for first_batch")
    ap.add_argument("--backend", default="torch", choices=("torch", "dali"))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", default=",".join(STEPS), help=f"subset of {','.join(STEPS)}")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of first_batch (see above)")
    args = ap.parse_args()
    steps = [s for s in args.steps.split(",") if s]
    unknown = set(steps) - set(STEPS)
    if unknown:
        ap.error(f"unknown steps: {sorted(unknown)}")
    exe = Path(sys.executable).with_name("recordkit")
    rk = [str(exe)] if exe.exists() else [sys.executable, "-m", "recordkit"]
    load_before = os.getloadavg()
    results = []
    for n in [int(s) for s in args.sizes.split(",")]:
        base = args.work / f"n{n}"
        root, prefix, shards = base / "images", base / "lists" / "data", base / "shards"
        packed = (shards / "recordkit.json").exists()
        need_tree = "list" in steps or "pack" in steps or not packed
        gen_s = generate(root, n, args.classes, args.image_px, args.pool) if need_tree else 0.0
        row: dict = {"images": n, "generate_s": round(gen_s, 1)}
        if need_tree and ("list" in steps or not prefix.with_name("data_train.lst").exists()):
            prefix.parent.mkdir(parents=True, exist_ok=True)
            r = run_measured(
                [*rk, "list", str(prefix), str(root), "--recursive", "--train-ratio", "0.95"]
            )
            r["us_per_image"] = round(r["wall_s"] / n * 1e6, 2)
            row["list"] = r
        if "pack" in steps or not (shards / "recordkit.json").exists():
            shutil.rmtree(shards, ignore_errors=True)
            r = run_measured(
                [*rk, "pack", str(prefix), str(root), "--out", str(shards), "--quiet",
                 "--threads", str(args.threads)]
            )  # fmt: skip
            r["us_per_image"] = round(r["wall_s"] / n * 1e6, 2)
            r["images_per_s"] = round(n / r["wall_s"], 1)
            row["pack"] = r
        nbytes = dir_bytes(shards)
        row["shard_mb"] = round(nbytes / 1e6, 1)
        if "open" in steps:
            r = run_measured([sys.executable, "-c", _OPEN, str(shards)], capture=True)
            r.update(json.loads(r.pop("stdout")))
            row["open"] = r
        if "first_batch" in steps:
            r = run_measured(first_batch_cmd(shards, args), capture=True)
            r.update(json.loads(r.pop("stdout")))
            recs = r["records"]
            r["rss_bytes_per_record"] = round(r["rss_after_first_batch_mb"] * 2**20 / recs, 1)
            row["first_batch"] = r
        for step in ("verify", "inspect"):
            if step in steps:
                extra = ["--json"] if step == "inspect" else []
                r = run_measured([*rk, step, str(shards), *extra], capture=True)
                r.pop("stdout")
                r["mb_per_s"] = round(nbytes / 1e6 / r["wall_s"], 1)
                r["records_per_s"] = round(n / r["wall_s"], 0)
                row[step] = r
        if "verify" in steps:
            r = run_measured([sys.executable, "-c", _SHA256, str(shards)], capture=True)
            r.update(json.loads(r.pop("stdout")))
            r["mb_per_s"] = round(nbytes / 1e6 / r["wall_s"], 1)
            row["sha256_bound"] = r
            row["verify"]["x_sha256_bound"] = round(row["verify"]["wall_s"] / r["wall_s"], 2)
        results.append(row)
        print(json.dumps(row), file=sys.stderr)
    rounds = None
    if args.repeat > 1 and "first_batch" in steps:
        rounds = repeat_first_batch(args, results)
    print(
        json.dumps(
            {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "args": {k: str(v) for k, v in vars(args).items()},
                "load_before": load_before,
                "load_after": os.getloadavg(),
                "results": results,
                **({"first_batch_rounds": rounds} if rounds else {}),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
