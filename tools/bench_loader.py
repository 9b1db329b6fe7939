"""Loader throughput on the same JPEGs: recordkit (DALI, torch) vs ImageFolder vs DALI files.

Generates ImageNet-sized photo-like JPEGs (deterministic, quality 90) as an image folder,
packs the same bytes into shards (pass-through: the original JPEG bytes are stored), and
measures images/s of 224-px training batches (random resized crop 0.08-1, ratio 3/4-4/3,
flip, normalize to float32 NCHW on the CPU) for:

  a. ``dali_shards``  recordkit.make_loader(backend="dali") over the shards (DALI CPU)
  b. ``torch_shards`` recordkit.make_loader(backend="torch") over the shards
  c. ``imagefolder``  torchvision ImageFolder + DataLoader, PIL decode, transforms
                      RandomResizedCrop + RandomHorizontalFlip + ToTensor + Normalize
  d. ``dali_files``   DALI fn.readers.file + DALIGenericIterator over the folder, one
                      pipeline for all epochs, the same decode/augment graph as (a)

All with the same number of worker processes / DALI threads. Prints one JSON object.

    python tools/bench_loader.py --count 1000 --workers 2 --batch-size 64 --epochs 2

``--case rrc480``: records at 480 px short side, equal work against MXNet's ImageRecordIter.
The same 1,200 generated photos (500 x 375-500) are listed once (im2rec ``.lst``) and packed
by each tool at ``--resize 480 --quality 95``: ``recordkit pack --upscale`` (im2rec always
enlarges a shorter side below 480; without ``--upscale`` recordkit would store the 500 x 375
originals and decode 40 % fewer pixels) and MXNet's unmodified ``im2rec.py`` (``--im2rec``,
run by ``--mxnet-python``). Every row does the same work per image: decode, random resized
crop (area 0.08-1, aspect 3/4-4/3), resize to 224 x 224, mirror with p = 0.5, normalize with
ImageNet mean/std to float32 NCHW on the CPU, batches of 64, ``--workers`` decoding threads /
processes. Rows, by resize filter (the pairs compare like with like):

  ``mxnet_bilinear``  ImageRecordIter(inter_method=1: cv::resize INTER_LINEAR, its default)
  ``mxnet_area``      ImageRecordIter(inter_method=3: INTER_AREA, antialiased)
  ``torch_bilinear``, ``dali_bilinear``    make_loader, Augment(train_antialias=False)
  ``torch_antialias``, ``dali_antialias``  make_loader, Augment() (bilinear + antialias)

MXNet runs with ``ctx='cpu'`` and ``OMP_NUM_THREADS=--workers`` (its fair thread setting;
``tools/mxnet_iter_rate.py``). Besides wall rates, each row reports the CPU time of the whole
loader (this process and its worker processes, or MXNet's process) per image and images/s per
core, the figure to size loaders by (cores per GPU).

    python tools/bench_loader.py --case rrc480 --images /tmp/rk/photos1200 \
        --mxnet-python /work/mxvenv/bin/python --im2rec /work/im2rec/im2rec.py

Each run of a recordkit row happens in a fresh process (as MXNet's do). ``--packs DIR`` keeps
both packs there and reuses them; ``--baseline CHECKOUT`` runs every recordkit row a second
time with recordkit imported from another checkout (``ROW@base``, interleaved with the rest),
and reports this checkout's ratios to it (``*_vs_base``): a before / after in one run.
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
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLASSES = 10


def photo(seed: int) -> tuple[bytes, int, int]:
    """A deterministic ~500x375..500 photo-like JPEG: waves + coloured noise + discs, q90."""
    import cv2

    r = np.random.default_rng(seed)
    h, w = (
        (int(r.integers(375, 501)), 500) if r.random() < 0.7 else (500, int(r.integers(375, 501)))
    )
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    for c in range(3):
        a, b, f = r.uniform(-1, 1, 3)
        img[..., c] = (
            128 + 60 * np.sin(x / (20 + 40 * abs(a)) + 5 * b) + 40 * np.cos(y / (15 + 30 * abs(f)))
        )
    blobs = r.normal(0, 40, (h // 8 + 1, w // 8 + 1, 3)).astype(np.float32)
    img += cv2.resize(blobs, (w, h), interpolation=cv2.INTER_CUBIC)
    img += r.normal(0, 8, (h, w, 3))
    arr = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(6):
        centre = (int(r.integers(w)), int(r.integers(h)))
        cv2.circle(
            arr, centre, int(r.integers(10, 80)), tuple(int(v) for v in r.integers(0, 255, 3)), -1
        )
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue(), h, w


def make_folder(root: Path, count: int) -> list[tuple[str, int, int, int]]:
    """Write ``count`` JPEGs as ``root/classNN/NNNNN.jpg``; return (relpath, label, h, w)."""
    items = []
    for i in range(count):
        label = i % CLASSES
        rel = f"class{label:02d}/{i:05d}.jpg"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            with Image.open(path) as im:
                w, h = im.size
        else:
            data, h, w = photo(i)
            path.write_bytes(data)
        items.append((rel, label, h, w))
    return items


def make_shards(
    folder: Path, items: list[tuple[str, int, int, int]], out: Path, shards: int
) -> None:
    """Pack the folder's bytes unchanged (like ``recordkit pack --pass-through``), shuffled."""
    from recordkit import Manifest, Record, ShardEntry, ShardWriter, SplitEntry, write_manifest

    out.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(100).permutation(len(items))
    entries = []
    for s in range(shards):
        path = out / f"train-{s:05d}-of-{shards:05d}.tfrecord"
        with ShardWriter(path, fsync=False) as w:
            for k in order[s::shards]:
                rel, label, h, w_ = items[k]
                w.write(
                    Record(
                        image=(folder / rel).read_bytes(),
                        labels=label,
                        filename=rel,
                        index=int(k),
                        height=h,
                        width=w_,
                    )
                )
        info = w.info
        assert info is not None
        entries.append(
            ShardEntry(path.name, info.index_path.name, info.records, info.bytes, info.sha256)
        )
    classes = [f"class{c:02d}" for c in range(CLASSES)]
    write_manifest(Manifest(classes=classes, splits={"train": SplitEntry(tuple(entries))}), out)


def tree_cpu_seconds(root: int | None = None) -> float:
    """User + system CPU seconds of process ``root`` (default: this one) and its live
    descendants, from ``/proc`` (DataLoader workers are children; DALI's threads are ours)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:  # exited meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parent[int(name)] = int(fields[1])
        cpu[int(name)] = (int(fields[11]) + int(fields[12])) / tick
    todo, total = [os.getpid() if root is None else root], 0.0
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(c for c, p in parent.items() if p == pid)
    return total


Window = tuple[int, float, float]  # images, wall seconds, CPU seconds


def run(factory: Any, epochs: int, warmup: int) -> tuple[Window, Window]:
    """Two measurement windows: ``steady`` and ``epochs``.

    ``steady``: epoch 0 after its first ``warmup`` batches, to the end of that epoch (no epoch
    boundary inside). ``epochs``: epochs 1..``epochs`` timed whole, so each epoch's start-up
    (DataLoader worker hand-off, DALI pipeline build, shuffle-buffer fill) is included. CPU
    time is :func:`tree_cpu_seconds` (this process and its workers).
    """
    images = 0
    start, cpu0 = time.perf_counter(), tree_cpu_seconds()
    for seen, (x, _) in enumerate(factory(0), 1):
        if seen == warmup:
            start, cpu0 = time.perf_counter(), tree_cpu_seconds()
        elif seen > warmup:
            images += x.shape[0]
    steady = (images, time.perf_counter() - start, tree_cpu_seconds() - cpu0)
    images = 0
    start, cpu0 = time.perf_counter(), tree_cpu_seconds()
    for e in range(1, epochs + 1):
        for x, _ in factory(e):
            images += x.shape[0]
    return steady, (images, time.perf_counter() - start, tree_cpu_seconds() - cpu0)


def summarize(runs: list[tuple[Window, Window]]) -> dict[str, Any]:
    """Medians over repeats: images/s, CPU µs per image, images/s per core (CPU-second).

    A window without images (an epoch no longer than ``--warmup`` batches) gives ``None``.
    """

    def med(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    out: dict[str, Any] = {}
    for k, key in enumerate(("steady", "epoch")):
        wins = [r[k] for r in runs if r[k][0] > 0]
        rate, cpu = med([n / w for n, w, _ in wins]), med([1e6 * c / n for n, _, c in wins])
        out[f"{key}_images_per_sec"] = None if rate is None else round(rate, 1)
        out[f"{key}_cpu_us_per_image"] = None if cpu is None else round(cpu)
    cpu = out["steady_cpu_us_per_image"] or out["epoch_cpu_us_per_image"]
    out["images_per_core_sec"] = round(1e6 / cpu, 1) if cpu else None
    out["runs"] = [[round(r[k][0] / r[k][1], 1) for k in (0, 1)] for r in runs]
    out["runs_cpu_us"] = [[round(1e6 * r[k][2] / max(1, r[k][0])) for k in (0, 1)] for r in runs]
    return out


def bench_recordkit(
    shards: Path, backend: str, a: argparse.Namespace, antialias: bool | None = None
) -> Any:
    from recordkit.loaders import Augment, make_loader

    if antialias is None:
        antialias = not a.no_antialias

    loader = make_loader(
        shards,
        "train",
        a.batch_size,
        224,
        backend=backend,
        num_workers=a.workers,
        seed=0,
        rank=0,
        world_size=1,
        augment=Augment(train_antialias=antialias),
    )

    def epochs(e: int) -> Any:
        loader.set_epoch(e)
        return loader

    return epochs


def bench_imagefolder(folder: Path, a: argparse.Namespace) -> Any:
    import torch
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    ds = datasets.ImageFolder(str(folder), transform=tf)
    dl = torch.utils.data.DataLoader(
        ds,
        batch_size=a.batch_size,
        shuffle=True,
        num_workers=a.workers,
        drop_last=True,
        persistent_workers=a.workers > 0,
    )
    return lambda e: dl


def bench_dali_files(folder: Path, a: argparse.Namespace) -> Any:
    """DALI's own way: ``fn.readers.file`` + ``DALIGenericIterator``, one pipeline for all epochs.

    The decode/augment graph is recordkit's own (:func:`recordkit.loaders.dali.decode_augment`,
    same ``Augment``), the reader gets the same shuffle buffer and queue depth as (a), and the
    labels get the same conversion to int64 ``(B,)``, so (a) vs (d) compares the readers and
    the epoch handling only.
    """
    import nvidia.dali.fn as fn
    import torch
    from nvidia.dali import pipeline_def
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    from recordkit.loaders import Augment
    from recordkit.loaders.dali import decode_augment, default_initial_fill

    aug = Augment(train_antialias=not a.no_antialias)

    @pipeline_def
    def pipe() -> Any:
        jpegs, labels = fn.readers.file(
            file_root=str(folder),
            random_shuffle=True,
            initial_fill=default_initial_fill(a.count, a.batch_size),
            name="Reader",
        )
        images = decode_augment(jpegs, train=True, augment=aug, image_size=224, gpu=False)
        return images, labels

    p = pipe(
        batch_size=a.batch_size,
        num_threads=a.workers,
        device_id=None,
        seed=0,
        prefetch_queue_depth=2,
    )
    p.build()
    it = DALIGenericIterator(
        p,
        ["images", "labels"],
        reader_name="Reader",
        last_batch_policy=LastBatchPolicy.DROP,
        auto_reset=True,
    )
    return lambda e: (
        (b[0]["images"], b[0]["labels"].to(torch.int64)[:, 0].contiguous()) for b in it
    )


def pack_rrc480(
    folder: Path, items: list[tuple[str, int, int, int]], out: Path, a: argparse.Namespace
) -> dict[str, Any]:
    """List the folder once (im2rec ``.lst``) and pack it with each tool at 480 px, q95.

    Returns what was packed: paths, mean stored JPEG size and whether both tools stored the
    same pixel sizes (they must: equal work starts with equal images).
    """
    import subprocess

    out.mkdir(parents=True, exist_ok=True)
    shards = out / "shards"
    if (shards / "recordkit.json").exists() and (out / "photos.rec").exists():
        return {"shards": shards, "rec": out / "photos.rec", "idx": out / "photos.idx",
                "reused": str(out)}  # fmt: skip
    lst = out / "photos.lst"
    lst.write_text("".join(f"{i}\t{lab:f}\t{rel}\n" for i, (rel, lab, *_) in enumerate(items)))
    cmd = [sys.executable, "-m", "recordkit", "pack", str(out / "photos"), str(folder)]
    cmd += ["--resize", "480", "--upscale", "--quality", "95", "--out", str(shards)]
    cmd += ["--split", "train", "--threads", str(max(1, a.workers)), "--shard-size", "400"]
    subprocess.run(
        cmd, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    info: dict[str, Any] = {"shards": shards}
    from recordkit import open_dataset
    from recordkit.format.example import decode_example

    sp = open_dataset(shards)["train"]
    recs = [decode_example(sp.read_bytes(i)) for i in range(len(sp))]
    info["recordkit_mean_kb"] = round(sum(len(r.image) for r in recs) / len(recs) / 1e3, 1)
    if a.mxnet_python and a.im2rec:
        cmd = [a.mxnet_python, a.im2rec, "--resize", "480", "--quality", "95"]
        cmd += ["--num-thread", str(max(1, a.workers)), str(out / "photos"), str(folder)]
        subprocess.run(cmd, check=True, capture_output=True)
        info["rec"], info["idx"] = out / "photos.rec", out / "photos.idx"
        sizes = {}
        for key, payload in read_rec(info["rec"]):
            with Image.open(io.BytesIO(payload)) as im:
                sizes[key] = (im.size, len(payload))
        ours = {r.index: (r.width, r.height) for r in recs}
        info["mxnet_mean_kb"] = round(sum(n for _, n in sizes.values()) / len(sizes) / 1e3, 1)
        info["same_pixel_sizes"] = all(sizes[k][0] == ours[k] for k in ours) and len(sizes) == len(
            ours
        )
    return info


def read_rec(path: Path) -> Any:
    """``(index, image bytes)`` of each record of an MXNet ``.rec`` written by im2rec."""
    import struct

    with open(path, "rb") as f:
        while head := f.read(8):
            _, lrec = struct.unpack("<II", head)
            n = lrec & ((1 << 29) - 1)
            data = f.read(n)
            f.read(-n % 4)
            flag, _, key, _ = struct.unpack("<IfQQ", data[:24])
            yield key, data[24 + 4 * flag :]


def run_mxnet(info: dict[str, Any], inter_method: int, a: argparse.Namespace) -> Any:
    """One run of ``tools/mxnet_iter_rate.py`` under MXNet's Python: ``(steady, epochs)``."""
    import subprocess

    cmd = [a.mxnet_python, str(ROOT / "tools" / "mxnet_iter_rate.py"), "--rec", str(info["rec"])]
    cmd += ["--idx", str(info["idx"]), "--threads", str(a.workers), "--epochs", str(a.epochs)]
    cmd += ["--warmup", str(a.warmup), "--batch-size", str(a.batch_size)]
    cmd += ["--inter-method", str(inter_method)]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.workers)}
    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, env=env).stdout)
    return tuple(
        (w["images"], w["seconds"], w["cpu_seconds"]) for w in (res["steady"], res["epoch"])
    )


RRC480_ROWS = (
    "mxnet_bilinear,mxnet_area,torch_bilinear,torch_antialias,dali_bilinear,dali_antialias"
)


def run_row(name: str, shards: Path, a: argparse.Namespace, code: str | None) -> Any:
    """One run of a recordkit row in a fresh process (``--row``), with recordkit imported from
    ``code`` (another checkout, e.g. the commit before a change) or this one."""
    import subprocess

    cmd = [sys.executable, str(Path(__file__).resolve()), "--case", "rrc480", "--row", name]
    cmd += ["--row-shards", str(shards), "--workers", str(a.workers), "--epochs", str(a.epochs)]
    cmd += ["--warmup", str(a.warmup), "--batch-size", str(a.batch_size)]
    if code:
        cmd += ["--code", code]
    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return tuple(tuple(w) for w in res["windows"])


def one_row(a: argparse.Namespace) -> dict[str, Any]:
    """``--row``: the recordkit row ``a.row`` once on ``a.row_shards``; its two windows."""
    backend, kind = a.row.split("_")
    factory = bench_recordkit(Path(a.row_shards), backend, a, kind == "antialias")
    import recordkit

    return {"windows": run(factory, a.epochs, a.warmup), "recordkit": recordkit.__file__}


def _add_ratios(r: dict[str, Any], ref: dict[str, Any], name: str) -> None:
    """Put ``{steady,epoch}_vs_<name>`` (rate ÷ ref's) and ``cpu_vs_<name>`` (ref's CPU per
    image ÷ r's) into ``r``, where both sides have the figure."""
    for k in ("steady", "epoch"):
        key = f"{k}_images_per_sec"
        if r[key] and ref[key]:
            r[f"{k}_vs_{name}"] = round(r[key] / ref[key], 2)
    if r["steady_cpu_us_per_image"] and ref["steady_cpu_us_per_image"]:
        r[f"cpu_vs_{name}"] = round(
            ref["steady_cpu_us_per_image"] / r["steady_cpu_us_per_image"], 2
        )


def main_rrc480(a: argparse.Namespace) -> dict[str, Any]:
    """The ``--case rrc480`` measurement (module docstring)."""
    with tempfile.TemporaryDirectory(prefix="rk-bench-") as tmp:
        folder = a.images or Path(tmp) / "images"
        items = make_folder(folder, a.count)
        info = pack_rrc480(folder, items, a.packs or Path(tmp) / "packs", a)
        shards = info.pop("shards")
        names = (a.only or RRC480_ROWS).split(",")
        if "rec" not in info:
            skipped = [n for n in names if n.startswith("mxnet")]
            names = [n for n in names if not n.startswith("mxnet")]
            info["note"] = f"no --mxnet-python/--im2rec: skipped {', '.join(skipped)}"
        rows: dict[str, Any] = {
            "mxnet_bilinear": lambda: run_mxnet(info, 1, a),
            "mxnet_area": lambda: run_mxnet(info, 3, a),
        }
        for name in RRC480_ROWS.split(","):
            if not name.startswith("mxnet"):
                rows[name] = lambda name=name: run_row(name, shards, a, None)
                rows[f"{name}@base"] = lambda name=name: run_row(name, shards, a, a.baseline)
        if a.baseline:
            names += [f"{n}@base" for n in names if not n.startswith("mxnet")]
            info["baseline"] = a.baseline
        runs: dict[str, list[Any]] = {n: [] for n in names}
        for _ in range(a.repeats):  # interleaved, so a burst of load hits every row
            for name in names:
                runs[name].append(rows[name]())
        results = {name: summarize(runs[name]) for name in names}
    for name, r in results.items():  # like against like: the same resize filter
        row = name.split("@")[0]
        base = results.get("mxnet_bilinear" if row.endswith("bilinear") else "mxnet_area")
        if base and not name.startswith("mxnet"):
            _add_ratios(r, base, "mxnet")
        before = results.get(f"{name}@base")
        if before:  # this checkout against the baseline checkout, same row
            _add_ratios(r, before, "base")
    info = {k: str(v) if isinstance(v, Path) else v for k, v in info.items()}
    return {"case": "rrc480", "pack": info, "results": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--case",
        choices=("passthrough", "rrc480"),
        default="passthrough",
        help="passthrough: rows (a)-(d) on the original JPEGs; rrc480: records at 480 px, "
        "equal work against MXNet's ImageRecordIter",
    )
    ap.add_argument("--images", type=Path, default=None, help="image folder to (re)use")
    ap.add_argument("--count", type=int, default=None, help="images (1000; rrc480: 1200)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2, help="timed whole epochs after epoch 0")
    ap.add_argument("--warmup", type=int, default=3, help="untimed batches of epoch 0")
    ap.add_argument(
        "--no-antialias",
        action="store_true",
        help="training resize without antialiasing for (a), (b), (d) (Augment(train_antialias="
        "False); the default, bilinear + antialias, is DALI's ResNet-50 recipe)",
    )
    ap.add_argument("--repeats", type=int, default=3, help="median of this many runs")
    ap.add_argument(
        "--only",
        default=None,
        help="comma-separated subset (passthrough: dali_shards,torch_shards,imagefolder,"
        f"dali_files; rrc480: {RRC480_ROWS})",
    )
    ap.add_argument("--mxnet-python", default=None, help="Python with mxnet 1.9.1 (rrc480)")
    ap.add_argument("--im2rec", default=None, help="MXNet's tools/im2rec.py (rrc480)")
    ap.add_argument(
        "--packs",
        type=Path,
        default=None,
        help="rrc480: keep both tools' packs here and reuse them when present (default: a "
        "temporary directory)",
    )
    ap.add_argument(
        "--baseline",
        default=None,
        help="rrc480: another checkout of recordkit (e.g. `git worktree add /tmp/base COMMIT`); "
        "each recordkit row is run with it too, as ROW@base, interleaved, with ratios",
    )
    ap.add_argument("--row", default=None, help=argparse.SUPPRESS)  # one row, for run_row
    ap.add_argument("--row-shards", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--code", default=None, help=argparse.SUPPRESS)  # recordkit from here
    a = ap.parse_args()
    if a.code:
        sys.path.insert(0, str(Path(a.code).resolve()))
    if a.count is None:
        a.count = 1200 if a.case == "rrc480" else 1000
    load_before = [round(x, 2) for x in os.getloadavg()]
    import torch

    torch.set_num_threads(1)  # the main process only normalizes; workers do the work
    if a.row:
        print(json.dumps(one_row(a)))
        return

    common = {
        "images": a.count,
        "image_size": 224,
        "batch_size": a.batch_size,
        "epochs": a.epochs,
        "warmup": a.warmup,
        "workers": a.workers,
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
    }
    if a.case == "rrc480":
        out = {**common, **main_rrc480(a)}
        out["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(out, indent=2))
        return
    with tempfile.TemporaryDirectory(prefix="rk-bench-") as tmp:
        folder = a.images or Path(tmp) / "images"
        items = make_folder(folder, a.count)
        shards = Path(tmp) / "shards"
        make_shards(folder, items, shards, a.shards)
        nbytes = sum((folder / rel).stat().st_size for rel, *_ in items)
        factories = {
            "dali_shards": lambda: bench_recordkit(shards, "dali", a),
            "torch_shards": lambda: bench_recordkit(shards, "torch", a),
            "imagefolder": lambda: bench_imagefolder(folder, a),
            "dali_files": lambda: bench_dali_files(folder, a),
        }
        names = (a.only or "dali_shards,torch_shards,imagefolder,dali_files").split(",")
        runs: dict[str, list[Any]] = {n: [] for n in names}
        for _ in range(a.repeats):  # interleaved, so a burst of load hits every loader
            for name in names:
                runs[name].append(run(factories[name](), a.epochs, a.warmup))
        results = {name: summarize(runs[name]) for name in names}
        base = results.get("imagefolder")
        if base:
            for r in results.values():
                for k in ("steady", "epoch"):
                    key = f"{k}_images_per_sec"
                    if r[key] and base[key]:
                        r[f"{k}_vs_imagefolder"] = round(r[key] / base[key], 2)
    print(
        json.dumps(
            {
                **common,
                "mean_jpeg_kb": round(nbytes / len(items) / 1e3, 1),
                "train_antialias": not a.no_antialias,
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
