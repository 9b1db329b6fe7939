"""Time `recordkit list` end to end (interpreter start included), optionally beside im2rec.

Usage:
  python tools/bench_list.py [--files 1000] [--folders 10] [--repeat 5]
  python tools/bench_list.py --files 1281000 --folders 1000 --tree /work/scale/tree1281k \\
      --repeat 3 --im2rec /work/im2rec/im2rec.py --mxnet-python /work/mxvenv/bin/python

The tree is ImageNet-shaped: FOLDERS folders `nXXXXXXXX` holding `nXXXXXXXX_K.JPEG` files,
FILES in all, every file empty (`list` only walks names). With `--tree DIR` it is generated
once into DIR and reused (a marker file records its shape; another shape in DIR is an error);
without it a temporary tree is made and removed. Both tools run the same command line shape,
`list --recursive --train-ratio 0.95` (im2rec: `--list --recursive --train-ratio 0.95`), with
their stdout (the class table) sent to /dev/null. One untimed run of each warms the page and
dentry caches first, so every timed run is a warm-cache run; then the tools alternate, the
order flipping every round, and each round's `.lst` files must be byte-identical between the
two tools (the bench fails otherwise). Prints one JSON object.
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

MARKER = ".bench_list_tree.json"


def make_tree(root: Path, files: int, folders: int) -> dict:
    """Generate (or reuse) the tree; return its shape."""
    shape = {"files": files, "folders": folders, "names": "nXXXXXXXX/nXXXXXXXX_K.JPEG"}
    marker = root / MARKER
    if marker.exists():
        have = json.loads(marker.read_text())
        if have != shape:
            sys.exit(f"{root} holds another tree ({have}); use another --tree or remove it")
        return {**shape, "generated_s": None}
    if root.exists() and any(root.iterdir()):
        sys.exit(f"{root} exists, is not empty and has no {MARKER}; refusing to write into it")
    t = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    per, extra = divmod(files, folders)
    for k in range(folders):
        wnid = f"n{1440764 + 7919 * k:08d}"  # ImageNet-like synset ids, distinct and sorted
        d = root / wnid
        d.mkdir(exist_ok=True)
        for j in range(per + (k < extra)):
            os.close(os.open(d / f"{wnid}_{10026 + 37 * j}.JPEG", os.O_WRONLY | os.O_CREAT, 0o644))
    marker.write_text(json.dumps(shape))
    return {**shape, "generated_s": round(time.perf_counter() - t, 1)}


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - t
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return took


def outputs(prefix: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(prefix.parent.glob(prefix.name + "*.lst"))}


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run(args: argparse.Namespace, root: Path, shape: dict) -> dict:
    exe = Path(sys.executable).with_name("recordkit")
    rk_prefix = [str(exe)] if exe.exists() else [sys.executable, "-m", "recordkit"]
    if os.environ.get("PYTHONPATH"):  # a worktree run: the console script would miss it
        rk_prefix = [sys.executable, "-m", "recordkit"]
    opts = ["--recursive", "--train-ratio", "0.95"]
    compare = bool(args.im2rec and args.mxnet_python)
    note = None
    if not compare:
        note = "im2rec comparison skipped: pass --im2rec and --mxnet-python"
    elif not (Path(args.im2rec).is_file() and Path(args.mxnet_python).exists()):
        compare = False
        note = f"im2rec comparison skipped: {args.im2rec} or {args.mxnet_python} missing"
    with tempfile.TemporaryDirectory() as tmp:
        rk_out, mx_out = Path(tmp) / "rk" / "out", Path(tmp) / "mx" / "out"
        rk_out.parent.mkdir()
        mx_out.parent.mkdir()
        rk_cmd = [*rk_prefix, "list", str(rk_out), str(root), *opts]
        mx_cmd = [args.mxnet_python, args.im2rec, "--list", *opts, str(mx_out), str(root)]
        tools = {"recordkit": rk_cmd} | ({"im2rec": mx_cmd} if compare else {})
        load_before = loadavg()
        for cmd in tools.values():  # warm-up: page cache, dentries, .pyc files
            timed(cmd)
        times: dict[str, list[float]] = {name: [] for name in tools}
        order = list(tools)
        identical = None
        for r in range(args.repeat):
            for name in order if r % 2 == 0 else order[::-1]:
                times[name].append(timed(tools[name]))
            if compare:
                ours, theirs = outputs(rk_out), outputs(mx_out)
                if ours != theirs:
                    sys.exit(f"outputs differ in round {r}: {sorted(ours)} vs {sorted(theirs)}")
                identical = True
        listed = sum(v.count(b"\n") for v in outputs(rk_out).values())
    res: dict = {
        "bench": "list",
        "tree": str(root),
        **{k: v for k, v in shape.items() if k != "names"},
        "names": shape["names"],
        "listed": listed,
        "cache": "warm (one untimed run of each tool first)",
        "rounds": args.repeat,
        "commands": {name: " ".join(cmd) for name, cmd in tools.items()},
    }
    for name, ts in times.items():
        res[f"{name}_s"] = [round(t, 3) for t in ts]
        res[f"{name}_s_median"] = round(statistics.median(ts), 3)
        res[f"{name}_s_min"] = round(min(ts), 3)
    if compare:
        res["outputs_byte_identical"] = identical
        res["speedup_median"] = round(res["im2rec_s_median"] / res["recordkit_s_median"], 2)
        res["speedup_per_round"] = [
            round(m / k, 2) for m, k in zip(times["im2rec"], times["recordkit"], strict=True)
        ]
    if note:
        res["note"] = note
    res |= {
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", "--images", type=int, default=1000, help="files in the tree")
    ap.add_argument("--folders", "--classes", type=int, default=10, help="folders (classes)")
    ap.add_argument("--tree", type=Path, help="generate the tree here once and reuse it")
    ap.add_argument("--repeat", type=int, default=5, help="timed rounds")
    ap.add_argument("--im2rec", help="MXNet's tools/im2rec.py, for the side-by-side run")
    ap.add_argument("--mxnet-python", help="a Python with mxnet (and cv2) to run im2rec.py")
    args = ap.parse_args()
    if args.files < 1 or args.folders < 1 or args.repeat < 1:
        ap.error("--files, --folders and --repeat must be at least 1")
    if args.tree:
        res = run(args, args.tree, make_tree(args.tree, args.files, args.folders))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "img"
            res = run(args, root, make_tree(root, args.files, args.folders))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
