"""Time to the first image of a ``pack()`` (in-process), per checkout, alternating; JSON out.

For each checkout (``PYTHONPATH`` pointing at it), a fresh interpreter imports ``recordkit.cli``
and runs ``pack(PREFIX, ROOT)`` with ``--quality 95 --color 1 --threads 2 --overwrite`` and a
progress callback: reported are the seconds from interpreter start to the imports' end, to the
first processed image (the end of the serial start-up), and to the end, and the CPU seconds of
the main process and of its worker processes. The first checkout's shards must equal the
others' (sha256 compared).

Usage::

    .venv/bin/python tools/bench_pack_first.py --prefix DIR/bench --root DIR/img \\
        --repeat 4 /path/to/base-checkout .
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
from pathlib import Path

_CHILD = r"""
import json, os, resource, sys, time
t0 = time.perf_counter()
import recordkit.cli  # noqa: F401 - what the command imports
from pathlib import Path
from recordkit.imaging import ImageOptions
from recordkit.pack import PackOptions, pack
imports = time.perf_counter() - t0
first = []
def progress(done, total):
    if not first:
        first.append(time.perf_counter() - t0)
opts = PackOptions(out=Path(sys.argv[3]), threads=2, overwrite=True,
                   image=ImageOptions(quality=95, color=1))
pack(sys.argv[1], sys.argv[2], opts, progress=progress)
end = time.perf_counter() - t0
me = resource.getrusage(resource.RUSAGE_SELF)
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"imports_s": imports, "first_image_s": first[0], "total_s": end,
                  "main_cpu_s": me.ru_utime + me.ru_stime,
                  "workers_cpu_s": kids.ru_utime + kids.ru_stime}))
"""


def _digest(out: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(out.glob("*.tfrecord")):
        h.update(p.read_bytes())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkouts", nargs="+", type=Path)
    ap.add_argument("--prefix", required=True, help="the .lst prefix")
    ap.add_argument("--root", required=True, type=Path)
    ap.add_argument("--repeat", type=int, default=4)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {str(c): [] for c in args.checkouts}
    digests: dict[str, set[str]] = {str(c): set() for c in args.checkouts}
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            for k, c in enumerate(args.checkouts):
                out = Path(tmp) / f"out{k}"
                env = dict(os.environ, PYTHONPATH=str(c.resolve()))
                cmd = [sys.executable, "-c", _CHILD, args.prefix, str(args.root), str(out)]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp)
                if proc.returncode:
                    raise SystemExit(f"{c}: {proc.stderr[-2000:]}")
                runs[str(c)].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                digests[str(c)].add(_digest(out))
    res: dict = {"repeat": args.repeat}
    for name, rows in runs.items():
        res[name] = {
            key: {
                "all": [round(r[key], 2) for r in rows],
                "median": round(statistics.median(r[key] for r in rows), 2),
            }
            for key in rows[0]
        }
    res["same_shards"] = len(set().union(*digests.values())) == 1
    res["load_before_after"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
