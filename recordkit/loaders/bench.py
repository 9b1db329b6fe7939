"""Loader throughput: images per second of a loader alone (MXNet's ``--test-io``)."""

from __future__ import annotations

import time
from typing import Any

from recordkit.loaders.factory import Loader

__all__ = ["measure_throughput"]


def measure_throughput(loader: Loader, batches: int = 200, warmup: int = 10) -> dict[str, Any]:
    """Iterate ``warmup + batches`` batches (re-entering epochs as needed) and time the last ones.

    The clock starts after ``warmup`` batches (pipeline build, worker start-up, first-touch file
    reads are excluded; with ``warmup=0`` they are included). On CUDA the device is
    synchronized before each clock reading.

    Args:
        loader: Any :class:`~recordkit.loaders.Loader`.
        batches: Timed batches.
        warmup: Untimed batches first.

    Returns:
        ``{"images": n, "batches": k, "seconds": t, "images_per_sec": n / t, "warmup": w}``.

    Raises:
        ValueError: The loader yields no batches.
    """
    import torch

    if len(loader) == 0:
        raise ValueError("the loader yields no batches (split smaller than one batch?)")

    def sync(x: Any) -> None:
        if isinstance(x, torch.Tensor) and x.is_cuda:
            torch.cuda.synchronize(x.device)

    seen = images = 0
    start = time.perf_counter()  # with warmup=0 the start-up is part of the timing
    epoch = 0
    x: Any = None
    while seen < warmup + batches:
        loader.set_epoch(epoch)
        for x, _ in loader:
            seen += 1
            if seen == warmup:
                sync(x)
                start = time.perf_counter()
            elif seen > warmup:
                images += x.shape[0]
            if seen == warmup + batches:
                break
        epoch += 1
    sync(x)
    seconds = time.perf_counter() - start
    return {
        "images": images,
        "batches": batches,
        "seconds": round(seconds, 4),
        "images_per_sec": round(images / seconds, 2) if seconds > 0 else float("nan"),
        "warmup": warmup,
    }
