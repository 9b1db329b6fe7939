"""Where the time goes when training on tiny (28-32 px) images on a few CPU cores.

For each architecture and each setting (intra-op threads x loader workers x memory format), a
training step is split into its parts, each timed with ``time.perf_counter`` (CPU ops are
synchronous, so the split is exact):

  load      next(loader): waiting for a batch (workers > 0) or making it (workers = 0)
  forward   model(images) + loss
  backward  loss.backward()
  optimizer optimizer.step() + zero_grad()

plus ``step_s`` (their sum, per batch) and ``images_per_s``. The loader is also timed alone
(``io``: samples/s with no model). Everything runs in this one process, settings alternating
within each repeat, so ratios between settings are comparable even on a busy machine; absolute
figures move with the machine's load (``loadavg`` before and after are printed).

Data: ``--data shards/`` (e.g. Fashion-MNIST from tools/make_fashion_mnist.py), else
``--count`` generated 28x28 grayscale PNGs packed on the fly. Hardware is probed at run time:
the thread settings default to 1 .. the CPUs this process may use.

    python tools/bench_small_input.py --data data/fmnist/shards \\
        --archs squeezenet1_1,resnet18 --image-size 28 --batch-size 128 --iters 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _make_data(tmp: Path, count: int) -> Path:
    import numpy as np

    from recordkit.interop.idx import MNIST_CLASSES, write_idx_split
    from recordkit.pack import PackOptions, pack  # type: ignore[attr-defined]

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = (np.arange(count) % 10).astype(np.uint8)
    write_idx_split(images, labels, tmp / "img", tmp / "d", "train", MNIST_CLASSES)
    pack(str(tmp / "d"), str(tmp / "img"), PackOptions(out=str(tmp / "shards"), encoding=".png"))
    return tmp / "shards"


def _setting_name(s: dict[str, Any]) -> str:
    fmt = "cl" if s["channels_last"] else "nchw"
    return f"threads={s['threads']},workers={s['workers']},{fmt}"


def _time_steps(arch: str, a: argparse.Namespace, data: Path, s: dict[str, Any]) -> dict:
    import torch
    from torch import nn

    from recordkit.loaders import make_loader
    from recordkit_train.models import build_model, default_small_input

    torch.set_num_threads(s["threads"])
    torch.manual_seed(0)
    small = default_small_input(arch, a.image_size)
    model = build_model(arch, 10, image_size=a.image_size, small_input=small,
                        channels_last=s["channels_last"])  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    loader = make_loader(str(data), "train", a.batch_size, a.image_size, backend="torch",
                         num_workers=s["workers"], channels_last=s["channels_last"],
                         drop_last=True)  # fmt: skip
    parts = {"load": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    it = iter(loader)
    warm = max(2, a.iters // 5)
    n = 0
    for i in range(warm + a.iters):
        t0 = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        t1 = time.perf_counter()
        loss = crit(model(x), y)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if i >= warm:
            n += 1
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                parts[k] += v
    del it
    close = getattr(loader, "close", None)
    if close:
        close()
    step = sum(parts.values()) / n
    return {
        **{f"{k}_ms": round(1000 * v / n, 2) for k, v in parts.items()},
        "step_ms": round(1000 * step, 2),
        "images_per_s": round(a.batch_size / step, 1),
    }


def _time_io(a: argparse.Namespace, data: Path, workers: int) -> float:
    from recordkit.loaders import make_loader

    loader = make_loader(str(data), "train", a.batch_size, a.image_size, backend="torch",
                         num_workers=workers, drop_last=True)  # fmt: skip
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    for _ in range(a.iters):
        next(it)
    rate = a.iters * a.batch_size / (time.perf_counter() - t0)
    del it
    close = getattr(loader, "close", None)
    if close:
        close()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--count", type=int, default=2000, help="generated images (no --data)")
    ap.add_argument("--archs", default="squeezenet1_1,resnet18")
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", default=None, help="comma list; default 1..usable CPUs")
    ap.add_argument("--workers", default=None, help="comma list; default 0,1")
    ap.add_argument("--channels-last", default="0", help="comma list of 0/1")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()

    import torch

    cpus = len(os.sched_getaffinity(0))
    threads = [int(t) for t in a.threads.split(",")] if a.threads else list(range(1, cpus + 1))
    workers = [int(w) for w in a.workers.split(",")] if a.workers else [0, 1]
    formats = [bool(int(c)) for c in a.channels_last.split(",")]
    settings = [
        {"threads": t, "workers": w, "channels_last": c}
        for t in threads
        for w in workers
        for c in formats
    ]
    out: dict[str, Any] = {
        "cpus": cpus,
        "torch": torch.__version__,
        "default_threads": torch.get_num_threads(),
        "image_size": a.image_size,
        "batch_size": a.batch_size,
        "iters": a.iters,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory(prefix="rk-bench-small-") as tmp:
        data = a.data or _make_data(Path(tmp), a.count)
        out["data"] = str(a.data) if a.data else f"{a.count} generated 28x28 PNGs"
        io_runs: dict[int, list[float]] = {w: [] for w in workers}
        runs: dict[str, dict[str, list[dict]]] = {}
        for _ in range(a.repeats):
            for w in workers:
                io_runs[w].append(_time_io(a, data, w))
            for arch in a.archs.split(","):
                for s in settings:
                    r = _time_steps(arch, a, data, s)
                    runs.setdefault(arch, {}).setdefault(_setting_name(s), []).append(r)
                    print(arch, _setting_name(s), r, file=sys.stderr, flush=True)
    out["io_images_per_s"] = {
        f"workers={w}": round(statistics.median(v), 1) for w, v in io_runs.items()
    }
    out["archs"] = {
        arch: {
            name: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            for name, rs in by_setting.items()
        }
        for arch, by_setting in runs.items()
    }
    out["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
