"""Benchmark ``recordkit pack --out s3://…`` against a local pack followed by an upload; prints
one JSON object.

Starts ``moto`` in server mode on 127.0.0.1 (a subprocess; needs ``moto[server]`` and
``s3fs``), builds (seeded) or takes an image set and its lists, then, alternating the two,
best of ``--repeat``:

* ``local``: :func:`recordkit.pack.pack` into a local directory;
* ``upload_after``: uploading those shards and the manifest with s3fs, one file after
  another (what "pack, then ``aws s3 cp --recursive``" adds, give or take the tool's
  parallelism);
* ``remote``: :func:`recordkit.pack.pack` with ``out="s3://…"``: shards staged locally and
  uploaded while the next is packed.

``overlap_saved_s`` is ``local + upload_after - remote``: how much of the upload the packing
hid. moto on the loopback stands in for S3, so absolute upload rates are not S3's. moto is
a Python server on the same CPUs as the packer, so without a link limit the "upload" is CPU
work competing with packing; ``--link-MBps R`` puts a TCP relay in front of it that passes
at most R MB/s towards the server (sleeping, not computing), as a network link would: then
the upload is I/O-bound, as to real object storage, and packing can hide it.

Usage::

    .venv/bin/python tools/bench_pack_upload.py                      # 200 generated JPEGs
    .venv/bin/python tools/bench_pack_upload.py --images DIR --threads 4 --repeat 3
    .venv/bin/python tools/bench_pack_upload.py --link-MBps 10        # a 10 MB/s uplink
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contextlib

from bench_pack import make_images  # noqa: E402

from recordkit.imaging import ImageOptions  # noqa: E402
from recordkit.listing import make_lists  # noqa: E402
from recordkit.pack import PackOptions, pack  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_moto() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.1)


def _relay(target: str, rate: float) -> str:
    """A TCP relay to ``target`` passing at most ``rate`` bytes/s towards it (sleeping, as a
    network link's bandwidth would); returns its ``http://`` URL."""
    host, port = target.removeprefix("http://").split(":")
    server = socket.create_server(("127.0.0.1", 0))

    def pump(src: socket.socket, dst: socket.socket, limit: float | None) -> None:
        try:
            while data := src.recv(64 * 1024):
                dst.sendall(data)
                if limit:
                    time.sleep(len(data) / limit)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        while True:
            client, _ = server.accept()
            upstream = socket.create_connection((host, int(port)))
            for a, b, lim in ((client, upstream, rate), (upstream, client, None)):
                threading.Thread(target=pump, args=(a, b, lim), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return f"http://127.0.0.1:{server.getsockname()[1]}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, help="image folder (default: generate --count)")
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resize", type=int, default=0)
    ap.add_argument("--shard-size", type=int, default=20, help="records per shard")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--link-MBps", type=float, default=0, help="uplink limit (0: none)")
    args = ap.parse_args(argv)

    import s3fs

    work = Path(tempfile.mkdtemp(prefix="bench-pack-upload-"))
    proc, endpoint = _start_moto()
    if args.link_MBps > 0:
        endpoint = _relay(endpoint, args.link_MBps * 1e6)
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        root = args.images
        if root is None:
            root = work / "images"
            make_images(root, args.count, args.seed)
        prefix = work / "bench"
        make_lists(prefix, root, recursive=True)
        image = ImageOptions(resize=args.resize)
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.call_s3("create_bucket", Bucket="bench")
        times: dict[str, list[float]] = {"local": [], "upload_after": [], "remote": []}
        result = None
        for k in range(args.repeat):
            out = work / f"local{k}"
            t = time.perf_counter()
            result = pack(
                prefix,
                root,
                PackOptions(out=out, image=image, threads=args.threads, shard_size=args.shard_size),
            )
            times["local"].append(time.perf_counter() - t)
            t = time.perf_counter()
            for f in sorted(out.iterdir()):
                fs.put_file(str(f), f"bench/after{k}/{f.name}")
            times["upload_after"].append(time.perf_counter() - t)
            t = time.perf_counter()
            pack(
                prefix,
                root,
                PackOptions(
                    out=f"s3://bench/remote{k}",
                    image=image,
                    threads=args.threads,
                    shard_size=args.shard_size,
                    staging=work / f"staging{k}",
                ),
            )
            times["remote"].append(time.perf_counter() - t)
            shutil.rmtree(out)
        assert result is not None
        best = {name: min(v) for name, v in times.items()}
        report = {
            "images": result.images,
            "shards": sum(s.shards for s in result.splits.values()),
            "MB_out": round(result.bytes_out / 1e6, 1),
            "threads": args.threads,
            "link_MBps": args.link_MBps or None,
            "seconds": {name: round(v, 3) for name, v in best.items()},
            "all_seconds": {name: [round(x, 3) for x in v] for name, v in times.items()},
            "upload_MB_per_s": round(result.bytes_out / 1e6 / best["upload_after"], 1),
            "remote_over_local": round(best["remote"] / best["local"], 3),
            "overlap_saved_s": round(best["local"] + best["upload_after"] - best["remote"], 3),
            "loadavg_after": os.getloadavg()[0],
        }
        print(json.dumps(report, indent=2))
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
