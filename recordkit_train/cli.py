"""``recordkit-train``: the training command line (``run`` and ``eval``).

A thin skin over :mod:`recordkit_train.engine`: options become a frozen
:class:`~recordkit_train.config.TrainConfig`, progress is logged in MXNet's style on rank 0,
and errors a user can cause end as one ``Error: …`` line with exit code 1. Works the same
under ``torchrun --nproc-per-node N -m recordkit_train run …``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import click

from recordkit import __version__
from recordkit.cli import DatasetLocation, user_errors
from recordkit.logsetup import setup_logging

F = TypeVar("F", bound=Callable[..., Any])


def rank_errors(fn: F) -> F:
    """Under torchrun, end a rank whose peer failed with one ``Error: rank r of n …`` line.

    See :func:`recordkit_train.distributed.guard_rank`; a no-op for a single process.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from recordkit_train.distributed import RankFailure, guard_rank

        try:
            with guard_rank():
                return fn(*args, **kwargs)
        except RankFailure as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _setup_logging(verbose: int) -> None:
    """Progress lines as plain text on stderr; library warnings with their level and name."""
    level = setup_logging(verbose)
    engine = logging.getLogger("recordkit_train.engine")
    if not any(getattr(h, "_recordkit_plain", False) for h in engine.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._recordkit_plain = True  # type: ignore[attr-defined]
        engine.addHandler(handler)
    engine.propagate = False
    # On the package logger, so that distributed.setup() can quiet ranks other than 0.
    logging.getLogger("recordkit_train").setLevel(min(level, logging.INFO))


def _steps(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated epochs, got {value!r}") from None


def _pair(value: str | tuple[float, float] | None) -> tuple[float, float] | None:
    """``"0.35,1"`` or ``"3/4,4/3"`` -> a float pair (a click callback's conversion)."""
    if value is None or isinstance(value, tuple):
        return value
    try:
        parts = tuple(float(Fraction(v.strip())) for v in value.split(","))
    except (ValueError, ZeroDivisionError):
        parts = ()
    if len(parts) != 2:
        raise click.BadParameter(f"expected two comma-separated numbers MIN,MAX, got {value!r}")
    return parts  # type: ignore[return-value]


def augment_options(fn: F) -> F:
    """The augmentation, mixing and EMA options of ``run`` (docs/TRAINING.md)."""
    options = [
        click.option(
            "--aug",
            type=click.Choice(["rrc", "pad-crop", "none"]),
            default="rrc",
            show_default=True,
            help="Training crop: random-resized-crop (ImageNet); pad-crop: zero-pad by --pad "
            "and take a random crop (CIFAR); none: the validation transform, no flip.",
        ),
        click.option(
            "--rrc-scale",
            default="0.08,1",
            show_default=True,
            callback=lambda _c, _p, v: _pair(v),
            help="rrc: crop area range MIN,MAX as fractions of the image area.",
        ),
        click.option(
            "--rrc-ratio",
            default="3/4,4/3",
            show_default=True,
            callback=lambda _c, _p, v: _pair(v),
            help="rrc: crop aspect-ratio range MIN,MAX (width / height).",
        ),
        click.option(
            "--pad",
            type=click.IntRange(min=0),
            default=4,
            show_default=True,
            help="pad-crop: zero pixels added on each side (the largest shift).",
        ),
        click.option(
            "--hflip",
            type=click.FloatRange(0, 1),
            default=0.5,
            show_default=True,
            help="Mirror probability for training crops.",
        ),
        click.option(
            "--val-resize-ratio",
            type=click.FloatRange(0, 1, min_open=True),
            default=None,
            help="Validation: resize the shorter side to image-size / ratio, then centre-crop. "
            "Default: 0.875 with rrc (256 -> 224), 1 with pad-crop and none.",
        ),
        click.option(
            "--auto-augment",
            type=click.Choice(["none", "autoaugment", "randaugment", "trivialaugment"]),
            default="none",
            show_default=True,
            callback=lambda _c, _p, v: None if v == "none" else v,
            help="Policy on training crops: torchvision v2 (torch backend) or "
            "nvidia.dali.auto_aug (DALI backend).",
        ),
        click.option(
            "--ra-n",
            type=click.IntRange(min=0),
            default=2,
            show_default=True,
            help="RandAugment: operations per image.",
        ),  # fmt: skip
        click.option(
            "--ra-m",
            type=click.IntRange(0, 30),
            default=9,
            show_default=True,
            help="RandAugment: magnitude (0-30).",
        ),  # fmt: skip
        click.option(
            "--mixup",
            type=click.FloatRange(min=0),
            default=0.0,
            show_default=True,
            help="Mixup alpha (e.g. 0.2); 0 = off. Soft-target loss; see docs/TRAINING.md.",
        ),
        click.option(
            "--cutmix",
            type=click.FloatRange(min=0),
            default=0.0,
            show_default=True,
            help="CutMix alpha (e.g. 1.0); 0 = off.",
        ),
        click.option(
            "--mixup-prob",
            type=click.FloatRange(0, 1),
            default=1.0,
            show_default=True,
            help="Probability that a batch is mixed.",
        ),
        click.option(
            "--mixup-switch-prob",
            type=click.FloatRange(0, 1),
            default=0.5,
            show_default=True,
            help="With both --mixup and --cutmix: probability of CutMix for a batch.",
        ),
        click.option(
            "--ema-decay",
            type=click.FloatRange(0, 1, max_open=True),
            default=0.0,
            show_default=True,
            help="EMA of the weights (e.g. 0.9999), evaluated beside the model; 0 = off.",
        ),
        click.option(
            "--ema-warmup/--no-ema-warmup",
            default=False,
            show_default=True,
            help="EMA warm-up (timm): decay 1 - k^(-2/3) at update k, capped at --ema-decay.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="recordkit-train")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Distributed fp16 training of torchvision models on recordkit shards.

    \b
    recordkit-train run --data shards/ --out runs/r50
    torchrun --nproc-per-node 8 -m recordkit_train run --data shards/ --out runs/r50
    recordkit-train eval --data shards/ --checkpoint runs/r50/best.pt
    """
    _setup_logging(verbose)


@main.command("run", context_settings=CONTEXT_SETTINGS)
@click.option(
    "--recipe",
    default=None,
    help="Start from a named preset (docs/RECIPES.md); options given explicitly win. "
    "`--recipe list` prints them.",
)
@click.option(
    "--data",
    type=DatasetLocation(),
    help="Shard directory, or its URL (s3://…, gs://…, https://…; see docs/REMOTE.md).",
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("runs/train"), show_default=True
)
@click.option(
    "--arch",
    default="resnet50",
    show_default=True,
    help="Any torchvision classification model (resnet18, resnext50_32x4d, regnet_y_400mf, "
    "efficientnet_b0, convnext_tiny, vit_b_16, ...) or recordkit's own small networks for "
    "28-32 px images (convnet2, lenet, mlp); `--arch list` prints them all.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=90, show_default=True)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Per rank."
)
@click.option("--image-size", type=click.IntRange(min=1), default=224, show_default=True)
@click.option(
    "--precision",
    type=click.Choice(["fp16", "bf16", "fp32"]),
    default=None,
    help="Default: fp16 on CUDA; bf16 on a CPU with native bf16 (AVX512-BF16, AMX, "
    "Arm BF16), else fp32.",
)
@click.option("--lr", type=float, default=None, help="Peak LR. Default: base-lr x global/256.")
@click.option("--base-lr", type=float, default=0.256, show_default=True, help="LR per 256.")
@click.option("--momentum", type=float, default=0.875, show_default=True)
@click.option("--weight-decay", type=float, default=3.0517578125e-05, show_default=True)
@click.option("--label-smoothing", type=float, default=0.1, show_default=True)
@click.option(
    "--lr-schedule",
    type=click.Choice(["cosine", "step", "linear", "onecycle"]),
    default="cosine",
    show_default=True,
    help="Updated every step; the resolved schedule is printed at the start.",
)
@click.option(
    "--warmup-epochs",
    type=click.FloatRange(min=0),
    default=None,
    help="Linear warm-up, at most 20 % of the run. Default: 5 for cosine and linear, "
    "0 for step; onecycle has its own.",
)
@click.option("--lr-step-epochs", default="30,60", show_default=True, help="For step.")
@click.option("--lr-factor", type=float, default=0.1, show_default=True, help="For step.")
@click.option(
    "--zero-init-residual/--no-zero-init-residual",
    default=False,
    show_default=True,
    help="Zero the last BN scale of each residual block (ResNet family, RegNet).",
)
@click.option(
    "--small-input/--no-small-input",
    default=None,
    help="CIFAR-style stem: 3x3 stride-1 first conv, no max-pool (ResNet family; RegNet: "
    "stride-1 stem). Default: on at --image-size 64 or less for those models.",
)
@click.option("--channels-last/--no-channels-last", default=None, help="Default: on for CUDA only.")
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="Loader workers. Default on a CPU: a quarter of the cores (at least 1).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU training: the model's threads. Default: the cores the loader workers leave.",
)
@click.option(
    "--cache-dir",
    default=None,
    help="Shard cache for remote --data [default: RECORDKIT_CACHE, else ~/.cache/recordkit].",
)
@click.option(
    "--cache-limit",
    default=None,
    help="Most bytes the shard cache holds, shared by the ranks of a node, e.g. 50GB "
    "[default: RECORDKIT_CACHE_LIMIT, else 20GB].",
)
@click.option(
    "--remote-read",
    type=click.Choice(["auto", "cache", "direct"]),
    default="auto",
    show_default=True,
    help="Remote --data: stream whole shards through the cache, or range-read each record "
    "(auto: the cache for training, range reads for validation).",
)
@click.option(
    "--backend", type=click.Choice(["auto", "dali", "torch"]), default="auto", show_default=True
)
@click.option(
    "--gpu-decode",
    is_flag=True,
    help="Torch backend on CUDA: decode JPEGs on the GPU (nvJPEG) instead of in CPU workers.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--print-freq", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--eval-every", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=1),
    default=None,
    help="Also write last.pt every N training steps, mid-epoch (--resume continues at the next "
    "sample). SIGTERM / SIGUSR1 always write one and exit with code 75.",
)
@click.option(
    "--resume",
    type=click.Path(path_type=Path),
    default=None,
    help="Run directory (its last.pt) or checkpoint file to continue from.",
)
@click.option(
    "--pretrained",
    type=click.Path(dir_okay=False),
    default=None,
    help="Fine-tune from a recordkit-train checkpoint or a torchvision state_dict .pth: "
    "matching tensors are loaded, fc is re-initialised when the classes differ. "
    "Ignored with --resume (the resumed checkpoint has the weights).",
)
@click.option("--freeze-backbone", is_flag=True, help="Train only the classifier (fc).")
@click.option(
    "--backbone-lr-scale",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="LR multiplier for all layers but fc (e.g. 0.1 when fine-tuning).",
)
@click.option("--synthetic", is_flag=True, help="Train on random tensors: compute speed only.")
@click.option("--test-io", is_flag=True, help="Only read batches: loader speed only.")
@click.option(
    "--iters", type=click.IntRange(min=1), default=100, show_default=True, help="For benchmarks."
)
@click.option("--deterministic", is_flag=True, help="Deterministic algorithms (slower).")
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar (default: on a terminal only)."
)
@click.option(
    "--tensorboard", is_flag=True, help="Also log to OUT/tensorboard (needs tensorboard)."
)
@click.option(
    "--dist-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds to wait for a silent rank before failing (default: PyTorch's, 10-30 min).",
)
@augment_options
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None)
@rank_errors
@user_errors
def run_cmd(
    recipe: str | None,
    data: Path | None,
    out: Path,
    resume: Path | None,
    lr_step_epochs: str,
    device: str | None,
    **options: object,
) -> None:
    """Train a model on --data, writing config.json, metrics.jsonl, last.pt, best.pt to --out."""
    if recipe == "list":
        _list_recipes()
        return
    if options["arch"] == "list":
        from recordkit_train.models import ARCHS, is_own, min_image_size, supports_small_input

        for name in ARCHS:
            notes = [f"min {min_image_size(name)} px"]
            if is_own(name):
                notes.append("recordkit's own (recordkit_train.small_models)")
            if supports_small_input(name):
                notes.append("small-input stem")
            click.echo(f"{name}\t{', '.join(notes)}")
        return
    from recordkit_train.config import TrainConfig
    from recordkit_train.engine import train
    from recordkit_train.preemption import PREEMPTED_EXIT_CODE, Preempted

    if data is None and not options["synthetic"]:
        raise click.UsageError("--data is required (or use --synthetic)")
    options["lr_step_epochs"] = _steps(lr_step_epochs)
    if recipe is not None:
        options = _apply_recipe(recipe, options)
    config = TrainConfig(
        data=str(data) if data is not None else None,
        out=str(out),
        resume=str(resume) if resume is not None else None,
        **options,  # type: ignore[arg-type]
    )
    try:
        train(config, device=device)
    except Preempted as exc:
        click.echo(f"recordkit-train: {exc}", err=True)
        sys.exit(PREEMPTED_EXIT_CODE)


def _list_recipes() -> None:
    from recordkit_train.recipes import RECIPES

    for r in RECIPES.values():
        click.echo(f"{r.name}\t{r.summary}\n    {r.command()}")


def _apply_recipe(name: str, options: dict[str, object]) -> dict[str, object]:
    """The recipe's values under the options the user gave (command line or environment);
    prints the resolved settings on rank 0."""
    from click.core import ParameterSource

    from recordkit_train.recipes import resolve_recipe

    ctx = click.get_current_context()
    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    explicit = {k: v for k, v in options.items() if ctx.get_parameter_source(k) in given}
    resolved = resolve_recipe(name, explicit)
    if os.environ.get("RANK", "0") == "0":
        shown = ", ".join(
            f"{k}={v}{' (given)' if k in explicit else ''}" for k, v in resolved.items()
        )
        click.echo(f"recipe {name}: {shown}", err=True)
    return {**options, **resolved}


@main.command("eval", context_settings=CONTEXT_SETTINGS)
@click.option("--data", type=DatasetLocation(), required=True, help="Shard directory or its URL.")
@click.option(
    "--checkpoint", type=click.Path(path_type=Path), required=True, help="best.pt or last.pt."
)
@click.option("--split", default="val", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option(
    "--backend", type=click.Choice(["auto", "dali", "torch"]), default="auto", show_default=True
)
@click.option("--workers", type=click.IntRange(min=0), default=None)
@click.option("--precision", type=click.Choice(["fp16", "bf16", "fp32"]), default=None)
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.option("--use-ema", is_flag=True, help="Score the EMA weights (runs with --ema-decay).")
@rank_errors
@user_errors
def eval_cmd(
    data: Path,
    checkpoint: Path,
    split: str,
    batch_size: int,
    backend: str,
    workers: int | None,
    precision: str | None,
    device: str | None,
    as_json: bool,
    use_ema: bool,
) -> None:
    """Score a checkpoint on a split: top-1/top-5 over exactly its N records."""
    from recordkit_train.engine import evaluate_checkpoint

    result = evaluate_checkpoint(
        data,
        checkpoint,
        split=split,
        batch_size=batch_size,
        backend=backend,
        workers=workers,
        precision=precision,
        device=device,
        use_ema=use_ema,
    )
    if as_json and os.environ.get("RANK", "0") == "0":
        click.echo(json.dumps(result))


@main.command("demo", context_settings=CONTEXT_SETTINGS)
@click.argument("work", type=click.Path(path_type=Path), default=Path("demo"))
@click.option("--per-class", type=click.IntRange(min=2), default=200, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--arch", default="resnet18", show_default=True)
@click.option("--image-size", type=click.IntRange(min=8), default=32, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Loader workers.")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None)
@user_errors
def demo_cmd(work: Path, **options: object) -> None:
    """Draw a small shapes data set in WORK, then list, pack, train, eval and predict.

    Runs in a few minutes on a laptop CPU and fails (exit 1) unless the model reaches 90 %
    validation top-1.
    """
    from recordkit_train.demo import DemoSettings, run_demo

    run_demo(work, DemoSettings(**options))  # type: ignore[arg-type]


@main.command("predict", context_settings=CONTEXT_SETTINGS)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--checkpoint", type=click.Path(path_type=Path), required=True, help="best.pt or last.pt."
)
@click.option(
    "--topk", type=click.IntRange(min=1), default=1, show_default=True, help="Classes per image."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image and line.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Decode threads.")
@click.option(
    "--exts", default=".jpg,.jpeg,.png", show_default=True, help="Image types taken from folders."
)
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None)
@click.option("--use-ema", is_flag=True, help="Predict with the EMA weights.")
@user_errors
def predict_cmd(
    inputs: tuple[Path, ...],
    checkpoint: Path,
    topk: int,
    as_json: bool,
    batch_size: int,
    workers: int | None,
    exts: str,
    device: str | None,
    use_ema: bool,
) -> None:
    """Classify image files and folders (recursively) with the validation preprocessing.

    \b
    Prints, per image and class, most probable first (--topk lines per image):
      PATH<TAB>PROBABILITY<TAB>CLASS
    or with --json one object per image:
      {"path", "class", "index", "prob", "topk": [{"class", "index", "prob"}, ...]}
    Unreadable images are reported on stderr and the others still run; the exit code is 1 if
    any image failed.
    """
    from recordkit_train.predict import Prediction, Predictor, find_images

    predictor = Predictor.from_checkpoint(checkpoint, device, use_ema=use_ema)
    paths = find_images(inputs, exts)
    if not paths:
        raise click.ClickException(f"no images with extensions {exts} under the given paths")
    failed = 0
    for result in predictor.predict(paths, topk=topk, batch_size=batch_size, workers=workers):
        if not isinstance(result, Prediction):
            failed += 1
            click.echo(f"Error: {result.reason}", err=True)
        elif as_json:
            click.echo(json.dumps(result.to_dict()))
        else:
            for prob, name in zip(result.probs, result.classes, strict=True):
                click.echo(f"{result.path}\t{prob:.8f}\t{name}")
    if failed:
        raise click.ClickException(f"{failed} of {len(paths)} images could not be classified")


@main.command("export", context_settings=CONTEXT_SETTINGS)
@click.option(
    "--checkpoint", type=click.Path(path_type=Path), required=True, help="best.pt or last.pt."
)
@click.option("--onnx", "onnx_path", type=click.Path(path_type=Path), required=True)
@click.option("--opset", type=click.IntRange(min=7), default=None, help="Default: torch's.")
@click.option("--check", is_flag=True, help="Compare the file with PyTorch (onnxruntime).")
@click.option("--check-only", is_flag=True, help="Do not export: check an existing --onnx file.")
@click.option(
    "--images",
    type=click.Path(path_type=Path),
    multiple=True,
    help="Image files for the check (repeatable); default: three drawn images.",
)
@click.option(
    "--atol",
    type=click.FloatRange(min=0),
    default=1e-3,
    show_default=True,
    help="Tolerance, absolute part.",
)
@click.option(
    "--rtol",
    type=click.FloatRange(min=0),
    default=1e-4,
    show_default=True,
    help="Tolerance, relative part (times the largest |logit|).",
)
@click.option("--use-ema", is_flag=True, help="Export (and check) the EMA weights.")
@user_errors
def export_cmd(
    checkpoint: Path,
    onnx_path: Path,
    opset: int | None,
    check: bool,
    check_only: bool,
    images: tuple[Path, ...],
    atol: float,
    rtol: float,
    use_ema: bool,
) -> None:
    """Export a checkpoint to ONNX: uint8 RGB NCHW `images` in, float32 `logits` out.

    \b
    Input `images`: uint8 (batch, 3, S, S), the validation crop (S = the checkpoint's image
    size); normalization is inside the graph. Output `logits`: float32 (batch, classes).
    --check runs onnxruntime on a random batch and on images (--images, else three drawn
    ones) and fails (exit 1) when a logit differs from PyTorch's by more than
    atol + rtol x (the batch's largest |logit|), or top-1 differs on an input whose two best
    PyTorch logits are more than twice that apart. Needs: pip install 'recordkit[onnx]'.
    """
    from recordkit_train.export import check_onnx, export_onnx

    if not check_only:
        done = export_onnx(checkpoint, onnx_path, opset=opset, use_ema=use_ema)
        click.echo(
            f"wrote {done.path}: opset {done.opset}, input images uint8 "
            f"(batch, 3, {done.image_size}, {done.image_size}), output logits float32 "
            f"(batch, {len(done.classes)}), {done.seconds:.1f} s"
        )
    if check or check_only:
        results = check_onnx(
            onnx_path, checkpoint, images=images, atol=atol, rtol=rtol, use_ema=use_ema
        )
        for result in results:
            click.echo(f"check {result.summary()}")
        if not all(r.passed for r in results):
            raise click.ClickException(f"{onnx_path} does not match {checkpoint}")
        click.echo(f"check passed: {onnx_path} matches {checkpoint}")
