"""The side-by-side cases of ``tools/bench_pack.py``: recordkit pack vs MXNet's im2rec vs the codec.

Two generated image sets (cached under ``--images DIR``, made the first time):

* ``upscale``: 1,200 photo-like JPEGs (``tests/imagegen.photo_array``, q90) sized like real
  photos: shorter side log-normal around 375 px (median ~370, ~80 % below 480), 4:3, a quarter
  portrait. ``--resize 480 --quality 95``: most need enlarging.
* ``thumbs``: 60,000 grayscale PNGs of 28-32 px (a few Gaussian blobs each, MNIST-like),
  stored as JPEG q95 with no resize.

Each case reports, best of ``--repeat`` alternating runs, each a fresh process (interpreter
start and imports included, for both tools): ``recordkit pack --threads T`` doing the same work
as im2rec (``--upscale`` for ``upscale``: im2rec always resizes the shorter side; ``--color 1``
for ``thumbs``: both write 3-channel JPEGs of the gray sources), recordkit with less work where
that applies (without ``--upscale``; ``--color -1``, which keeps gray sources gray), im2rec when
``--im2rec`` and ``--mxnet-python`` are given, and the codec bound: the bare OpenCV
decode → resize → encode loop on T threads over the bytes in memory, with recordkit's filters
(INTER_CUBIC to enlarge, a Gaussian prefilter + bilinear to shrink; also INTER_LINEAR, im2rec's
enlarging filter, to show what the better filter costs).
"""

from __future__ import annotations

import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import imagegen  # noqa: E402

from recordkit.imaging import _resize  # noqa: E402 - the same shrink filter as pack
from recordkit.listing import make_lists  # noqa: E402

COUNTS = {"upscale": 1200, "thumbs": 60_000}
_JPEG = None  # cv2.imencode params, set in codec_bound


def make_upscale_set(root: Path, count: int, seed: int = 0) -> None:
    """Photo-like JPEGs, shorter side ~ log-normal(375 px, 0.3), clipped to 160..1200."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        short = int(np.clip(rng.lognormal(math.log(375), 0.3), 160, 1200))
        w, h = short * 4 // 3, short
        if rng.random() < 0.25:
            w, h = h, w
        out = root / f"c{i % 10}" / f"{i:05d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(imagegen.photo_array(h, w, seed=seed * 100_000 + i)).save(out, quality=90)


def make_thumbs_set(root: Path, count: int, seed: int = 0) -> None:
    """28-32 px grayscale PNGs: three Gaussian blobs on black."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        s = int(rng.integers(28, 33))
        y, x = np.mgrid[0:s, 0:s].astype(np.float32)
        a = np.zeros((s, s), np.float32)
        for _ in range(3):
            cx, cy = rng.uniform(6, s - 6, 2)
            r = rng.uniform(2, 5)
            a += 255 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        out = root / f"c{i % 10}" / f"{i:06d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(out)


def image_set(case: str, cache: Path | None, work: Path, count: int) -> tuple[Path, float]:
    """The image folder of ``case`` (generated into ``cache/case/img`` once), and the seconds
    spent generating it now."""
    root = (cache or work) / case / "img"
    done = root.parent / f"done-{count}"
    if done.exists():
        return root, 0.0
    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    (make_upscale_set if case == "upscale" else make_thumbs_set)(root, count)
    done.touch()
    return root, time.perf_counter() - t


def _bare(data: bytes, resize: int, enlarge: int) -> int:
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if resize:
        h, w = arr.shape[:2]
        fw, fh = (resize, h * resize // w) if h > w else (w * resize // h, resize)
        if fw > w or fh > h:
            arr = cv2.resize(arr, (fw, fh), interpolation=enlarge)
        elif (fw, fh) != (w, h):
            arr = _resize(arr, fw, fh, "fast")
    return len(cv2.imencode(".jpg", arr, _JPEG)[1])


def codec_bound(datas: list[bytes], threads: int, resize: int, enlarge: str) -> float:
    """Seconds of the bare decode → resize → encode loop on ``threads`` threads."""
    import cv2

    global _JPEG
    cv2.setNumThreads(1)
    _JPEG = [
        cv2.IMWRITE_JPEG_QUALITY, 95,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
    ]  # fmt: skip
    flag = {"cubic": cv2.INTER_CUBIC, "linear": cv2.INTER_LINEAR}[enlarge]
    with ThreadPoolExecutor(threads) as pool:
        t = time.perf_counter()
        chunk = 1 if resize else 64  # photos: no tail imbalance; thumbnails: few futures
        list(pool.map(_bare, datas, [resize] * len(datas), [flag] * len(datas), chunksize=chunk))
        return time.perf_counter() - t


def timed(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None
) -> tuple[float, float, float | None]:
    """Run ``cmd``: ``(wall s, CPU s of it and its children, seconds recordkit's summary line
    reports for ``pack()`` itself -- no interpreter start or imports -- or None)``."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, errors = out.read(), err.read()
    if proc.returncode:
        shown = errors.decode(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {shown}")
    found = re.search(rb"; ([0-9.]+) s, [0-9.]+ images/s", text)
    return wall, usage.ru_utime + usage.ru_stime, float(found[1]) if found else None


def upscale_filter_psnr(n: int = 12) -> dict[str, float]:
    """PSNR (dB) of enlarging 480 → 640 px short side against the truth.

    A photo-like picture at 640 px is the truth; its INTER_AREA reduction to 480 px is the
    source; each filter enlarges the source back; mean PSNR over ``n`` pictures. Pillow's
    LANCZOS enlargement is the reference filter.
    """
    import cv2

    out: dict[str, list[float]] = {"cubic": [], "linear": [], "pillow_lanczos": []}
    for i in range(n):
        truth = imagegen.photo_array(640, 853, seed=10_000 + i)
        src = cv2.resize(truth, (640, 480), interpolation=cv2.INTER_AREA)
        for name, up in (
            ("cubic", cv2.resize(src, (853, 640), interpolation=cv2.INTER_CUBIC)),
            ("linear", cv2.resize(src, (853, 640), interpolation=cv2.INTER_LINEAR)),
            ("pillow_lanczos", np.asarray(Image.fromarray(src).resize((853, 640), Image.LANCZOS))),
        ):
            out[name].append(imagegen.psnr(truth, up))
    return {k: round(statistics.fmean(v), 2) for k, v in out.items()}


def side_by_side(args, work: Path) -> dict:
    """The ``upscale`` or ``thumbs`` case: see the module docstring."""
    case, threads = args.case, args.pack_threads
    count = args.count or COUNTS[case]
    root, t_gen = image_set(case, args.images, work, count)
    prefix = work / "bench"  # im2rec wants PREFIX.lst beside, and PREFIX not a folder
    make_lists(prefix, root, recursive=True)
    lines = Path(f"{prefix}.lst").read_text().splitlines()
    paths = [root / line.split("\t")[-1] for line in lines]
    datas = [p.read_bytes() for p in paths]  # also warms the page cache
    resize = 480 if case == "upscale" else 0
    rk = [sys.executable, "-m", "recordkit", "pack", str(prefix), str(root), "--quality", "95"]
    rk += ["--threads", str(threads), "--overwrite", "-q", "--out", str(work / "rk")]
    runs: dict[str, list[str]] = {}
    if case == "upscale":
        rk += ["--resize", "480"]
        runs["recordkit_equal_work"] = [*rk, "--upscale"]
        runs["recordkit_no_upscale"] = rk
    else:
        runs["recordkit_equal_work"] = [*rk, "--color", "1"]
        runs["recordkit_gray_kept"] = [*rk, "--color", "-1"]
    envs = {name: dict(os.environ, PYTHONPATH=str(ROOT)) for name in runs}
    if getattr(args, "base", None):  # the same equal-work pack from another checkout
        cmd = list(runs["recordkit_equal_work"])
        cmd[cmd.index(str(work / "rk"))] = str(work / "rk_base")
        runs["recordkit_equal_work_base"] = cmd
        envs["recordkit_equal_work_base"] = dict(os.environ, PYTHONPATH=str(args.base.resolve()))
    notes = []
    if args.im2rec and args.mxnet_python:
        im = [str(args.mxnet_python), str(args.im2rec), str(prefix), str(root), "--quality", "95"]
        im += ["--num-thread", str(threads)] + (["--resize", "480"] if resize else [])
        runs["im2rec"] = im
    else:
        notes.append("im2rec not run: give --im2rec and --mxnet-python")
    env_note = "each run a fresh process, interpreter start and imports included"
    load0 = os.getloadavg()[0]
    busy0, own0 = _busy_cpu_s(), _own_cpu_s()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    bounds: dict[str, list[float]] = {"cubic": [], "linear": []} if resize else {"none": []}
    shards: set[tuple[str, ...]] = set()
    for _ in range(args.repeat):  # alternate, so that a noisy moment hits every figure alike
        for name, cmd in runs.items():
            times[name].append(timed(cmd, work, envs.get(name)))
            if name.startswith("recordkit_equal_work"):  # the shards of each, every time
                written = cmd[cmd.index("--out") + 1]
                shards.add(tuple(_sha256(p) for p in sorted(Path(written).glob("*.tfrecord"))))
        for filt in bounds:
            bounds[filt].append(codec_bound(datas, threads, resize, filt if resize else "cubic"))
    res: dict = {
        "case": case,
        "images": {
            "count": len(datas),
            "MB": round(sum(map(len, datas)) / 1e6, 1),
            "short_side_median": statistics.median(min(_size(d)) for d in datas[:2000]),
            "share_below_480": round(sum(min(_size(d)) < 480 for d in datas) / len(datas), 3),
            "generate_s": round(t_gen, 1),
        },
        "threads": threads,
        "repeat": args.repeat,
        "timing": env_note,
        "notes": notes,
    }
    res["equal_work_shards_identical"] = len(shards) == 1  # every run, both checkouts
    if getattr(args, "base", None):
        res["base_checkout"] = str(args.base)
    for name, vals in times.items():
        walls = [w for w, _, _ in vals]
        res[name] = {
            "best_s": round(min(walls), 3),
            "median_s": round(statistics.median(walls), 3),
            "cpu_s_of_best": round(min(vals)[1], 2),
            "all_s": [round(w, 3) for w in walls],
        }
        inner = [x for _, _, x in vals if x is not None]
        if inner:
            res[name]["pack_call_best_s"] = min(inner)
    for filt, vals in bounds.items():
        res[f"codec_bound_{filt}_s"] = round(min(vals), 3)
    best = res["recordkit_equal_work"]["best_s"]
    bound = min(bounds["cubic" if resize else "none"])
    res["pack_share_of_codec_bound"] = round(bound / best, 3)
    if "pack_call_best_s" in res["recordkit_equal_work"]:
        inner = res["recordkit_equal_work"]["pack_call_best_s"]
        res["pack_call_share_of_codec_bound"] = round(bound / inner, 3)
    if "im2rec" in res:
        res["speedup_vs_im2rec_equal_work"] = round(res["im2rec"]["best_s"] / best, 2)
        for name in ("recordkit_equal_work", "recordkit_equal_work_base"):
            if name in times:  # round by round: the runs of one round are back to back
                res[name]["ratio_vs_im2rec_per_round"] = [
                    round(i[0] / r[0], 2) for i, r in zip(times["im2rec"], times[name], strict=True)
                ]
        if "recordkit_equal_work_base" in res:
            base_best = res["recordkit_equal_work_base"]["best_s"]
            res["speedup_vs_im2rec_equal_work_base"] = round(res["im2rec"]["best_s"] / base_best, 2)
        other = "recordkit_no_upscale" if resize else "recordkit_gray_kept"
        res[f"speedup_vs_im2rec_{other}"] = round(res["im2rec"]["best_s"] / res[other]["best_s"], 2)
    if resize:
        res["upscale_filter_psnr_db"] = upscale_filter_psnr()
    res["machine"] = {
        "cpus": os.cpu_count(),
        "load_before": round(load0, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "other_cpu_s": round((_busy_cpu_s() - busy0) - (_own_cpu_s() - own0), 1),
    }
    return res


def _sha256(path: Path) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _size(data: bytes) -> tuple[int, int]:
    from recordkit.imageinfo import image_info

    info = image_info(data)
    return info.width, info.height


def _busy_cpu_s() -> float:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total
