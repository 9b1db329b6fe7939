"""Remote reading throughput: nginx on 127.0.0.1 vs local disk, on the same shards.

Generates photo-like JPEGs (tools/bench_loader.py's generator), packs them into shards,
serves the shard directory with Debian's nginx on 127.0.0.1 (tests/remote_servers.py; a
generated config, byte ranges on), and measures:

  ``random_local`` / ``random_http``   every record once in a random order, raw bytes with
                                       CRC checks (``Split.read_bytes``), ``--threads`` threads:
                                       a local ``pread`` vs one HTTP range request per record
  ``stream_local``                     every shard read sequentially from disk (page cache warm)
  ``cache_fill_http``                  every shard downloaded into an empty shard cache
                                       (``ShardCache.fetch``: 8 MiB range requests, CRCs, index
                                       and SHA-256 checked, written, renamed)
  ``loader_local`` / ``loader_http_direct`` / ``loader_http_cache``
                                       ``make_loader(backend="torch")`` training batches (224 px,
                                       random resized crop, flip, normalize), ``--workers``
                                       processes, images/s over whole epochs after a warm-up
                                       epoch; the cache run has a limit of half the dataset (at
                                       least 3 shards), so
                                       each epoch downloads its shards again
  ``dali_local`` / ``dali_http_cache`` (``--dali``, DALI installed)
                                       the same with ``backend="dali"`` on the CPU
                                       (``device="cpu"``, ``--workers`` DALI threads): the local
                                       ``fn.readers.tfrecord`` pipeline vs the remote split
                                       streamed through the cache (limit half the dataset,
                                       ``fn.external_source`` fed by ``StreamedBatches``); the
                                       cache's bytes are sampled during the epochs
                                       (``peak_cache_bytes``)
  ``dali_http_warm``                   (``--dali``) the streamed pipeline with a cache that holds
                                       the whole dataset, warm after the warm-up epoch: the
                                       external source's cost without the downloads
  ``dali_source_cache``                (``--dali``) the external source alone: the batches
                                       ``StreamedBatches`` hands DALI (read from the cache,
                                       CRCs, Example parsing), no decoding: the most a GPU
                                       pipeline could take from it on one thread

Prints one JSON object. Localhost has no network latency or bandwidth limit: the figures
bound the client-side overhead (HTTP, fsspec, verification), not a real object store.

    python tools/bench_remote.py --count 800 --shards 8 --workers 2 --threads 4 [--dali]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tools"))


def _rate(n: int, nbytes: int, seconds: float) -> dict[str, float]:
    return {
        "seconds": round(seconds, 3),
        "records_per_sec": round(n / seconds, 1),
        "mb_per_sec": round(nbytes / seconds / 1e6, 1),
    }


def random_reads(split: Any, threads: int, seed: int = 0) -> dict[str, float]:
    order = np.random.default_rng(seed).permutation(len(split)).tolist()
    split.load_index()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        nbytes = sum(len(b) for b in pool.map(split.read_bytes, order, chunksize=16))
    return _rate(len(order), nbytes, time.perf_counter() - t0)


def stream_local(split: Any) -> dict[str, float]:
    t0 = time.perf_counter()
    nbytes = 0
    for p in split.files:
        with open(p, "rb") as f:
            while chunk := f.read(8 << 20):
                nbytes += len(chunk)
    return _rate(len(split), nbytes, time.perf_counter() - t0)


def cache_fill(url: str, cache_dir: Path) -> dict[str, float]:
    import recordkit
    from recordkit.loaders.streaming import cached_split
    from recordkit.remote.cache import ShardCache

    shutil.rmtree(cache_dir, ignore_errors=True)
    split = cached_split(recordkit.open(url)["train"], ShardCache.create(cache_dir, 10**12))
    split.load_index()
    t0 = time.perf_counter()
    for r in split.readers:
        r.ensure()
    return _rate(len(split), split.nbytes, time.perf_counter() - t0)


def loader_rate(path: Any, a: argparse.Namespace, remote: Any = None) -> dict[str, float]:
    from recordkit.loaders import make_loader

    ld = make_loader(
        path, "train", a.batch_size, 224, backend="torch", num_workers=a.workers, rank=0,
        world_size=1, remote=remote,
    )  # fmt: skip
    ld.set_epoch(0)
    for _ in ld:  # warm-up epoch: workers, page cache, connections
        pass
    n, t0 = 0, time.perf_counter()
    for e in range(1, 1 + a.epochs):
        ld.set_epoch(e)
        for images, _ in ld:
            n += images.shape[0]
    dt = time.perf_counter() - t0
    return {"seconds": round(dt, 3), "images_per_sec": round(n / dt, 1), "images": n}


def dali_rate(path: Any, a: argparse.Namespace, remote: Any = None) -> dict[str, float]:
    """``loader_rate`` with the DALI backend on the CPU; with ``remote``, the cache's peak
    bytes sampled every 5 ms during the timed epochs."""
    import threading

    from recordkit.loaders import make_loader

    ld = make_loader(
        path, "train", a.batch_size, 224, backend="dali", device="cpu", num_workers=a.workers,
        rank=0, world_size=1, remote=remote,
    )  # fmt: skip
    ld.set_epoch(0)
    for _ in ld:  # warm-up epoch: pipeline build, page cache, connections
        pass
    peak, stop = [0], threading.Event()
    cache = remote.cache() if remote is not None else None

    def watch() -> None:
        while cache is not None and not stop.wait(0.005):
            peak[0] = max(peak[0], cache.usage())

    t = threading.Thread(target=watch)
    t.start()
    n, t0 = 0, time.perf_counter()
    try:
        for e in range(1, 1 + a.epochs):
            ld.set_epoch(e)
            for images, _ in ld:
                n += images.shape[0]
    finally:
        dt = time.perf_counter() - t0
        stop.set()
        t.join()
        ld.close()
    out = {"seconds": round(dt, 3), "images_per_sec": round(n / dt, 1), "images": n}
    if cache is not None:
        out["peak_cache_bytes"] = peak[0]
    return out


def dali_source_rate(url: str, a: argparse.Namespace, remote: Any) -> dict[str, float]:
    """What the DALI loader's external source produces alone: whole epochs of batches read
    through a warm cache (no limit pressure), parsed, no decoding."""
    from recordkit.loaders import make_loader

    ld = make_loader(
        url, "train", a.batch_size, 224, backend="dali", device="cpu", num_workers=1,
        rank=0, world_size=1, remote=remote,
    )  # fmt: skip
    stream, batches = ld.stream, len(ld)
    for k in range(batches):  # warm-up: fills the cache
        stream.batch(0, k)
    n = nbytes = 0
    t0 = time.perf_counter()
    for e in range(1, 1 + a.epochs):
        for k in range(batches):
            images, _ = stream.batch(e, k)
            n += len(images)
            nbytes += sum(x.nbytes for x in images)
    dt = time.perf_counter() - t0
    stream.close()
    return {**_rate(n, nbytes, dt), "images_per_sec": round(n / dt, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp)")
    ap.add_argument("--count", type=int, default=800)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--threads", type=int, default=4, help="threads for the random reads")
    ap.add_argument("--workers", type=int, default=2, help="loader worker processes")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per loader row")
    ap.add_argument("--repeats", type=int, default=3, help="alternating repeats (median kept)")
    ap.add_argument("--skip-loaders", action="store_true")
    ap.add_argument("--skip-reads", action="store_true", help="no random/stream/fill rows")
    ap.add_argument("--dali", action="store_true", help="add the DALI rows (CPU pipeline)")
    a = ap.parse_args()

    import bench_loader
    from remote_servers import NginxServer, nginx_skip_reason

    import recordkit
    from recordkit.loaders.streaming import RemoteOptions

    if nginx_skip_reason():
        sys.exit(nginx_skip_reason())
    work = a.work or Path(tempfile.mkdtemp(prefix="rk-bench-remote-"))
    www = work / "www"
    shards = www / "ds"
    if not (shards / "recordkit.json").exists():
        items = bench_loader.make_folder(work / "photos", a.count)
        bench_loader.make_shards(work / "photos", items, shards, a.shards)
    out: dict[str, Any] = {
        "count": a.count, "shards": a.shards, "threads": a.threads, "workers": a.workers,
        "batch_size": a.batch_size, "cpus": len(os.sched_getaffinity(0)),
        "load_before": os.getloadavg()[0],
    }  # fmt: skip
    with NginxServer(www, work / "nginx") as server:
        url = f"{server.url}/ds/"
        local_split = recordkit.open(shards)["train"]
        out["dataset_bytes"] = local_split.nbytes
        rows: dict[str, list[dict[str, float]]] = {}
        for _ in range(0 if a.skip_reads else a.repeats):  # alternate: noise hits all alike
            rows.setdefault("random_local", []).append(random_reads(local_split, a.threads))
            remote_split = recordkit.open(url)["train"]
            rows.setdefault("random_http", []).append(random_reads(remote_split, a.threads))
            rows.setdefault("stream_local", []).append(stream_local(local_split))
            rows.setdefault("cache_fill_http", []).append(cache_fill(url, work / "cache"))
        if not a.skip_loaders:
            largest = max(e.bytes for e in local_split.entries)
            half = max(local_split.nbytes // 2, 3 * largest + 1)  # streaming needs 3 shards
            out["cache_limit"] = half
            for _ in range(max(1, a.repeats - 1)):
                rows.setdefault("loader_local", []).append(loader_rate(shards, a))
                rows.setdefault("loader_http_direct", []).append(
                    loader_rate(url, a, RemoteOptions(read="direct"))
                )
                shutil.rmtree(work / "lcache", ignore_errors=True)
                rows.setdefault("loader_http_cache", []).append(
                    loader_rate(url, a, RemoteOptions(work / "lcache", half, read="cache"))
                )
        if a.dali:
            largest = max(e.bytes for e in local_split.entries)
            half = max(local_split.nbytes // 2, 3 * largest + 1)
            out["cache_limit"] = half
            for _ in range(max(1, a.repeats - 1)):
                rows.setdefault("dali_local", []).append(dali_rate(shards, a))
                shutil.rmtree(work / "dcache", ignore_errors=True)
                rows.setdefault("dali_http_cache", []).append(
                    dali_rate(url, a, RemoteOptions(work / "dcache", half, read="cache"))
                )
                shutil.rmtree(work / "scache", ignore_errors=True)  # one copy (ports change)
                rows.setdefault("dali_http_warm", []).append(
                    dali_rate(url, a, RemoteOptions(work / "scache", 10**12, read="cache"))
                )
                rows.setdefault("dali_source_cache", []).append(
                    dali_source_rate(url, a, RemoteOptions(work / "scache", 10**12))
                )
    for name, runs in rows.items():
        key = "images_per_sec" if "images_per_sec" in runs[0] else "mb_per_sec"
        best = sorted(runs, key=lambda r: r[key])[len(runs) // 2]
        out[name] = {**best, "runs": [r[key] for r in runs]}
    out["load_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
