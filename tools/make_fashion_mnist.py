"""Build Fashion-MNIST (or MNIST) shards from the idx files: folder + lists, then pack.

Reads ``train-images-idx3-ubyte.gz`` etc. from ``--src`` (default: Debian's
``dataset-fashion-mnist`` package, ``/usr/share/datasets/fashion-mnist``; the same four files
from the dataset's GitHub page work too), writes the 60,000 training images and the 10,000
test images as PNGs under ``WORK/images/<class>/`` with ``WORK/fmnist_train.lst`` and
``WORK/fmnist_val.lst`` (the official test set is the ``val`` split), then runs

    recordkit pack WORK/fmnist WORK/images --encoding .png --color -1 --out OUT

Prints one JSON line with the counts, the shard directory and the seconds each stage took.

    python tools/make_fashion_mnist.py --work data/fmnist --out data/fmnist/shards
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from recordkit.interop.idx import (
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    IdxFormatError,
    read_idx,
    write_idx_split,
)

DEFAULT_SRC = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find(src: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (src / name).is_file():
            return src / name
    raise FileNotFoundError(
        f"{src / stem}(.gz) not found; install Debian's dataset-fashion-mnist or pass --src"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC, help="Folder of idx files.")
    parser.add_argument("--work", type=Path, default=Path("data/fmnist"), help="Output folder.")
    parser.add_argument("--out", type=Path, default=None, help="Shards (default WORK/shards).")
    parser.add_argument("--classes", choices=["fashion", "digits"], default="fashion")
    parser.add_argument("--limit", type=int, default=None, help="Only the first N per split.")
    parser.add_argument("--no-pack", action="store_true", help="Write folder + lists only.")
    args = parser.parse_args(argv)
    classes = FASHION_MNIST_CLASSES if args.classes == "fashion" else MNIST_CLASSES
    out = args.out or args.work / "shards"
    report: dict[str, object] = {"src": str(args.src), "work": str(args.work)}
    t0 = time.perf_counter()
    try:
        for split, (images_name, labels_name) in FILES.items():
            images = read_idx(_find(args.src, images_name))
            labels = read_idx(_find(args.src, labels_name))
            if args.limit is not None:
                images, labels = images[: args.limit], labels[: args.limit]
            write_idx_split(
                images, labels, args.work / "images", args.work / "fmnist", split, classes
            )
            report[f"{split}_images"] = len(images)
    except (OSError, IdxFormatError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    report["convert_s"] = round(time.perf_counter() - t0, 2)
    if not args.no_pack:
        t1 = time.perf_counter()
        cmd = [
            sys.executable,
            "-m",
            "recordkit",
            "pack",
            str(args.work / "fmnist"),
            str(args.work / "images"),
            "--encoding",
            ".png",
            "--color",
            "-1",
            "--out",
            str(out),
            "--overwrite",
            "--quiet",
        ]
        print(" ".join(cmd[1:]), file=sys.stderr)
        done = subprocess.run(cmd, check=False)
        if done.returncode:
            return done.returncode
        report["pack_s"] = round(time.perf_counter() - t1, 2)
        report["shards"] = str(out)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
