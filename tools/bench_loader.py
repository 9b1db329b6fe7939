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


def run(factory: Any, epochs: int, warmup: int) -> tuple[float, float]:
    """Two rates in images/s: ``steady`` and ``epochs``.

    ``steady``: epoch 0 after its first ``warmup`` batches, to the end of that epoch (no epoch
    boundary inside). ``epochs``: epochs 1..``epochs`` timed whole, so each epoch's start-up
    (DataLoader worker hand-off, DALI pipeline build, shuffle-buffer fill) is included.
    """
    images = 0
    start = time.perf_counter()
    for seen, (x, _) in enumerate(factory(0), 1):
        if seen == warmup:
            start = time.perf_counter()
        elif seen > warmup:
            images += x.shape[0]
    steady = images / (time.perf_counter() - start)
    images = 0
    start = time.perf_counter()
    for e in range(1, epochs + 1):
        for x, _ in factory(e):
            images += x.shape[0]
    return steady, images / (time.perf_counter() - start)


def bench_recordkit(shards: Path, backend: str, a: argparse.Namespace) -> Any:
    from recordkit.loaders import Augment, make_loader

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
        augment=Augment(train_antialias=not a.no_antialias),
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=Path, default=None, help="image folder to (re)use")
    ap.add_argument("--count", type=int, default=1000)
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
        default="dali_shards,torch_shards,imagefolder,dali_files",
        help="comma-separated subset",
    )
    a = ap.parse_args()
    load_before = [round(x, 2) for x in os.getloadavg()]
    import torch

    torch.set_num_threads(1)  # the main process only normalizes; workers do the work

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
        results: dict[str, Any] = {}
        names = a.only.split(",")
        runs: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        for _ in range(a.repeats):  # interleaved, so a burst of load hits every loader
            for name in names:
                runs[name].append(run(factories[name](), a.epochs, a.warmup))
        for name in names:
            results[name] = {
                "steady_images_per_sec": round(statistics.median(r[0] for r in runs[name]), 1),
                "epoch_images_per_sec": round(statistics.median(r[1] for r in runs[name]), 1),
                "runs": [[round(x, 1) for x in r] for r in runs[name]],
            }
        base = results.get("imagefolder")
        if base:
            for r in results.values():
                for k in ("steady", "epoch"):
                    key = f"{k}_images_per_sec"
                    r[f"{k}_vs_imagefolder"] = round(r[key] / base[key], 2)
    print(
        json.dumps(
            {
                "images": a.count,
                "mean_jpeg_kb": round(nbytes / len(items) / 1e3, 1),
                "image_size": 224,
                "batch_size": a.batch_size,
                "epochs": a.epochs,
                "warmup": a.warmup,
                "workers": a.workers,
                "train_antialias": not a.no_antialias,
                "cpus": os.cpu_count(),
                "loadavg_before": load_before,
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
