"""Benchmark `recordkit pack` against a naive Pillow loop; prints one JSON object.

Builds (seeded) or takes an image set, then measures on the same files, best of ``--repeat``:

* ``pack``: :func:`recordkit.pack.pack` at 1, 2, … threads (up to the CPUs available), writing
  real shards (fsync on, as the CLI does) into a temporary directory;
* ``codec_only``: :func:`recordkit.imaging.process_image` over the files in one thread with
  no reading or writing in the timed loop -- the codec limit; ``pack`` at 1 thread vs this
  is the per-record overhead outside the codec calls;
* ``naive``: ``Image.open → convert("RGB") → resize (BICUBIC, no draft) → save JPEG`` at 1 and
  2 threads (what a simple script does);
* ``codec_processes_N`` vs ``codec_threads_N``: ``process_image`` on N processes vs N
  threads, to check whether processes would beat threads;
* ``other_cpu_s``: CPU seconds used by *other* processes during the run (from ``/proc/stat``
  minus this process tree), to tell whether a shared machine was quiet;
* ``jpeg_encoder_thread_scaling``: Pillow's JPEG encoder vs ``cv2.imencode`` at 1 and 2
  threads (does the encoder release the GIL?);
* ``peak_rss_MB_by_images``: peak RSS of a fresh ``pack`` process for the list and the list
  repeated 5 times (memory must not grow with the number of images).

With ``--case upscale`` or ``--case thumbs`` it measures instead recordkit side by side with
MXNet's im2rec and the bare codec loop (see ``tools/pack_cases.py``).

Usage::

    .venv/bin/python tools/bench_pack.py                       # 300 generated ~100 KB JPEGs
    .venv/bin/python tools/bench_pack.py --images DIR --resize 480 --quality 95 --repeat 3
    .venv/bin/python tools/bench_pack.py --case thumbs --images DIR --repeat 3 \
        --im2rec /path/to/im2rec.py --mxnet-python /path/to/mxvenv/bin/python \
        [--base /path/to/another/checkout]

The side-by-side cases run this checkout's recordkit (``PYTHONPATH``); ``--base`` adds another
checkout's equal-work pack to every round (alternating) and checks both write the same shards.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from recordkit.imaging import ImageOptions, process_image
from recordkit.listing import make_lists
from recordkit.pack import PackOptions, default_threads, pack


def make_images(root: Path, count: int, seed: int, classes: int = 10) -> None:
    """``count`` ImageNet-sized photo-like JPEGs (500x375 .. 1000x750, q90, ~100 KB)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        scale = rng.uniform(1.0, 2.0)
        w, h = int(500 * scale), int(375 * scale)
        if rng.random() < 0.25:
            w, h = h, w  # some portrait images
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        chans = []
        for _ in range(3):
            fx, fy, ph = rng.uniform(2, 12), rng.uniform(2, 12), rng.uniform(0, 6.3)
            c = 128 + 70 * np.sin(x / w * fx + ph) * np.cos(y / h * fy) + 40 * (x / w - y / h)
            chans.append(c)
        arr = np.stack(chans, axis=-1)
        # blobs with hard edges, and texture noise at two scales
        for _ in range(6):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(20, w / 4)
            mask = (x - cx) ** 2 + (y - cy) ** 2 < r * r
            arr[mask] = arr[mask] * 0.5 + rng.uniform(0, 255, 3) * 0.5
        coarse = rng.normal(0, 12, size=(h // 8 + 1, w // 8 + 1, 3)).astype(np.float32)
        arr += np.repeat(np.repeat(coarse, 8, 0), 8, 1)[:h, :w]
        arr += rng.normal(0, 7, size=arr.shape).astype(np.float32)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        out = root / f"n{i % classes:08d}" / f"img_{i:05d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        img.save(out, "JPEG", quality=90)


def naive_one(path: str, resize: int, quality: int) -> int:
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        if resize and min(w, h) > resize:
            if w < h:
                im = im.resize((resize, h * resize // w), Image.Resampling.BICUBIC)
            else:
                im = im.resize((w * resize // h, resize), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
    return len(buf.getvalue())


def codec_one(args: tuple[bytes, ImageOptions]) -> int:
    return len(process_image(args[0], args[1]).data)


_RSS_SNIPPET = """
import resource, sys
from pathlib import Path
from recordkit.imaging import ImageOptions
from recordkit.pack import PackOptions, pack
lst, root, out, resize, quality, threads = sys.argv[1:]
image = ImageOptions(resize=int(resize), quality=int(quality))
pack(None, root, PackOptions(out=Path(out), lists=(Path(lst),), image=image, threads=int(threads)))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss(prefix: Path, root: Path, work: Path, image: ImageOptions, threads: int) -> dict:
    """Peak RSS (MB) of a fresh process packing the list once vs repeated 5 times."""
    lines = Path(str(prefix) + ".lst").read_text().splitlines(keepends=True)
    out = {}
    for k in (1, 5):
        lst = work / f"rss_{k}.lst"
        lst.write_text("".join(lines * k))
        dest = work / f"rss_out_{k}"
        args = [str(lst), str(root), str(dest), str(image.resize), str(image.quality)]
        proc = subprocess.run(
            [sys.executable, "-c", _RSS_SNIPPET, *args, str(threads)],
            check=True,
            capture_output=True,
            text=True,
        )
        out[str(len(lines) * k)] = round(int(proc.stdout.split()[-1]) / 1024, 1)
        shutil.rmtree(dest, ignore_errors=True)
    return out


def busy_cpu_s() -> float:
    """Non-idle CPU seconds of the whole machine so far (``/proc/stat``)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this process and its finished children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def encoder_scaling(datas: list[bytes], repeat: int) -> dict:
    """JPEG encode (640x480, q95) images/s at 1 and 2 threads: Pillow vs OpenCV.

    Shows which encoder releases the GIL (the thread-scaling limit of the codec).
    """
    import cv2

    ims = [Image.open(io.BytesIO(d)).convert("RGB").resize((640, 480)) for d in datas[:60]]
    bgr = [cv2.cvtColor(np.asarray(im), cv2.COLOR_RGB2BGR) for im in ims]

    def pil(i: int) -> int:
        buf = io.BytesIO()
        ims[i].save(buf, "JPEG", quality=95, subsampling=2)
        return buf.tell()

    def ocv(i: int) -> int:
        return len(cv2.imencode(".jpg", bgr[i], [cv2.IMWRITE_JPEG_QUALITY, 95])[1])

    out = {}
    for name, fn in (("pillow_save_jpeg", pil), ("cv2_imencode", ocv)):
        row = {}
        for threads in (1, 2):
            with ThreadPoolExecutor(threads) as pool:
                t = best(lambda fn=fn, pool=pool: list(pool.map(fn, range(len(ims)))), repeat)
            row[f"threads_{threads}_images_per_s"] = round(len(ims) / t, 1)
        row["scaling"] = round(row["threads_2_images_per_s"] / row["threads_1_images_per_s"], 2)
        out[name] = row
    return out


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def figures(n: int, mb: float, seconds: float) -> dict[str, float]:
    return {
        "seconds": round(seconds, 3),
        "images_per_s": round(n / seconds, 1),
        "MB_per_s": round(mb / seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, help="image folder (class subfolders); default: make")
    ap.add_argument("--count", type=int, default=0, help="images to generate (0: per case)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resize", type=int, default=480)
    ap.add_argument("--quality", type=int, default=95)
    ap.add_argument("--resample", choices=["fast", "area"], default="fast")
    ap.add_argument("--threads", type=str, default="", help="comma list; default 1..CPUs")
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs per figure")
    ap.add_argument(
        "--case",
        choices=["downscale", "upscale", "thumbs"],
        default="downscale",
        help="downscale: the figures below; upscale / thumbs: side by side with im2rec and the "
        "codec bound (tools/pack_cases.py)",
    )
    ap.add_argument("--pack-threads", type=int, default=2, help="threads for upscale / thumbs")
    ap.add_argument("--im2rec", type=Path, help="MXNet's tools/im2rec.py (upscale / thumbs)")
    ap.add_argument("--mxnet-python", type=Path, help="a Python that imports mxnet and cv2")
    ap.add_argument(
        "--base",
        type=Path,
        help="another recordkit checkout (upscale / thumbs): its equal-work pack runs too, "
        "alternating, with PYTHONPATH pointing at it (this one's runs get this checkout's)",
    )
    args = ap.parse_args(argv)
    if args.case != "downscale":
        from pack_cases import side_by_side

        work = Path(tempfile.mkdtemp(prefix="bench_pack_"))
        try:
            print(json.dumps(side_by_side(args, work), indent=2))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return 0

    cpus = default_threads()
    thread_counts = (
        [int(t) for t in args.threads.split(",")] if args.threads else list(range(1, cpus + 1))
    )
    work = Path(tempfile.mkdtemp(prefix="bench_pack_"))
    try:
        root = args.images
        t_gen = 0.0
        if root is None:
            root = work / "images"
            t = time.perf_counter()
            make_images(root, args.count or 300, args.seed)
            t_gen = time.perf_counter() - t
        prefix = work / "bench"
        make_lists(prefix, root, recursive=True)
        paths = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
        datas = [Path(p).read_bytes() for p in paths]  # also warms the page cache
        n, mb_in = len(paths), sum(len(d) for d in datas) / 1e6
        image = ImageOptions(resize=args.resize, quality=args.quality, resample=args.resample)
        # pack runs OpenCV single-threaded inside its own pool; measure the codec the same way
        import cv2

        cv2.setNumThreads(1)

        result: dict = {
            "machine": {"cpus": cpus, "os_cpu_count": os.cpu_count(), "load_before": None},
            "images": {
                "count": n,
                "MB": round(mb_in, 1),
                "mean_KB": round(mb_in * 1e3 / n, 1),
                "source": str(args.images) if args.images else f"generated seed {args.seed}",
                "generate_s": round(t_gen, 1),
            },
            "options": {
                "resize": args.resize,
                "quality": args.quality,
                "resample": args.resample,
                "repeat": args.repeat,
            },
            "python": sys.version.split()[0],
        }
        result["machine"]["load_before"] = os.getloadavg()[0]
        busy0, own0 = busy_cpu_s(), own_cpu_s()

        t = best(lambda: [codec_one((d, image)) for d in datas], args.repeat)
        result["codec_only_1"] = figures(n, mb_in, t)

        pack_runs = {}
        out_mb = 0.0
        for threads in thread_counts:
            out = work / f"shards_{threads}"

            def run(out=out, threads=threads) -> None:
                nonlocal out_mb
                shutil.rmtree(out, ignore_errors=True)
                res = pack(prefix, root, PackOptions(out=out, image=image, threads=threads))
                out_mb = res.bytes_out / 1e6

            pack_runs[threads] = figures(n, mb_in, best(run, args.repeat))
        base = pack_runs[thread_counts[0]]["images_per_s"]
        for threads, fig in pack_runs.items():
            fig["speedup_vs_1"] = round(fig["images_per_s"] / base, 2)
            fig["efficiency"] = round(fig["images_per_s"] / base / threads, 2)
        result["pack"] = {str(k): v for k, v in pack_runs.items()}
        result["pack_output_MB"] = round(out_mb, 1)
        if 1 in pack_runs:
            ratio = result["codec_only_1"]["images_per_s"] / pack_runs[1]["images_per_s"]
            result["pack_1_overhead_vs_codec_only"] = f"{(ratio - 1) * 100:.1f}%"

        naive = {}
        for threads in sorted({1, min(2, cpus), *[t for t in thread_counts if t <= 2]}):

            def run_naive(threads=threads) -> None:
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(naive_one, paths, [args.resize] * n, [args.quality] * n))

            naive[threads] = figures(n, mb_in, best(run_naive, args.repeat))
        result["naive"] = {str(k): v for k, v in naive.items()}
        result["pack_vs_naive_at_equal_threads"] = {
            str(k): round(pack_runs[k]["images_per_s"] / naive[k]["images_per_s"], 2)
            for k in naive
            if k in pack_runs
        }

        # Processes: a "spawn" pool started and warmed up outside the timed region (fork after
        # OpenCV's thread pool has run can deadlock the children).
        procs = max(thread_counts)
        jobs = [(d, image) for d in datas]
        with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn")) as pp:
            list(pp.map(codec_one, jobs[: 4 * procs]))
            t = best(lambda: list(pp.map(codec_one, jobs, chunksize=4)), args.repeat)
        result[f"codec_processes_{procs}"] = figures(n, mb_in, t)
        with ThreadPoolExecutor(procs) as tp:
            t = best(lambda: list(tp.map(codec_one, jobs)), args.repeat)
        result[f"codec_threads_{procs}"] = figures(n, mb_in, t)
        result["jpeg_encoder_thread_scaling"] = encoder_scaling(datas, max(args.repeat, 3))
        result["peak_rss_MB_by_images"] = peak_rss(prefix, root, work, image, max(thread_counts))
        result["machine"]["load_after"] = os.getloadavg()[0]
        result["machine"]["other_cpu_s"] = round((busy_cpu_s() - busy0) - (own_cpu_s() - own0), 1)
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
