"""Start-up cost of the ``recordkit pack`` command: a small pack, whole command; prints JSON.

Runs ``python -m recordkit pack LIST ROOT --resize 480 --quality 95 --threads 2 --upscale -q``
on the first ``--images`` entries of ``PREFIX.lst`` for each checkout given (``PYTHONPATH``
pointing at it), alternating, ``--repeat`` times, and reports wall and CPU seconds (min and
median) and the sha256 of each checkout's shards (they must agree).

Usage::

    .venv/bin/python tools/bench_pack_start.py --lst DIR/bench.lst --root DIR/img \\
        --repeat 10 /path/to/base-checkout /path/to/this-checkout
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkouts", nargs="+", type=Path)
    ap.add_argument("--lst", type=Path, required=True, help="an im2rec .lst of ROOT")
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lines = args.lst.read_text().splitlines(keepends=True)[: args.images]
        (Path(tmp) / "small.lst").write_text("".join(lines))
        runs: dict[str, list[tuple[float, float]]] = {str(c): [] for c in args.checkouts}
        load0 = os.getloadavg()[0]
        for _ in range(args.repeat):
            for k, c in enumerate(args.checkouts):
                out = Path(tmp) / f"out{k}"
                cmd = [sys.executable, "-m", "recordkit", "pack", f"{tmp}/small", str(args.root)]
                cmd += ["--resize", "480", "--quality", "95", "--threads", "2", "--upscale"]
                cmd += ["--overwrite", "-q", "--out", str(out)]
                env = dict(os.environ, PYTHONPATH=str(c))
                t = time.perf_counter()
                proc = subprocess.Popen(
                    cmd, env=env, cwd=c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                _, status, usage = os.wait4(proc.pid, 0)
                wall = time.perf_counter() - t
                if os.waitstatus_to_exitcode(status):
                    raise SystemExit(f"{' '.join(cmd)} failed in {c}")
                runs[str(c)].append((wall, usage.ru_utime + usage.ru_stime))
        res: dict = {"images": len(lines), "repeat": args.repeat}
        for k, (name, vals) in enumerate(runs.items()):
            walls, cpus = [w for w, _ in vals], [x for _, x in vals]
            shards = sorted((Path(tmp) / f"out{k}").glob("*.tfrecord"))
            res[name] = {
                "wall_min_s": round(min(walls), 3),
                "wall_median_s": round(statistics.median(walls), 3),
                "cpu_min_s": round(min(cpus), 3),
                "cpu_median_s": round(statistics.median(cpus), 3),
                "sha256": [hashlib.sha256(p.read_bytes()).hexdigest() for p in shards],
            }
        res["load_before_after"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
