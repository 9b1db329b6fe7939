"""``recordkit-train``: the training command line (``run`` and ``eval``).

A thin skin over :mod:`recordkit_train.engine`: options become a frozen
:class:`~recordkit_train.config.TrainConfig`, progress is logged in MXNet's style on rank 0,
and errors a user can cause end as one ``Error: …`` line with exit code 1. Works the same
under ``torchrun --nproc-per-node N -m recordkit_train run …``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from recordkit import __version__
from recordkit.cli import user_errors

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _setup_logging(verbose: int) -> None:
    """Progress lines as plain text on stderr; library warnings with their level and name."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
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


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="recordkit-train")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Distributed fp16 ResNet training on recordkit shards.

    \b
    recordkit-train run --data shards/ --out runs/r50
    torchrun --nproc-per-node 8 -m recordkit_train run --data shards/ --out runs/r50
    recordkit-train eval --data shards/ --checkpoint runs/r50/best.pt
    """
    _setup_logging(verbose)


@main.command("run", context_settings=CONTEXT_SETTINGS)
@click.option("--data", type=click.Path(path_type=Path), help="Shard directory.")
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("runs/train"), show_default=True
)
@click.option("--arch", default="resnet50", show_default=True, help="resnet18 … resnet152.")
@click.option("--epochs", type=click.IntRange(min=1), default=90, show_default=True)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Per rank."
)
@click.option("--image-size", type=click.IntRange(min=1), default=224, show_default=True)
@click.option(
    "--precision",
    type=click.Choice(["fp16", "bf16", "fp32"]),
    default=None,
    help="Default: fp16 on CUDA, bf16 on CPU.",
)
@click.option("--lr", type=float, default=None, help="Peak LR. Default: base-lr x global/256.")
@click.option("--base-lr", type=float, default=0.256, show_default=True, help="LR per 256.")
@click.option("--momentum", type=float, default=0.875, show_default=True)
@click.option("--weight-decay", type=float, default=3.0517578125e-05, show_default=True)
@click.option("--label-smoothing", type=float, default=0.1, show_default=True)
@click.option(
    "--lr-schedule", type=click.Choice(["cosine", "step"]), default="cosine", show_default=True
)
@click.option(
    "--warmup-epochs", type=float, default=None, help="Default: 5 for cosine, 0 for step."
)
@click.option("--lr-step-epochs", default="30,60", show_default=True, help="For step.")
@click.option("--lr-factor", type=float, default=0.1, show_default=True, help="For step.")
@click.option("--zero-init-residual/--no-zero-init-residual", default=False, show_default=True)
@click.option("--channels-last/--no-channels-last", default=None, help="Default: on for CUDA only.")
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Loader workers.")
@click.option(
    "--backend", type=click.Choice(["auto", "dali", "torch"]), default="auto", show_default=True
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--print-freq", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--eval-every", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--resume",
    type=click.Path(path_type=Path),
    default=None,
    help="Run directory (its last.pt) or checkpoint file to continue from.",
)
@click.option("--synthetic", is_flag=True, help="Train on random tensors: compute speed only.")
@click.option("--test-io", is_flag=True, help="Only read batches: loader speed only.")
@click.option(
    "--iters", type=click.IntRange(min=1), default=100, show_default=True, help="For benchmarks."
)
@click.option("--deterministic", is_flag=True, help="Deterministic algorithms (slower).")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None)
@user_errors
def run_cmd(
    data: Path | None,
    out: Path,
    resume: Path | None,
    lr_step_epochs: str,
    device: str | None,
    **options: object,
) -> None:
    """Train a ResNet on --data, writing config.json, metrics.jsonl, last.pt, best.pt to --out."""
    from recordkit_train.config import TrainConfig
    from recordkit_train.engine import train

    if data is None and not options["synthetic"]:
        raise click.UsageError("--data is required (or use --synthetic)")
    config = TrainConfig(
        data=str(data) if data is not None else None,
        out=str(out),
        resume=str(resume) if resume is not None else None,
        lr_step_epochs=_steps(lr_step_epochs),
        **options,  # type: ignore[arg-type]
    )
    train(config, device=device)


@main.command("eval", context_settings=CONTEXT_SETTINGS)
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Shard directory.")
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
    )
    if as_json and os.environ.get("RANK", "0") == "0":
        click.echo(json.dumps(result))
