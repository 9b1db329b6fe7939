"""``recordkit-train demo``: the whole path on an embedded data set, on a laptop CPU.

Draws ten classes of coloured shapes (no download), then runs the commands a user runs on
ImageNet, printing each one so it can be copied::

    recordkit list → recordkit pack → recordkit-train run → recordkit-train eval
    → recordkit-train predict

and ends with the validation top-1 of the trained ResNet-18. The defaults (2,000 images,
ResNet-18 at 32 px, 4 epochs) learn the task — well above 90 % top-1 — in about a minute on
two cores, also on an AVX2-only CPU in fp32 (docs/BENCHMARKS.md). ``make demo`` runs it.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DemoSettings", "run_demo"]


@dataclass(frozen=True)
class DemoSettings:
    """What the demo draws and how it trains (the defaults are the documented demo).

    Attributes:
        per_class: Images drawn per class (ten classes; 10 % go to validation).
        size: Side of the drawn images in pixels.
        resize: ``recordkit pack --resize`` (shorter side); images are never upscaled.
        arch: Model architecture.
        epochs: Training epochs.
        batch_size: Images per step.
        image_size: Training and validation crop side.
        lr: Peak learning rate (cosine schedule, one warm-up epoch).
        workers: Loader workers; None: the loader's default.
        device: ``cpu`` or ``cuda``; None: CUDA when available.
        min_top1: The demo fails (exit 1) when the model scores below this validation top-1
            (percent): the task is learnable, so less means something is broken.
    """

    per_class: int = 200
    size: int = 96
    resize: int = 64
    arch: str = "resnet18"
    epochs: int = 4
    batch_size: int = 64
    image_size: int = 32
    lr: float = 0.2
    workers: int | None = None
    device: str | None = None
    min_top1: float = 90.0


def _step(title: str, prog: str, args: list[str]) -> None:
    """Print a step's command line as a user would type it, then run it; stop on failure."""
    print(f"\n== {title}\n$ {prog} {shlex.join(args)}", flush=True)
    module = "recordkit" if prog == "recordkit" else "recordkit_train"
    done = subprocess.run([sys.executable, "-m", module, *args], check=False)
    if done.returncode != 0:
        raise SystemExit(f"Error: demo step failed ({prog} {args[0]}, exit {done.returncode})")


def run_demo(work: str | Path, settings: DemoSettings | None = None) -> dict[str, float]:
    """Draw the shapes, list, pack, train, evaluate the best checkpoint and predict one image.

    Args:
        work: Work directory; ``images/``, ``shapes.lst``, ``shards/`` and ``run/`` go there.
        settings: What to draw and how to train; None: :class:`DemoSettings` defaults.

    Returns:
        ``{"val_top1", "val_top5", "seconds"}``: the ``eval`` result on the validation split
        (percent) and the demo's wall time.

    Raises:
        SystemExit: A step failed; the message names it.
    """
    from recordkit.demo import SHAPES, make_shapes

    s = settings or DemoSettings()
    work = Path(work)
    images, prefix, shards, run = work / "images", work / "shapes", work / "shards", work / "run"
    t0 = time.perf_counter()
    print(f"== draw {s.per_class} images of each of {len(SHAPES)} shapes under {images}/")
    make_shapes(images, per_class=s.per_class, size=s.size)
    _step(
        "list the images, 90 % train / 10 % val",
        "recordkit",
        ["list", str(prefix), str(images), "--recursive", "--train-ratio", "0.9"],
    )
    _step(
        "pack them into shards",
        "recordkit",
        ["pack", str(prefix), str(images), "--resize", str(s.resize), "--out", str(shards),
         "--overwrite"],
    )  # fmt: skip
    device = ["--device", s.device] if s.device else []
    workers = ["--workers", str(s.workers)] if s.workers is not None else []
    _step(
        f"train {s.arch} for {s.epochs} epochs",
        "recordkit-train",
        ["run", "--data", str(shards), "--out", str(run), "--arch", s.arch,
         "--epochs", str(s.epochs), "--batch-size", str(s.batch_size),
         "--image-size", str(s.image_size), "--lr", str(s.lr), "--warmup-epochs", "1",
         "--print-freq", "10", "--no-small-input", *workers, *device],
    )  # fmt: skip
    result_file = run / "eval.json"
    print(f"\n== evaluate the best checkpoint\n$ recordkit-train eval --data {shards} "
          f"--checkpoint {run / 'best.pt'} --json", flush=True)  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "recordkit_train", "eval", "--data", str(shards),
         "--checkpoint", str(run / "best.pt"), "--batch-size", str(s.batch_size), "--json",
         *workers, *device],
        check=False, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"Error: demo step failed (recordkit-train eval, exit {done.returncode})")
    print(done.stdout, end="", flush=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result_file.write_text(done.stdout, encoding="utf-8")

    import recordkit

    val = recordkit.open(shards)["val"]
    sample = images / val[0].filename
    _step(
        "predict one validation image (top 3)",
        "recordkit-train",
        ["predict", "--checkpoint", str(run / "best.pt"), str(sample), "--topk", "3", *device],
    )
    seconds = time.perf_counter() - t0
    top1, top5 = float(result["top1"]), float(result["top5"])
    print(
        f"\ndemo finished in {seconds:.0f} s: {s.arch} reaches {top1:.1f} % top-1 "
        f"({top5:.1f} % top-5) on {len(val)} validation images; outputs under {work}/ "
        f"(metrics.png in {run}/)"
    )
    if top1 < s.min_top1:
        raise SystemExit(
            f"Error: the demo model did not learn the task ({top1:.1f} % < {s.min_top1} %)"
        )
    return {"val_top1": top1, "val_top5": top5, "seconds": seconds}
