"""Training throughput: compute only (synthetic) vs loader only (io) vs real training.

Runs :func:`recordkit_train.engine.benchmark` in three modes on the same model and batch:

  synthetic  random tensors made once on the device: what the model step can do
  io         the training loader alone (MXNet's --test-io): what the data path can feed
  real       the training step fed by the loader, exactly as ``recordkit-train run`` runs it

and prints one JSON object with images/s per mode (median of ``--repeats``), the ratio
real / synthetic (1.0: the loader costs nothing) and ``loader_cost`` = 1 - that ratio. On a
GPU the model and the loader use different hardware, so the ratio shows whether the loader
keeps up; on a CPU both share the same cores and the ratio is bound to be lower.

Data: ``--data shards/`` (packed by ``recordkit pack``), or by default ``--count`` generated
ImageNet-sized photo-like JPEGs (tools/bench_loader.py's generator) packed as they are.

    python tools/bench_train.py --arch resnet50 --batch-size 256 --precision fp16 \\
        --channels-last --iters 100 --count 3000 --workers 12          # a GPU
    python tools/bench_train.py --arch resnet18 --image-size 64 --batch-size 32 \\
        --iters 30 --count 400 --workers 1                              # this 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

MODES = ("synthetic", "io", "real")


def _device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="shard directory (else generated)")
    ap.add_argument("--count", type=int, default=1000, help="generated images (no --data)")
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--precision", choices=["fp16", "bf16", "fp32"], default=None)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--iters", type=int, default=100, help="steps per mode (first 1/5 untimed)")
    ap.add_argument("--workers", type=int, default=None, help="loader workers / DALI threads")
    ap.add_argument("--backend", choices=["auto", "dali", "torch"], default="auto")
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None)
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset")
    ap.add_argument("--repeats", type=int, default=1, help="median of this many runs per mode")
    a = ap.parse_args()

    import torch

    from recordkit_train.config import TrainConfig
    from recordkit_train.engine import benchmark

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    modes = [m for m in a.modes.split(",") if m]
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="rk-bench-train-") as tmp:
        data = a.data
        if data is None and any(m != "synthetic" for m in modes):
            from bench_loader import make_folder, make_shards

            folder = Path(tmp) / "images"
            items = make_folder(folder, a.count)
            data = Path(tmp) / "shards"
            make_shards(folder, items, data, shards=max(1, min(16, a.count // 250)))
        config = TrainConfig(
            data=str(data) if data else None,
            out=str(Path(tmp) / "run"),
            arch=a.arch,
            batch_size=a.batch_size,
            image_size=a.image_size,
            precision=a.precision,
            channels_last=a.channels_last or None,
            iters=a.iters,
            workers=a.workers,
            backend=a.backend,
            print_freq=max(1, a.iters // 5),
            synthetic="synthetic" in modes and data is None,
        )
        results: dict[str, Any] = {}
        peak: dict[str, float] = {}
        runs: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(a.repeats):
            for mode in modes:
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                runs[mode].append(benchmark(config, mode, device=device)["samples_per_s"])
                if device == "cuda":
                    peak[mode] = max(peak.get(mode, 0.0), torch.cuda.max_memory_allocated() / 2**30)
        for mode in modes:
            results[mode] = {
                "images_per_sec": round(statistics.median(runs[mode]), 1),
                "runs": [round(r, 1) for r in runs[mode]],
            }
            if mode in peak:
                results[mode]["peak_gpu_mem_gib"] = round(peak[mode], 2)
    summary: dict[str, Any] = {}
    if "synthetic" in results and "real" in results:
        ratio = results["real"]["images_per_sec"] / results["synthetic"]["images_per_sec"]
        summary = {"real_vs_synthetic": round(ratio, 3), "loader_cost": round(1 - ratio, 3)}
    if "synthetic" in results and "io" in results:
        io_ratio = results["io"]["images_per_sec"] / results["synthetic"]["images_per_sec"]
        summary["io_vs_synthetic"] = round(io_ratio, 3)
    resolved = config.resolved(device)
    print(
        json.dumps(
            {
                "device": _device_name(device),
                "torch": torch.__version__,
                "arch": a.arch,
                "batch_size": a.batch_size,
                "image_size": a.image_size,
                "precision": resolved.precision,
                "channels_last": resolved.channels_last,
                "iters": a.iters,
                "backend": a.backend,
                "workers": a.workers,
                "data": str(a.data) if a.data else f"{a.count} generated JPEGs",
                "loadavg_before": load_before,
                **results,
                **summary,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
