"""docs/RECIPES.md's Fashion-MNIST run end to end, as a user runs it, timed: one command.

  1. build    python tools/make_fashion_mnist.py --work WORK   (idx -> PNG folder + lists -> pack)
  2. train    recordkit-train run --recipe RECIPE --data WORK/shards --out WORK/run [EXTRA...]
              (RECIPE: fashion-mnist-convnet2 unless --recipe says otherwise)
  3. eval     recordkit-train eval --data WORK/shards --checkpoint WORK/run/last.pt --json

Prints (and writes to WORK/e2e.json) one JSON object: per stage the wall seconds and the CPU
seconds its processes used (user + system, from getrusage of the children), the final
top-1 of the last checkpoint (not the best: choosing by the test set would flatter it), the
load average before and after, and the CPUs this process may use. On a shared machine the
wall time is pessimistic; CPU seconds / usable CPUs is the floor a quiet machine approaches.

    flock /work/bench.lock python tools/fashion_mnist_e2e.py --work runs/fmnist-e2e
    python tools/fashion_mnist_e2e.py --work runs/fm -- --epochs 5   # extra train options
    python tools/fashion_mnist_e2e.py --work runs/fm-rn18 --recipe fashion-mnist-resnet18
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _stage(name: str, cmd: list[str], report: dict[str, object]) -> str:
    print("$ " + " ".join(cmd[1:] if cmd[0] == sys.executable else cmd), file=sys.stderr)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    report[name] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}
    sys.stderr.write(done.stdout)
    if done.returncode:
        raise SystemExit(f"Error: {name} failed with exit code {done.returncode}")
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("runs/fmnist-e2e"))
    ap.add_argument("--recipe", default="fashion-mnist-convnet2")
    ap.add_argument("--src", default=None, help="idx folder (default: Debian's package)")
    ap.add_argument("--skip-build", action="store_true", help="Reuse WORK/shards.")
    ap.add_argument("--limit", type=int, default=None, help="First N images per split (smoke).")
    ap.add_argument("extra", nargs="*", help="Options for recordkit-train run (after --).")
    a = ap.parse_args(argv)
    py = sys.executable
    report: dict[str, object] = {
        "recipe": a.recipe,
        "extra": a.extra,
        "cpus": len(os.sched_getaffinity(0)),
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    t0 = time.perf_counter()
    if not a.skip_build:
        build = [py, str(ROOT / "tools" / "make_fashion_mnist.py"), "--work", str(a.work)]
        build += ["--src", a.src] if a.src else []
        build += ["--limit", str(a.limit)] if a.limit else []
        _stage("build", build, report)
    shards, run = a.work / "shards", a.work / "run"
    train = [py, "-m", "recordkit_train", "run", "--recipe", a.recipe, "--data", str(shards),
             "--out", str(run), "--no-progress", *a.extra]  # fmt: skip
    _stage("train", train, report)
    evaluate = [py, "-m", "recordkit_train", "eval", "--data", str(shards),
                "--checkpoint", str(run / "last.pt"), "--json"]  # fmt: skip
    result = json.loads(_stage("eval", evaluate, report).strip().splitlines()[-1])
    report["top1"] = result.get("top1", result.get("top_1"))
    report["eval"] = {**report["eval"], **result}  # type: ignore[dict-item]
    report["total_wall_s"] = round(time.perf_counter() - t0, 1)
    report["load_after"] = [round(x, 2) for x in os.getloadavg()]
    epochs = run / "metrics.jsonl"
    if epochs.is_file():
        report["epochs"] = [json.loads(line) for line in epochs.read_text().splitlines() if line]
    text = json.dumps(report)
    (a.work / "e2e.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
