"""Measure a GPU machine in one command: what works, what syncs, how fast, how much memory.

Runs from the source tree with no install (``PYTHONPATH=.``): torch, torchvision, OpenCV,
Pillow, protobuf, click and crc32c must be importable; DALI is optional (its steps say
"skipped: DALI not installed"). It draws its own images, packs them with ``recordkit pack``
and then, step by step:

- ``environment``: Python, torch and its CUDA, cuDNN, driver, GPUs, DALI, CPU cores.
- ``pytest_gpu``: ``pytest -m gpu`` (the suite's CUDA tests; they skip on a CPU machine).
- ``resume``: train one epoch on CUDA, then ``--resume`` for a second (contract 10 on a GPU).
- ``sync_debug``: 20 ResNet-50 training steps under ``torch.cuda.set_sync_debug_mode("warn")``
  in fp16 and in bf16, on batches already on the GPU and then fed by the loader; counts the
  synchronizing calls torch reports (contract 11: zero expected inside a step).
- ``throughput``: ResNet-50, fp16, channels_last, batch 256: synthetic (model only), loader
  alone and real (loader + step) for the torch backend with CPU workers, with GPU decode and,
  where installed, DALI; real/synthetic ratios and peak GPU memory.
- ``decode``: CMYK, grayscale, PNG, EXIF-rotated, progressive and 4:4:4 JPEGs packed as they
  are (``--pass-through``) through the GPU-decode loader, compared with the CPU path.
- ``nccl``: ``torchrun --nproc-per-node <GPUs>`` training + evaluation with exact counts.

Writes ``gpu_check.json`` and ``gpu_check.md`` (a table) in ``--out`` and prints the table.
``--dry-run`` runs the same script on a CPU machine with small data: the data steps run, the
CUDA steps are reported as skipped (the test suite runs it so). See docs/BENCHMARKS.md,
"How to measure a GPU machine".

    PYTHONPATH=. python tools/gpu_check.py --out gpu-check/          # on the GPU machine
    python tools/gpu_check.py --dry-run --out /tmp/gpu-check         # anywhere
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))

REQUIRED = ("numpy", "torch", "torchvision", "cv2", "PIL", "google.protobuf", "click", "crc32c")
CLASSES = 10


class Skip(Exception):
    """A step that cannot run here; the message says why."""


def _env_for_children() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _run(args: list[str], timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd or ROOT,
        env=_env_for_children(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _last_lines(text: str, n: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-n:])


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _need_cuda(ctx: dict[str, Any]) -> None:
    if ctx["dry_run"]:
        raise Skip("dry run")
    if not _cuda():
        raise Skip("no CUDA device")


def _dali_version() -> str | None:
    try:
        return importlib.import_module("nvidia.dali").__version__
    except ImportError:
        return None


# -- steps -------------------------------------------------------------------------------


def step_environment(ctx: dict[str, Any]) -> dict[str, Any]:
    import cv2
    import PIL
    import torch
    import torchvision
    from google import protobuf

    from recordkit_train.devices import cuda_problem, nvidia_driver_version
    from recordkit_train.precision import cpu_bf16_support

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu_bf16": cpu_bf16_support(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torchvision": torchvision.__version__,
        "opencv": cv2.__version__,
        "pillow": PIL.__version__,
        "protobuf": protobuf.__version__,
        "dali": _dali_version(),
        "driver": nvidia_driver_version(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_problem": cuda_problem(),
    }
    if torch.cuda.is_available():
        info["cudnn"] = torch.backends.cudnn.version()
        info["gpus"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
            }
            for i in range(torch.cuda.device_count())
        ]
    return info


def step_pytest_gpu(ctx: dict[str, Any]) -> dict[str, Any]:
    try:
        importlib.import_module("pytest")
    except ImportError:
        raise Skip("pytest not installed") from None
    if ctx["dry_run"]:
        raise Skip("dry run (the GPU tests skip without CUDA)")
    done = _run(["-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"], 300)
    summary = _last_lines(done.stdout, 1)
    if done.returncode not in (0, 5):
        raise RuntimeError(f"pytest -m gpu exit {done.returncode}: {_last_lines(done.stdout, 8)}")
    return {"exit": done.returncode, "summary": summary}


def _write_photos(root: Path, count: int) -> None:
    from bench_loader import photo

    for i in range(count):
        path = root / f"class{i % CLASSES:02d}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(photo(i)[0])


def _recordkit(args: list[str], timeout: float = 600) -> None:
    done = _run(["-m", "recordkit", *args], timeout)
    if done.returncode != 0:
        raise RuntimeError(f"recordkit {args[0]} failed: {_last_lines(done.stderr or done.stdout)}")


def _tricky_images(root: Path) -> list[str]:
    """The images whose GPU decode needs care; returns their file names."""
    import imagegen
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    imagegen.make_cmyk_jpeg(root / "cmyk.jpg", 96, 128)
    imagegen.make_grayscale_jpeg(root / "gray.jpg", 96, 128)
    imagegen.make_png_rgba(root / "rgba.png", 96, 128)
    imagegen.make_exif_rotated_jpeg(root / "exif6.jpg", 6, 96, 128)
    pattern = Image.fromarray(imagegen.upright_pattern(96, 128))
    pattern.save(root / "progressive.jpg", "JPEG", quality=90, progressive=True)
    for name, subsampling in (("yuv444", 0), ("yuv422", 1), ("yuv420", 2)):
        pattern.save(root / f"{name}.jpg", "JPEG", quality=90, subsampling=subsampling)
    return sorted(p.name for p in root.iterdir() if p.is_file())


def step_data(ctx: dict[str, Any]) -> dict[str, Any]:
    work: Path = ctx["work"]
    count = ctx["images"]
    images = work / "images"
    start = time.perf_counter()
    _write_photos(images, count)
    drawn = time.perf_counter() - start
    threads = str(max(1, min(32, os.cpu_count() or 1)))
    _recordkit(["list", str(work / "photos"), str(images), "--recursive", "--train-ratio", "0.9"])
    start = time.perf_counter()
    _recordkit(
        ["pack", str(work / "photos"), str(images), "--resize", "480", "--quality", "95",
         "--threads", threads, "--out", str(work / "shards")]
    )  # fmt: skip
    packed = time.perf_counter() - start
    tricky = work / "tricky"
    names = _tricky_images(tricky / "all")
    _recordkit(["list", str(work / "tricky_list"), str(tricky), "--recursive", "--no-shuffle"])
    _recordkit(
        ["pack", str(work / "tricky_list"), str(tricky), "--pass-through", "--out",
         str(work / "tricky_shards")]
    )  # fmt: skip
    ctx["shards"] = work / "shards"
    ctx["tricky"] = work / "tricky_shards"
    import recordkit

    ds = recordkit.open(ctx["shards"])
    return {
        "images": count,
        "train": len(ds["train"]),
        "val": len(ds["val"]),
        "draw_s": round(drawn, 1),
        "pack_s": round(packed, 1),
        "tricky": names,
    }


def _tiny_config(ctx: dict[str, Any], out: Path, **kw: Any) -> Any:
    from recordkit_train.config import TrainConfig

    values: dict[str, Any] = {
        "data": str(ctx["shards"]),
        "out": str(out),
        "arch": "resnet18",
        "epochs": 1,
        "batch_size": 64,
        "image_size": 64,
        "backend": "torch",
        "print_freq": 5,
    }
    values.update(kw)
    return TrainConfig(**values)


def step_resume(ctx: dict[str, Any]) -> dict[str, Any]:
    _need_cuda(ctx)
    from recordkit_train.engine import train

    out = ctx["work"] / "resume"
    first = train(_tiny_config(ctx, out, epochs=1), device="cuda")
    second = train(_tiny_config(ctx, out, epochs=2, resume=str(out)), device="cuda")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    if [r["epoch"] for r in rows] != [0, 1]:
        raise RuntimeError(f"metrics.jsonl epochs after resume: {[r['epoch'] for r in rows]}")
    return {
        "epoch0_top1": first["last"]["val_top1"],
        "epoch1_top1": second["last"]["val_top1"],
        "precision": json.loads((out / "config.json").read_text())["precision"],
    }


def step_preempt(ctx: dict[str, Any]) -> dict[str, Any]:
    """SIGUSR1 mid-epoch on CUDA, then --resume: the step trace against an uninterrupted run.

    Without ``--deterministic`` (some CUDA kernels, e.g. adaptive average pooling's backward,
    have no deterministic version) the two traces need not be bitwise equal; the figures say
    how close they are. The CPU tests check bitwise equality."""
    _need_cuda(ctx)
    import os
    import signal

    import torch

    from recordkit_train import engine
    from recordkit_train.engine import train
    from recordkit_train.preemption import Preempted

    kw = {"epochs": 2, "precision": "fp32"}
    full, run = ctx["work"] / "preempt-full", ctx["work"] / "preempt-run"
    train(_tiny_config(ctx, full, **kw), device="cuda")
    real, calls = engine._train_step, [0]

    def _step(**step_kw: Any) -> Any:
        calls[0] += 1
        if calls[0] == 3:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real(**step_kw)

    engine._train_step = _step
    try:
        train(_tiny_config(ctx, run, **kw), device="cuda")
        raise RuntimeError("SIGUSR1 did not stop the run")
    except Preempted as exc:
        stopped = (exc.epoch, exc.batch)
    finally:
        engine._train_step = real
    train(_tiny_config(ctx, run, resume=str(run), **kw), device="cuda")

    def rows(out: Path) -> list[dict[str, Any]]:
        return [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]

    a, b = rows(full), rows(run)
    if [r["step"] for r in a] != [r["step"] for r in b]:
        raise RuntimeError(f"steps differ: {len(a)} vs {len(b)} rows")
    wa = torch.load(full / "last.pt", weights_only=True)["model"]
    wb = torch.load(run / "last.pt", weights_only=True)["model"]
    return {
        "stopped_at": stopped,
        "steps": len(a),
        "trace_equal": a == b,
        "max_loss_diff": max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b, strict=True)),
        "weights_equal": all(torch.equal(wa[k], wb[k]) for k in wa),
    }


@contextlib.contextmanager
def _sync_warnings() -> Iterator[list[str]]:
    import torch

    caught: list[str] = []
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield caught
        finally:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("default")
    caught.extend(
        str(r.message).splitlines()[0] for r in records if "synchroniz" in str(r.message).lower()
    )


def _steps_under_sync_debug(ctx: dict[str, Any], precision: str, feed: str) -> dict[str, Any]:
    import torch
    from torch import nn

    import recordkit
    from recordkit_train import engine
    from recordkit_train.distributed import DistEnv
    from recordkit_train.metrics import AccuracyMeter, LossMeter
    from recordkit_train.optim import LRSchedule
    from recordkit_train.precision import LossScaler

    device = torch.device("cuda", torch.cuda.current_device())
    cfg = _tiny_config(
        ctx, ctx["work"] / "sync", arch="resnet50", batch_size=64, image_size=224,
        precision=precision, channels_last=True,
    ).resolved(device)  # fmt: skip
    env = DistEnv(rank=0, local_rank=0, world_size=1, device=device)
    model = engine._ddp(engine._make_model(cfg, CLASSES, device), env)
    optimizer = engine._make_optimizer(cfg, model)
    scaler = LossScaler(precision, device)
    schedule = LRSchedule("cosine", base_lr=0.1, epochs=1, iters_per_epoch=1000)
    meters = (LossMeter(device), AccuracyMeter(device=device), LossMeter(device))
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    if feed == "device":
        images = torch.randn(64, 3, 224, 224, device=device).contiguous(
            memory_format=torch.channels_last
        )
        labels = torch.randint(0, CLASSES, (64,), device=device)
        batches: Any = [(images, labels)] * 25
    else:
        loader = recordkit.make_loader(
            ctx["shards"], "train", batch_size=64, image_size=224, backend="torch",
            device=device, dtype=torch.float16, channels_last=True,
        )  # fmt: skip
        batches = [b for _, b in zip(range(25), _cycle(loader), strict=False)]
    model.train()
    for images, labels in batches[:5]:  # warm-up: cuDNN autotuning, allocator growth
        engine._train_step(
            cfg=cfg, epoch=0, i=0, images=images, labels=labels, model=model,
            optimizer=optimizer, schedule=schedule, scaler=scaler, criterion=criterion,
            meters=meters, device=device,
        )  # fmt: skip
    with _sync_warnings() as caught:
        for i, (images, labels) in enumerate(batches[5:25]):
            engine._train_step(
                cfg=cfg, epoch=0, i=i, images=images, labels=labels, model=model,
                optimizer=optimizer, schedule=schedule, scaler=scaler, criterion=criterion,
                meters=meters, device=device,
            )  # fmt: skip
    return {"steps": 20, "sync_warnings": len(caught), "first": caught[:3]}


def _cycle(loader: Any) -> Iterator[Any]:
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def step_sync_debug(ctx: dict[str, Any]) -> dict[str, Any]:
    _need_cuda(ctx)
    import torch

    out: dict[str, Any] = {}
    for precision in ("fp16", "bf16"):
        out[precision] = _steps_under_sync_debug(ctx, precision, "device")
    # Batches fed by the loader (prefetched before the counted steps: the count is the step's).
    out["fp16_loader_batches"] = _steps_under_sync_debug(ctx, "fp16", "loader")
    torch.cuda.empty_cache()
    return out


def step_throughput(ctx: dict[str, Any]) -> dict[str, Any]:
    _need_cuda(ctx)
    import torch

    from recordkit_train.config import TrainConfig
    from recordkit_train.engine import benchmark

    iters = ctx["iters"]
    base: dict[str, Any] = {
        "data": str(ctx["shards"]),
        "out": str(ctx["work"] / "bench"),
        "arch": "resnet50",
        "batch_size": 256,
        "image_size": 224,
        "precision": "fp16",
        "channels_last": True,
        "iters": iters,
        "print_freq": iters,
    }
    variants: list[tuple[str, dict[str, Any]]] = [
        ("torch_cpu_workers", {"backend": "torch"}),
        ("torch_gpu_decode", {"backend": "torch", "gpu_decode": True}),
    ]
    if _dali_version():
        variants.append(("dali", {"backend": "dali"}))
    results: dict[str, Any] = {"iters": iters}
    if not _dali_version():
        results["dali"] = "skipped: DALI not installed"

    def measure(name: str, mode: str, extra: dict[str, Any]) -> None:
        torch.cuda.reset_peak_memory_stats()
        cfg = TrainConfig(**{**base, **extra})
        try:
            rate = benchmark(cfg, mode, device="cuda")["samples_per_s"]
        except Exception as exc:  # one variant failing must not hide the others
            results[f"{name}_{mode}"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            return
        results[f"{name}_{mode}"] = {
            "images_per_sec": round(rate, 1),
            "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        }

    measure("model", "synthetic", {})
    synthetic = results["model_synthetic"].get("images_per_sec")
    for name, extra in variants:
        measure(name, "io", extra)
        measure(name, "real", extra)
        real = results[f"{name}_real"].get("images_per_sec")
        if synthetic and real:
            results[f"{name}_real_vs_synthetic"] = round(real / synthetic, 3)
    return results


def step_decode(ctx: dict[str, Any]) -> dict[str, Any]:
    """The GPU-decode loader against the CPU-worker loader, image by image.

    In a dry run (or without CUDA) the GPU-decode code path runs on the CPU, which still
    checks its routing (which images nvJPEG may take) and its batched geometry.
    """
    import recordkit

    ds = recordkit.open(ctx["tricky"])
    split = "train" if "train" in ds else next(iter(ds))
    names = [r.filename for r in ds[split]]
    common = {"batch_size": len(names), "image_size": 64, "backend": "torch", "train": False}
    cpu = next(iter(recordkit.make_loader(ds, split, device="cpu", **common)))[0]
    on_gpu = _cuda() and not ctx["dry_run"]
    device = "cuda" if on_gpu else "cpu"
    gpu = next(iter(recordkit.make_loader(ds, split, device=device, gpu_decode=True, **common)))
    # Mean |difference| per image in normalized units (1.0 is about 57 grey levels): decoders
    # differ a little (IDCT, chroma upsampling, the resize filter); a wrong orientation or
    # colour conversion moves it by whole units.
    diff = (gpu[0].float().cpu() - cpu).abs().mean(dim=(1, 2, 3))
    per_image = {n: round(d, 4) for n, d in zip(names, diff.tolist(), strict=True)}
    result: dict[str, Any] = {"device": device, "mean_abs_diff_vs_cpu_path": per_image}
    if not on_gpu:
        result["cuda"] = "skipped: " + ("dry run" if ctx["dry_run"] else "no CUDA device")
    bad = {n: d for n, d in per_image.items() if d > 0.1}
    if bad:
        raise RuntimeError(f"the GPU-decode path differs from the CPU path on {bad}")
    return result


def step_nccl(ctx: dict[str, Any]) -> dict[str, Any]:
    _need_cuda(ctx)
    import torch

    gpus = torch.cuda.device_count()
    out = ctx["work"] / "nccl"
    args = [
        "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
        "-m", "recordkit_train", "run", "--data", str(ctx["shards"]), "--out", str(out),
        "--arch", "resnet18", "--epochs", "1", "--batch-size", "32", "--image-size", "64",
        "--backend", "torch", "--no-progress",
    ]  # fmt: skip
    done = _run(args, 300)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun exit {done.returncode}: {_last_lines(done.stderr, 5)}")
    import recordkit

    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    expected = len(recordkit.open(ctx["shards"])["val"])
    if row["val_samples"] != expected:
        raise RuntimeError(f"evaluated {row['val_samples']} of {expected} validation records")
    return {
        "world_size": gpus,
        "backend": "nccl" if gpus > 1 else "none (one GPU: no process group)",
        "val_samples": row["val_samples"],
        "val_top1": row["val_top1"],
    }


STEPS: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = [
    ("environment", step_environment),
    ("pytest_gpu", step_pytest_gpu),
    ("data", step_data),
    ("resume", step_resume),
    ("preempt", step_preempt),
    ("sync_debug", step_sync_debug),
    ("throughput", step_throughput),
    ("decode", step_decode),
    ("nccl", step_nccl),
]


def _cell(result: dict[str, Any]) -> str:
    if result["status"] != "ok":
        return result.get("reason", "")
    text = json.dumps(result.get("result", {}), separators=(", ", ": "))
    return text if len(text) <= 400 else text[:397] + "..."


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table: one row per step."""
    lines = [
        f"gpu_check {report['started']} ({'dry run' if report['dry_run'] else 'full'}), "
        f"{report['seconds']:.0f} s",
        "",
        "| step | status | seconds | result |",
        "|---|---|---|---|",
    ]
    for name, res in report["steps"].items():
        cell = _cell(res).replace("|", "\\|")
        lines.append(f"| {name} | {res['status']} | {res['seconds']:.1f} | {cell} |")
    return "\n".join(lines) + "\n"


def _check_imports() -> list[str]:
    missing = []
    for name in REQUIRED:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
    return missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu-check"), help="Report folder.")
    ap.add_argument("--dry-run", action="store_true", help="CPU: data steps only, small data.")
    ap.add_argument("--images", type=int, default=None, help="Photos to draw (default 2048).")
    ap.add_argument("--iters", type=int, default=60, help="Steps per throughput measurement.")
    ap.add_argument("--only", default=None, help="Comma-separated step names to run.")
    ap.add_argument("--work", type=Path, default=None, help="Keep data here (default: temp).")
    a = ap.parse_args(argv)
    missing = _check_imports()
    if missing:
        print(
            "Error: gpu_check needs " + ", ".join(missing) + "; carry them as wheels "
            "(docs/BENCHMARKS.md, 'How to measure a GPU machine')",
            file=sys.stderr,
        )
        return 2
    only = set(a.only.split(",")) if a.only else None
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dry_run": a.dry_run,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "steps": {},
    }
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = a.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        ctx: dict[str, Any] = {
            "dry_run": a.dry_run,
            "work": work,
            "images": a.images or (64 if a.dry_run else 2048),
            "iters": a.iters,
        }
        for name, fn in STEPS:
            if only is not None and name not in only and name != "data":
                continue
            start = time.perf_counter()
            try:
                res: dict[str, Any] = {"status": "ok", "result": fn(ctx)}
            except Skip as exc:
                res = {"status": "skipped", "reason": str(exc)}
            except Exception as exc:
                res = {
                    "status": "failed",
                    "reason": f"{type(exc).__name__}: {exc}"[:500],
                    "traceback": traceback.format_exc()[-2000:],
                }
            res["seconds"] = round(time.perf_counter() - start, 1)
            report["steps"][name] = res
            print(f"{name}: {res['status']} ({res['seconds']} s)", file=sys.stderr, flush=True)
            if name == "data" and res["status"] != "ok":
                break
    report["seconds"] = round(time.perf_counter() - t0, 1)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    table = markdown(report)
    (a.out / "gpu_check.md").write_text(table)
    print(table)
    failed = [n for n, r in report["steps"].items() if r["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
