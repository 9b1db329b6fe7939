"""Time `recordkit list` end to end (process start included) over a generated image tree.

Usage: python tools/bench_list.py [--images 1000] [--classes 10] [--repeat 5]

Prints one JSON object: the median / min wall time of the whole command, and the import time
of `recordkit.cli` alone. The files are empty placeholders named *.jpg: `list` only walks names.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    exe = Path(sys.executable).with_name("recordkit")
    cmd_prefix = [str(exe)] if exe.exists() else [sys.executable, "-m", "recordkit"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "img"
        for i in range(args.images):
            d = root / f"class{i % args.classes:03d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{i:06d}.jpg").touch()
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            subprocess.run(
                [
                    *cmd_prefix,
                    "list",
                    f"{tmp}/out",
                    str(root),
                    "--recursive",
                    "--train-ratio",
                    "0.95",
                    "--quiet",
                ],
                check=True,
            )
            times.append(time.perf_counter() - t)
        imp = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import recordkit.cli"], check=True)
            imp.append(time.perf_counter() - t)
        lines = sum(1 for p in Path(tmp).glob("out*.lst") for _ in p.open())
    print(
        json.dumps(
            {
                "bench": "list",
                "images": args.images,
                "classes": args.classes,
                "listed": lines,
                "command": " ".join(
                    cmd_prefix[-1:] + ["list", "…", "--recursive", "--train-ratio", "0.95"]
                ),
                "wall_s_median": round(statistics.median(times), 4),
                "wall_s_min": round(min(times), 4),
                "python_import_recordkit_cli_s_median": round(statistics.median(imp), 4),
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
