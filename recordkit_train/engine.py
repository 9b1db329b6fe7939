"""The training and evaluation engine: loaders, model, DDP, fp16 step, logs, checkpoints.

Progress goes to the ``recordkit_train.engine`` logger in MXNet's style (the CLI gives it a
plain ``%(message)s`` formatter), accuracies in percent::

    train: epoch 0, iter 10, loss: 7.197, top_1: 0.000, top_k: 0.000, samples/s: 61.6
    validation: epoch 0, top_1: 10.120, top_k: 27.480, samples: 50000, samples/s: 2200.1

Outputs in ``config.out`` (written by rank 0): ``config.json`` (the resolved configuration),
``metrics.jsonl`` (one JSON object per epoch), ``last.pt`` (every epoch), ``best.pt`` (best
validation top-1) and, at the end, ``metrics.png`` (loss and top-1/top-5 per epoch, see
:mod:`recordkit_train.plot`). Metrics stay on the device and are summed across ranks only
every ``print_freq`` iterations and at the end of an epoch.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import recordkit
from recordkit_train import distributed
from recordkit_train.checkpoint import load_checkpoint, restore_rng, unwrap
from recordkit_train.config import ConfigError, TrainConfig
from recordkit_train.ema import ModelEma
from recordkit_train.metrics import AccuracyMeter, LossMeter, read_meters
from recordkit_train.mixup import Mixer, dominant_labels, soft_target_cross_entropy
from recordkit_train.models import (
    SMALL_INPUT_MAX_SIZE,
    build_model,
    is_own,
    supports_small_input,
)
from recordkit_train.optim import LRSchedule, build_optimizer, load_optimizer_state
from recordkit_train.plot import plot_metrics
from recordkit_train.precision import (
    LossScaler,
    autocast,
    precision_reason,
    resolve_precision,
)
from recordkit_train.preemption import (
    Checkpointer,
    Preempted,
    StepTrace,
    StopRequest,
    trim_jsonl,
    trim_trace,
)
from recordkit_train.pretrained import setup_finetuning
from recordkit_train.reporting import Reporter, progress_enabled

__all__ = ["benchmark", "evaluate", "evaluate_checkpoint", "loader_dtype", "train"]

logger = logging.getLogger(__name__)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _finite_or_none(value: float) -> float | None:
    return None if isinstance(value, float) and math.isnan(value) else value


def evaluate(
    model: nn.Module,
    loader: Any,
    *,
    device: torch.device | str,
    precision: str = "fp32",
    ks: tuple[int, int] = (1, 5),
) -> dict[str, float | int]:
    """Top-k accuracy over every record of ``loader``, summed over all ranks.

    The loader must yield each record exactly once over all ranks (``make_loader`` with
    ``drop_last=False``, as for validation). Ranks may see different batch counts, so the
    forward pass runs on the unwrapped model and only one all-reduce happens, at the end; call
    this on every rank.

    Args:
        model: The model (DDP-wrapped or not).
        loader: Yields ``(images, labels)``.
        device: Where the model runs.
        precision: Autocast precision for the forward pass.
        ks: The two ``k`` values reported as ``top1`` / ``top5`` style keys.

    Returns:
        ``{"top1": %, "top5": %, "samples": N, "samples_per_s": ...}`` (keys follow ``ks``;
        accuracies are NaN when there are no samples).
    """
    dev = torch.device(device)
    net = unwrap(model)
    was_training = net.training
    net.eval()
    meter = AccuracyMeter(ks=ks, device=dev)
    start = time.perf_counter()
    with torch.no_grad():
        for images, labels in loader:
            images = images.to(dev, non_blocking=True)
            labels = labels.to(dev, non_blocking=True)
            with autocast(precision, dev):
                logits = net(images)
            meter.update(logits.float(), labels)
    meter.all_reduce()
    result = meter.compute()
    _sync(dev)
    elapsed = time.perf_counter() - start
    result["samples_per_s"] = result["samples"] / elapsed if elapsed > 0 else 0.0
    net.train(was_training)
    return result


def loader_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The image dtype the loaders hand over: float16 for fp16 on CUDA, else float32.

    Under fp16 autocast the first convolution casts its input to float16 anyway; producing
    float16 in the loader (DALI's ``crop_mirror_normalize`` writes it directly) halves the
    batch's bytes. bfloat16 stays float32 here: DALI has no bfloat16 output.
    """
    return torch.float16 if precision == "fp16" and device.type == "cuda" else torch.float32


def _make_loaders(
    cfg: TrainConfig, ds: recordkit.Dataset, device: torch.device, *, val: bool = True
) -> tuple[Any, Any | None]:
    common: dict[str, Any] = {
        "batch_size": cfg.batch_size,
        "image_size": cfg.image_size,
        "backend": cfg.backend,
        "device": device,
        "dtype": loader_dtype(str(cfg.precision), device),
        "channels_last": bool(cfg.channels_last),
        "num_workers": cfg.workers,
        "seed": cfg.seed,
        "gpu_decode": cfg.gpu_decode and device.type == "cuda",
        "augment": cfg.augment(),
    }
    if isinstance(ds.root, str):  # a remote dataset (docs/REMOTE.md)
        from recordkit.loaders.streaming import RemoteOptions
        from recordkit.sizes import parse_size

        limit = parse_size(cfg.cache_limit) if cfg.cache_limit is not None else None
        common["remote"] = RemoteOptions(cfg.cache_dir, limit, cfg.remote_read)
    if "train" not in ds:
        raise ConfigError(f"{cfg.data} has no 'train' split (splits: {', '.join(ds)})")
    # epochs: DALI prepares epoch e + 1 in the background only while there is one.
    train_loader = recordkit.make_loader(
        ds, "train", train=True, drop_last=True, epochs=cfg.epochs, **common
    )
    if len(train_loader) == 0:
        raise ConfigError(
            f"the train split has {len(ds['train'])} records: fewer than one batch of "
            f"{cfg.batch_size} per rank"
        )
    val_loader = None
    if not val:
        return train_loader, None
    if "val" in ds and len(ds["val"]) > 0:
        val_loader = recordkit.make_loader(
            ds, "val", train=False, drop_last=False, shuffle=False, **common
        )
    else:
        logger.warning("%s has no validation records: no validation, no best.pt", cfg.data)
    return train_loader, val_loader


def _describe_augment(cfg: TrainConfig) -> str:
    """One line: the training augmentation, mixing and EMA this run uses."""
    aug = cfg.augment()
    if aug.mode == "rrc":
        crop = f"random-resized-crop scale {aug.scale[0]:g}-{aug.scale[1]:g}, ratio "
        crop += f"{aug.ratio[0]:.3g}-{aug.ratio[1]:.3g}, flip {aug.flip:g}"
    elif aug.mode == "pad-crop":
        crop = f"pad {aug.pad} + random crop, flip {aug.flip:g}"
    else:
        crop = "none (the validation transform)"
    parts = [f"augment: {crop}", f"val resize ratio {aug.val_resize_ratio:g}"]
    if aug.auto_augment == "randaugment":
        parts.append(f"randaugment n {aug.ra_n} m {aug.ra_m}")
    elif aug.auto_augment:
        parts.append(aug.auto_augment)
    if cfg.mixes:
        parts.append(
            f"mixup {cfg.mixup:g} / cutmix {cfg.cutmix:g} (prob {cfg.mixup_prob:g}, switch "
            f"{cfg.mixup_switch_prob:g}; soft-target loss, train top-1 vs the dominant label)"
        )
    if cfg.ema_decay > 0:
        parts.append(f"EMA decay {cfg.ema_decay:g}{' with warm-up' if cfg.ema_warmup else ''}")
    return "; ".join(parts)


def _close(*loaders: Any) -> None:
    """Free what loaders hold between epochs (DALI pipelines, a build thread)."""
    for loader in loaders:
        close = getattr(loader, "close", None)
        if close is not None:
            close()


def _train_epoch(
    *,
    cfg: TrainConfig,
    env: distributed.DistEnv,
    epoch: int,
    model: nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
    scaler: LossScaler,
    criterion: nn.Module,
    reporter: Reporter,
    mixer: Mixer | None = None,
    ema: ModelEma | None = None,
    ckpt: Checkpointer,
    resume: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Train one epoch (from ``resume``'s position when given: a mid-epoch checkpoint's).

    After each step the stop request is polled; when the ranks agree to stop (or every
    ``checkpoint_every`` steps) ``ckpt`` writes a mid-epoch checkpoint, and on a stop
    :class:`~recordkit_train.preemption.Preempted` is raised.
    """
    device = env.device
    model.train()
    window_loss = LossMeter(device)
    window_acc = AccuracyMeter(device=device)
    epoch_loss = LossMeter(device)
    start_batch = 0
    if resume is not None:
        start_batch = int(resume["batch"])
        loader.load_state_dict(resume["loader"])
        if env.is_main and resume.get("epoch_loss"):
            epoch_loss.load_sums(resume["epoch_loss"])
    else:
        loader.set_epoch(epoch)
    lr = schedule.lr_at(epoch, max(0, start_batch - 1))  # the last step's, when resuming
    start = window_start = time.perf_counter()
    window_n = total_n = 0
    iters = len(loader)
    with reporter.epoch_bar(iters, epoch) as bar:
        if start_batch:
            bar.update(start_batch)
        for i, (images, labels) in enumerate(loader, start=start_batch):
            step = epoch * iters + i + 1
            lr, loss = _train_step(
                cfg=cfg, epoch=epoch, i=i, images=images, labels=labels, model=model,
                optimizer=optimizer, schedule=schedule, scaler=scaler, criterion=criterion,
                meters=(window_loss, window_acc, epoch_loss), device=device,
                mixer=mixer, ema=ema, step=step,
            )  # fmt: skip
            ckpt.trace.add(step, epoch, i + 1, loss, lr)
            n = images.shape[0]
            window_n += n
            total_n += n
            bar.update(1)
            if (i + 1) % cfg.print_freq == 0:
                # the one sync per window (the step trace's losses travel with the meters)
                stats, acc, _ = read_meters(window_loss, window_acc, ckpt.trace)
                elapsed = time.perf_counter() - window_start
                rate = window_n * env.world_size / elapsed if elapsed > 0 else 0.0
                logger.info(
                    "train: epoch %d, iter %d, loss: %.3f, top_1: %.3f, top_k: %.3f, "
                    "samples/s: %.1f",
                    epoch,
                    i + 1,
                    stats["loss"],
                    acc["top1"],
                    acc["top5"],
                    rate,
                )
                bar.set_postfix_str(f"loss {stats['loss']:.3f}, {rate:.0f} img/s")
                reporter.scalars(
                    step,
                    {
                        "train/loss": stats["loss"],
                        "train/top1": acc["top1"],
                        "train/top5": acc["top5"],
                        "train/samples_per_s": rate,
                        "lr": lr,
                    },
                )
                window_loss.reset()
                window_acc.reset()
                window_n = 0
                window_start = time.perf_counter()
            stop = ckpt.stop.poll()
            every = cfg.checkpoint_every
            if stop or (every and step % every == 0 and i + 1 < iters):
                ckpt.save(epoch=epoch, batch=i + 1, loader=loader, epoch_loss=epoch_loss)
                if stop:
                    raise Preempted(ckpt.path, epoch, i + 1, ckpt.stop.signal_name)
    epoch_stats, _ = read_meters(epoch_loss, ckpt.trace)
    _sync(device)
    elapsed = time.perf_counter() - start
    return {
        "train_loss": float(epoch_stats["loss"]),
        "lr": lr,
        "samples_per_s": total_n * env.world_size / elapsed if elapsed > 0 else 0.0,
    }


def _train_step(
    *,
    cfg: TrainConfig,
    epoch: int,
    i: int,
    images: torch.Tensor,
    labels: torch.Tensor,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
    scaler: LossScaler,
    criterion: nn.Module,
    meters: tuple[LossMeter, AccuracyMeter, LossMeter],
    device: torch.device,
    mixer: Mixer | None = None,
    ema: ModelEma | None = None,
    step: int = 0,
) -> tuple[float, torch.Tensor]:
    """One optimizer step; metrics accumulate on the device (no host sync).

    With ``mixer`` the batch is mixed here, on the device, and the loss is the soft-target
    cross entropy (label smoothing is in the targets); training top-1 then counts each image's
    dominant label. With ``ema`` the average is updated after the step (``step``: 1-based
    over the run).

    Returns the LR and the batch's loss (a detached device tensor).
    """
    window_loss, window_acc, epoch_loss = meters
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    targets: torch.Tensor | None = None
    if mixer is not None:
        images, targets = mixer(images, labels, epoch=epoch, step=i)
    lr = schedule.apply(optimizer, epoch, i)
    with autocast(str(cfg.precision), device):
        logits = model(images)
        if targets is None:
            loss = criterion(logits, labels)
        else:
            loss = soft_target_cross_entropy(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.step(loss, optimizer)
    if ema is not None:
        ema.update(unwrap(model), step)
    n = images.shape[0]
    window_loss.update(loss, n)
    window_acc.update(logits.float(), labels if targets is None else dominant_labels(targets))
    epoch_loss.update(loss, n)
    return lr, loss.detach()


def _trim_metrics(path: Path, start_epoch: int) -> None:
    """Keep only the rows of epochs before ``start_epoch`` (a fresh run keeps none)."""
    trim_jsonl(path, "epoch", start_epoch)


def _resume_path(resume: str) -> Path:
    path = Path(resume)
    return path / "last.pt" if path.is_dir() else path


def _resume(
    path: Path,
    *,
    env: distributed.DistEnv,
    cfg: TrainConfig,
    iters: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: LossScaler,
    schedule: LRSchedule,
    ema: ModelEma | None = None,
) -> tuple[int, float | None, dict[str, Any] | None]:
    """Restore a run's state from ``path``.

    Returns the epoch to start at, the best top-1 and, for a mid-epoch checkpoint, this
    rank's position in that epoch: ``{"batch", "loader", "epoch_loss"}`` (else None).

    The checkpoint is loaded to the CPU whatever the training device: the model's and the
    optimizer's ``load_state_dict`` copy each tensor to the device of the parameter it
    belongs to, and the RNG states must be CPU tensors (NumPy's key array is read back with
    ``.numpy()``, which fails for a tensor mapped to a GPU). Each rank restores its own RNG
    states when the checkpoint has them for this world size, else rank 0's.
    """
    state = load_checkpoint(path, map_location="cpu")
    missing = {"model", "optimizer", "schedule", "epoch"} - set(state)
    if missing:
        raise ConfigError(f"{path} cannot be resumed from: no {', '.join(sorted(missing))}")
    try:
        batch = int(state.get("batch") or 0)
    except (TypeError, ValueError):
        raise ConfigError(f"{path} has an unreadable position: batch {state['batch']!r}") from None
    if batch < 0:
        raise ConfigError(f"{path} has an unreadable position: batch {batch}")
    if batch:
        saved = (state.get("world_size"), state.get("batch_size"), state.get("iters_per_epoch"))
        if saved != (env.world_size, cfg.batch_size, iters):
            raise ConfigError(
                f"{path} was written mid-epoch by {saved[0]} ranks x {saved[1]} images "
                f"({saved[2]} iters/epoch); this run has {env.world_size} x {cfg.batch_size} "
                f"({iters}): resume it with the same world size, --batch-size and data"
            )
    unwrap(model).load_state_dict(state["model"])
    if ema is not None:
        if isinstance(state.get("ema"), dict):
            ema.load_state_dict(state["ema"])
        else:
            ema.load_state_dict(state["model"])
            logger.warning("%s has no EMA weights: the average starts from its model", path)
    try:
        load_optimizer_state(optimizer, state["optimizer"])
    except ValueError as exc:  # other parameter groups: --freeze-backbone / lr scale
        raise ConfigError(
            f"{path} was trained with other optimizer parameter groups "
            f"({exc}); resume with the same --freeze-backbone / --backbone-lr-scale"
        ) from None
    scaler.load_state_dict(state.get("scaler") or {})
    if state["schedule"] != schedule.state_dict():
        logger.warning(
            "the checkpoint's LR schedule differs from this configuration's; "
            "continuing with the checkpoint's: %s",
            state["schedule"],
        )
    schedule.load_state_dict(state["schedule"])
    ranks = state.get("ranks")
    mine: dict[str, Any] = {}
    if isinstance(ranks, list) and len(ranks) == env.world_size:
        mine = ranks[env.rank] if isinstance(ranks[env.rank], dict) else {}
    rng = mine.get("rng") or state.get("rng")
    if rng:
        restore_rng(rng)
    start_epoch = int(state["epoch"])
    position = None
    if batch:
        position = {
            "batch": batch,
            "loader": mine.get("loader") or {"epoch": start_epoch, "batch": batch},
            "epoch_loss": state.get("epoch_loss"),
        }
        logger.info("resumed from %s at epoch %d, batch %d", path, start_epoch, batch)
    else:
        logger.info("resumed from %s at epoch %d", path, start_epoch)
    return start_epoch, state.get("best_metric"), position


def _make_model(cfg: TrainConfig, num_classes: int, device: torch.device) -> nn.Module:
    return build_model(
        cfg.arch,
        num_classes,
        image_size=cfg.image_size,
        small_input=bool(cfg.small_input),
        zero_init_residual=cfg.zero_init_residual,
        channels_last=bool(cfg.channels_last),
    ).to(device)


def _ddp(model: nn.Module, env: distributed.DistEnv) -> nn.Module:
    """Wrap in DistributedDataParallel when there is more than one rank."""
    if env.world_size == 1:
        return model
    ids = [env.device.index] if env.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _make_optimizer(
    cfg: TrainConfig, model: nn.Module, lr_scale: Callable[[str], float] | None = None
) -> torch.optim.Optimizer:
    return build_optimizer(
        model,
        lr=float(cfg.lr),
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        lr_scale=lr_scale,
    )


def _run_synthetic(cfg: TrainConfig, env: distributed.DistEnv, num_classes: int) -> dict[str, Any]:
    device = env.device
    precision = str(cfg.precision)
    model = _ddp(_make_model(cfg, num_classes, device), env)
    optimizer = _make_optimizer(cfg, model)
    scaler = LossScaler(precision, device)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    images = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, device=device)
    images = images.contiguous(memory_format=fmt)
    labels = torch.randint(0, num_classes, (cfg.batch_size,), device=device)
    warmup = min(5, cfg.iters // 5)
    start = time.perf_counter()
    model.train()
    for i in range(cfg.iters):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        with autocast(precision, device):
            loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.step(loss, optimizer)
        if (i + 1) % cfg.print_freq == 0:
            logger.info("synthetic: iter %d, loss: %.3f", i + 1, float(loss.detach()))
    _sync(device)
    elapsed = time.perf_counter() - start
    timed = cfg.iters - warmup
    rate = timed * cfg.batch_size * env.world_size / elapsed if elapsed > 0 else 0.0
    logger.info(
        "synthetic: %s %s batch %d x %d ranks, samples/s: %.1f",
        cfg.arch,
        precision,
        cfg.batch_size,
        env.world_size,
        rate,
    )
    return {"samples_per_s": rate, "iters": cfg.iters}


def _run_test_io(
    cfg: TrainConfig, env: distributed.DistEnv, ds: recordkit.Dataset
) -> dict[str, Any]:
    train_loader, _ = _make_loaders(cfg, ds, env.device, val=False)
    seen = 0
    epoch = 0
    start = time.perf_counter()
    while seen < cfg.iters:
        train_loader.set_epoch(epoch)
        for _images, _labels in train_loader:
            seen += 1
            if seen % cfg.print_freq == 0:
                elapsed = time.perf_counter() - start
                logger.info(
                    "test-io: iter %d, samples/s: %.1f",
                    seen,
                    seen * cfg.batch_size * env.world_size / elapsed,
                )
            if seen >= cfg.iters:
                break
        epoch += 1
    _sync(env.device)
    elapsed = time.perf_counter() - start
    _close(train_loader)
    rate = seen * cfg.batch_size * env.world_size / elapsed if elapsed > 0 else 0.0
    logger.info("test-io: %d batches, samples/s: %.1f", seen, rate)
    return {"samples_per_s": rate, "iters": seen}


def _run_real(cfg: TrainConfig, env: distributed.DistEnv, ds: recordkit.Dataset) -> dict[str, Any]:
    """Time ``cfg.iters`` real training steps (loader + model), as the training loop runs them."""
    device = env.device
    train_loader, _ = _make_loaders(cfg, ds, device, val=False)
    model = _ddp(_make_model(cfg, max(len(ds.classes), 1), device), env)
    optimizer = _make_optimizer(cfg, model)
    schedule = LRSchedule("step", base_lr=float(cfg.lr), epochs=1, iters_per_epoch=1)
    scaler = LossScaler(str(cfg.precision), device)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    meters = (LossMeter(device), AccuracyMeter(device=device), LossMeter(device))
    warmup = min(5, cfg.iters // 5)
    seen = epoch = 0
    model.train()
    start = time.perf_counter()
    while seen < cfg.iters:
        train_loader.set_epoch(epoch)
        for images, labels in train_loader:
            if seen == warmup:
                _sync(device)
                start = time.perf_counter()
            _train_step(
                cfg=cfg, epoch=0, i=0, images=images, labels=labels, model=model,
                optimizer=optimizer, schedule=schedule, scaler=scaler, criterion=criterion,
                meters=meters, device=device,
            )  # fmt: skip
            seen += 1
            if seen % cfg.print_freq == 0:
                logger.info("real: iter %d, loss: %.3f", seen, meters[0].compute()["loss"])
                meters[0].reset()
            if seen >= cfg.iters:
                break
        epoch += 1
    _sync(device)
    elapsed = time.perf_counter() - start
    _close(train_loader)
    timed = cfg.iters - warmup
    rate = timed * cfg.batch_size * env.world_size / elapsed if elapsed > 0 else 0.0
    logger.info("real: %s %s, samples/s: %.1f", cfg.arch, cfg.precision, rate)
    return {"samples_per_s": rate, "iters": cfg.iters}


def benchmark(config: TrainConfig, mode: str, *, device: str | None = None) -> dict[str, Any]:
    """Measure training throughput in one of three modes (``tools/bench_train.py``).

    ``synthetic``: random tensors made once on the device, model only (compute speed).
    ``io``: the training loader alone (MXNet's ``--test-io``). ``real``: the training step fed
    by the loader, exactly as :func:`train` runs it. The first ``min(5, iters // 5)`` steps
    are warm-up and not timed (except for ``io``, which times every batch).

    Args:
        config: Model, batch, precision, loader; ``iters`` steps are run.
        mode: ``synthetic``, ``io`` or ``real``.
        device: ``"cuda"`` or ``"cpu"``; default CUDA when available.

    Returns:
        ``{"samples_per_s", "iters"}`` (samples/s summed over ranks).

    Raises:
        ConfigError: Unknown mode, or ``data`` missing for ``io`` / ``real``.
    """
    if mode not in ("synthetic", "io", "real"):
        raise ConfigError(f"unknown benchmark mode {mode!r}; choose synthetic, io or real")
    if mode != "synthetic" and not config.data:
        raise ConfigError(f"the {mode} benchmark needs data")
    env = distributed.setup(device)
    try:
        cfg = config.resolved(env.device, env.world_size)
        _set_threads(cfg)
        _seed_everything(cfg.seed)
        if env.device.type == "cuda" and not cfg.deterministic:
            torch.backends.cudnn.benchmark = True
        if mode == "synthetic":
            classes = recordkit.open(cfg.data).classes if cfg.data else None
            return _run_synthetic(cfg, env, len(classes) if classes else 1000)
        ds = recordkit.open(str(cfg.data))
        return _run_test_io(cfg, env, ds) if mode == "io" else _run_real(cfg, env, ds)
    finally:
        distributed.cleanup(env)


def train(config: TrainConfig, *, device: str | None = None) -> dict[str, Any]:
    """Run a training job (or the synthetic / test-io benchmark it describes).

    Under torchrun (``WORLD_SIZE > 1``) every rank calls this; rank 0 writes the outputs.

    Args:
        config: The recipe; None values are resolved for the device and world size.
        device: ``"cuda"`` or ``"cpu"``; default CUDA when available.

    Returns:
        For training: ``{"out", "epochs", "best_top1", "last"}`` with ``last`` the final
        ``metrics.jsonl`` row. For ``synthetic`` / ``test_io``: ``{"samples_per_s", "iters"}``.

    Raises:
        ConfigError: The configuration cannot run on this data.
        recordkit.RecordkitError: The data or the checkpoint to resume from is unusable.
    """
    env = distributed.setup(device, timeout=config.dist_timeout)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return _train(config, env)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        distributed.cleanup(env)


def _set_threads(cfg: TrainConfig) -> None:
    """On a CPU, the model's intra-op threads (:func:`recordkit_train.config.cpu_threads`)."""
    if cfg.threads is not None and torch.get_num_threads() != cfg.threads:
        torch.set_num_threads(cfg.threads)


def _train(config: TrainConfig, env: distributed.DistEnv) -> dict[str, Any]:
    cfg = config.resolved(env.device, env.world_size)
    _set_threads(cfg)
    device = env.device
    _seed_everything(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if cfg.synthetic:
        classes = recordkit.open(cfg.data).classes if cfg.data else None
        return _run_synthetic(cfg, env, len(classes) if classes else 1000)
    ds = recordkit.open(str(cfg.data))
    if cfg.test_io:
        return _run_test_io(cfg, env, ds)
    classes = list(ds.classes)
    if not classes:
        raise ConfigError(f"{cfg.data} lists no classes")
    train_loader, val_loader = _make_loaders(cfg, ds, device)
    precision = str(cfg.precision)
    model = _make_model(cfg, len(classes), device)
    lr_scale = setup_finetuning(
        model,
        pretrained=cfg.pretrained,
        resume=cfg.resume,
        freeze=cfg.freeze_backbone,
        lr_scale=cfg.backbone_lr_scale,
        classes=classes,
    )
    optimizer = _make_optimizer(cfg, model, lr_scale=lr_scale)
    ema = ModelEma(model, cfg.ema_decay, warmup=cfg.ema_warmup) if cfg.ema_decay > 0 else None
    mixer = None
    if cfg.mixes:
        mixer = Mixer(
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            prob=cfg.mixup_prob,
            switch_prob=cfg.mixup_switch_prob,
            label_smoothing=cfg.label_smoothing,
            num_classes=len(classes),
            seed=cfg.seed,
            rank=env.rank,
        )
    schedule = LRSchedule(
        cfg.lr_schedule,
        base_lr=float(cfg.lr),
        epochs=cfg.epochs,
        iters_per_epoch=len(train_loader),
        warmup_epochs=float(cfg.warmup_epochs or 0.0),
        step_epochs=cfg.lr_step_epochs,
        step_factor=cfg.lr_factor,
    )
    scaler = LossScaler(precision, device)
    start_epoch = 0
    best: float | None = None
    position: dict[str, Any] | None = None
    if cfg.resume:
        start_epoch, best, position = _resume(
            _resume_path(cfg.resume),
            env=env,
            cfg=cfg,
            iters=len(train_loader),
            model=model,
            optimizer=optimizer,
            scaler=scaler,
            schedule=schedule,
            ema=ema,
        )
    start_step = start_epoch * len(train_loader) + (position["batch"] if position else 0)
    if env.is_main:
        logger.info("%s", schedule.describe())
        logger.info("%s", _describe_augment(cfg))
        if cfg.small_input:
            logger.info("model: %s with the small-input stem (3x3 stride 1)", cfg.arch)
        elif is_own(cfg.arch):
            logger.info("model: %s (recordkit's own) built for %d px", cfg.arch, cfg.image_size)
        elif cfg.image_size <= SMALL_INPUT_MAX_SIZE and not supports_small_input(cfg.arch):
            logger.info(
                "model: %s keeps its ImageNet stem at %d px (the small-input stem is for "
                "ResNet and RegNet models)",
                cfg.arch,
                cfg.image_size,
            )
    model = _ddp(model, env)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    out = Path(cfg.out)
    if env.is_main:
        cfg.write_json(out)
        _trim_metrics(out / "metrics.jsonl", start_epoch)
        trim_trace(out / "steps.jsonl", start_step + 1)
        logger.info(
            "training %s on %d classes: %d ranks x %d images, %d iters/epoch, lr %.4g, %s (%s), "
            "%s%s",
            cfg.arch,
            len(classes),
            env.world_size,
            cfg.batch_size,
            len(train_loader),
            cfg.lr,
            precision,
            "given" if config.precision else precision_reason(precision, device),
            device,
            f" ({cfg.threads} threads, {cfg.workers} loader workers)" if cfg.threads else "",
        )
    reporter = Reporter(
        out,
        progress=progress_enabled(cfg.progress, is_main=env.is_main),
        tensorboard=cfg.tensorboard and env.is_main,
        purge_step=start_step + 1 if start_step else None,
    )
    try:
        with StopRequest(env) as stop:
            ckpt = Checkpointer(
                out=out, env=env, model=model, optimizer=optimizer, scaler=scaler,
                schedule=schedule, config=cfg.to_dict(), classes=classes, stop=stop,
                trace=StepTrace(out / "steps.jsonl", env), best=best, ema=ema,
            )  # fmt: skip
            last = _epochs(
                cfg=cfg,
                env=env,
                start_epoch=start_epoch,
                position=position,
                model=model,
                loaders=(train_loader, val_loader),
                optimizer=optimizer,
                schedule=schedule,
                scaler=scaler,
                criterion=criterion,
                reporter=reporter,
                ckpt=ckpt,
                mixer=mixer,
                ema=ema,
            )
    finally:
        reporter.close()
        _close(train_loader, val_loader)
    best = last.pop("best", None) if last else best
    if env.is_main:
        try:
            plot_metrics(out / "metrics.jsonl", out / "metrics.png")
            logger.info("wrote %s", out / "metrics.png")
        except (OSError, ValueError) as exc:  # a plot never fails a finished run
            logger.warning("could not draw %s: %s", out / "metrics.png", exc)
    return {"out": str(out), "epochs": cfg.epochs, "best_top1": best, "last": last}


def _epochs(
    *,
    cfg: TrainConfig,
    env: distributed.DistEnv,
    start_epoch: int,
    position: dict[str, Any] | None,
    model: nn.Module,
    loaders: tuple[Any, Any | None],
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
    scaler: LossScaler,
    criterion: nn.Module,
    reporter: Reporter,
    ckpt: Checkpointer,
    mixer: Mixer | None = None,
    ema: ModelEma | None = None,
) -> dict[str, Any]:
    """Train, validate and checkpoint epochs ``start_epoch`` .. ``cfg.epochs - 1``, the first
    from ``position`` when resuming mid-epoch.

    Returns the last ``metrics.jsonl`` row plus ``"best"`` (the best validation top-1).

    Raises:
        Preempted: A stop was requested (SIGTERM / SIGUSR1) and a checkpoint written.
    """
    device = env.device
    precision = str(cfg.precision)
    out = Path(cfg.out)
    train_loader, val_loader = loaders
    last: dict[str, Any] = {}
    best = ckpt.best
    for epoch in range(start_epoch, cfg.epochs):
        stats = _train_epoch(
            cfg=cfg,
            env=env,
            epoch=epoch,
            model=model,
            loader=train_loader,
            optimizer=optimizer,
            schedule=schedule,
            scaler=scaler,
            criterion=criterion,
            reporter=reporter,
            ckpt=ckpt,
            resume=position if epoch == start_epoch else None,
            mixer=mixer,
            ema=ema,
        )
        row: dict[str, Any] = {"epoch": epoch, **stats}
        row.update(val_top1=None, val_top5=None, val_samples=0)
        if ema is not None:
            row.update(ema_val_top1=None, ema_val_top5=None)
        validate = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
        improved = False
        if val_loader is not None and validate:
            distributed.broadcast_buffers(unwrap(model))
            val = evaluate(model, val_loader, device=device, precision=precision)
            row.update(
                val_top1=_finite_or_none(float(val["top1"])),
                val_top5=_finite_or_none(float(val["top5"])),
                val_samples=int(val["samples"]),
            )
            logger.info(
                "validation: epoch %d, top_1: %.3f, top_k: %.3f, samples: %d, samples/s: %.1f",
                epoch,
                val["top1"],
                val["top5"],
                val["samples"],
                val["samples_per_s"],
            )
            if ema is not None:
                distributed.broadcast_buffers(ema.module)
                ev = evaluate(ema.module, val_loader, device=device, precision=precision)
                row.update(
                    ema_val_top1=_finite_or_none(float(ev["top1"])),
                    ema_val_top5=_finite_or_none(float(ev["top5"])),
                )
                logger.info(
                    "validation (ema): epoch %d, top_1: %.3f, top_k: %.3f, samples: %d",
                    epoch,
                    ev["top1"],
                    ev["top5"],
                    ev["samples"],
                )
            top1 = row["val_top1"]
            if top1 is not None and (best is None or top1 > best):
                best, improved = top1, True
        if env.is_main:
            with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        ckpt.best = best
        ckpt.save(epoch=epoch + 1, batch=0, loader=train_loader, improved=improved)
        reporter.scalars(
            (epoch + 1) * len(train_loader),
            {
                "epoch/train_loss": row["train_loss"],
                "epoch/samples_per_s": row["samples_per_s"],
                "val/top1": row["val_top1"],
                "val/top5": row["val_top5"],
                **(
                    {"val_ema/top1": row["ema_val_top1"], "val_ema/top5": row["ema_val_top5"]}
                    if ema is not None
                    else {}
                ),
            },
        )
        reporter.flush()
        last = row
        # A signal during validation stops the run here, last.pt being this epoch's end.
        if epoch + 1 < cfg.epochs and ckpt.stop.poll_now():
            raise Preempted(ckpt.path, epoch, len(train_loader), ckpt.stop.signal_name)
    return {**last, "best": best} if last else {}


def evaluate_checkpoint(
    data: str | Path,
    checkpoint: str | Path,
    *,
    split: str = "val",
    batch_size: int = 256,
    backend: str = "auto",
    workers: int | None = None,
    precision: str | None = None,
    device: str | None = None,
    use_ema: bool = False,
) -> dict[str, Any]:
    """Score a training checkpoint on a split (the ``eval`` command); torchrun-aware.

    Args:
        data: Shard directory.
        checkpoint: A ``last.pt`` / ``best.pt`` written by :func:`train`.
        split: Split to score.
        batch_size: Images per rank per batch.
        backend: Loader backend.
        workers: Loader workers; None: the loader's default.
        precision: Forward precision; None: the checkpoint's training precision if the device
            supports it, else the device's default.
        device: ``"cuda"`` or ``"cpu"``; default CUDA when available.
        use_ema: Score the checkpoint's EMA weights (``--ema-decay`` runs).

    Returns:
        ``{"top1", "top5", "samples", "samples_per_s", "split", "arch", "epoch", "ema"}``.

    Raises:
        recordkit_train.checkpoint.CheckpointError: The checkpoint is missing or unsafe.
        ConfigError: It does not match the data (class count) or lacks its configuration.
        recordkit.RecordkitError: The data is unusable.
    """
    env = distributed.setup(device)
    try:
        state = load_checkpoint(checkpoint, map_location="cpu")
        if "model" not in state or "config" not in state:
            raise ConfigError(f"{checkpoint} is not a recordkit-train checkpoint")
        if use_ema and not isinstance(state.get("ema"), dict):
            raise ConfigError(f"{checkpoint} has no EMA weights (train with --ema-decay)")
        cfg = TrainConfig.from_checkpoint(state, checkpoint, data=str(data), resume=None)
        ds = recordkit.open(str(data))
        if split not in ds:
            raise ConfigError(f"{data} has no split {split!r} (splits: {', '.join(ds)})")
        classes = list(state.get("classes") or [])
        if classes and len(classes) != len(ds.classes):
            raise ConfigError(
                f"{checkpoint} was trained on {len(classes)} classes, {data} has {len(ds.classes)}"
            )
        if classes and classes != list(ds.classes):
            logger.warning("class names differ between %s and %s", checkpoint, data)
        requested = precision or cfg.precision
        if precision is None and cfg.precision == "fp16" and env.device.type != "cuda":
            requested = None  # an fp16 CUDA run scored on the CPU: the CPU's default
        try:
            prec = resolve_precision(requested, env.device)
        except ValueError:
            prec = resolve_precision(None, env.device)
        model = build_model(
            cfg.arch,
            len(ds.classes),
            image_size=cfg.image_size,
            small_input=bool(cfg.small_input),
            channels_last=bool(cfg.channels_last),
        )
        model.load_state_dict(state["ema" if use_ema else "model"])
        model.to(env.device)
        loader = recordkit.make_loader(
            ds,
            split,
            batch_size=batch_size,
            image_size=cfg.image_size,
            backend=backend,
            device=env.device,
            dtype=loader_dtype(prec, env.device),
            channels_last=bool(cfg.channels_last),
            train=False,
            drop_last=False,
            shuffle=False,
            num_workers=workers,
            augment=cfg.augment(),
        )
        try:
            result: dict[str, Any] = dict(
                evaluate(model, loader, device=env.device, precision=prec)
            )
        finally:
            _close(loader)
        result.update(
            split=split, arch=cfg.arch, epoch=int(state.get("epoch", 0)), ema=bool(use_ema)
        )
        logger.info(
            "validation: split %s, top_1: %.3f, top_k: %.3f, samples: %d, samples/s: %.1f",
            split,
            result["top1"],
            result["top5"],
            result["samples"],
            result["samples_per_s"],
        )
        return result
    finally:
        distributed.cleanup(env)
