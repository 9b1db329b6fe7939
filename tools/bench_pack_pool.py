"""``--pool threads`` vs ``processes`` vs ``auto`` on tiny RGB PNGs; prints one JSON object.

For each size N in ``--sizes``, makes N 32-px RGB PNGs in 1,000 folders (the same generator as
``tools/bench_scale.py``; cached under ``--work``), lists them, then runs
``python -m recordkit -v pack PREFIX ROOT --threads T --pool P --quality 95`` for the three
pools, alternating, ``--repeat`` times, each a fresh process. Reports wall and CPU seconds (best
and all), which pool ``auto`` took (from its log line), and whether every run wrote the same
shards.

Usage::

    .venv/bin/python tools/bench_pack_pool.py --work /tmp/pool --sizes 5000,10000,30000 \\
        --repeat 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from bench_scale import generate  # noqa: E402

POOLS = ("threads", "processes", "auto")


def _run(cmd: list[str]) -> tuple[float, float, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        err.seek(0)
        log = err.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(cmd)} failed:\n{log[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, log


def _auto_took(log: str) -> str:
    if "thumbnails (" in log and "starting" in log:
        return "processes (from the header sample, before planning)"
    if "us each on threads: starting" in log:
        return "processes (after measuring on threads)"
    return "threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="cache directory for the images")
    ap.add_argument("--sizes", default="10000", help="comma-separated image counts")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    py = sys.executable
    res: dict = {"threads": args.threads, "repeat": args.repeat, "sizes": {}}
    load0 = os.getloadavg()[0]
    for n in (int(s) for s in args.sizes.split(",")):
        root = args.work / f"n{n}" / "images"
        generate(root, n, 1000, 32, 4096)
        prefix = args.work / f"n{n}" / "list"
        subprocess.run(
            [py, "-m", "recordkit", "list", str(prefix), str(root), "--recursive"],
            check=True,
            stdout=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        runs: dict[str, list[tuple[float, float]]] = {p: [] for p in POOLS}
        took: set[str] = set()
        digests: set[str] = set()
        for _ in range(args.repeat):
            for pool in POOLS:
                out = args.work / f"n{n}" / f"out-{pool}"
                cmd = [py, "-m", "recordkit", "-v", "pack", str(prefix), str(root)]
                cmd += ["--threads", str(args.threads), "--pool", pool, "--quality", "95"]
                cmd += ["--overwrite", "-q", "--out", str(out)]
                wall, cpu, log = _run(cmd)
                runs[pool].append((wall, cpu))
                if pool == "auto":
                    took.add(_auto_took(log))
                h = hashlib.sha256()
                for p in sorted(out.glob("*.tfrecord")):
                    h.update(p.read_bytes())
                digests.add(h.hexdigest())
        row: dict = {}
        for pool, vals in runs.items():
            best = min(vals)
            row[pool] = {
                "best_s": round(best[0], 3),
                "cpu_s_of_best": round(best[1], 2),
                "all_s": [round(w, 3) for w, _ in vals],
            }
        row["auto_took"] = sorted(took)
        row["same_shards"] = len(digests) == 1
        res["sizes"][str(n)] = row
    res["load_before_after"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
