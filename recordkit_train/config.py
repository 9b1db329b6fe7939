"""The training recipe as one frozen dataclass, resolved against the device and world size.

Defaults follow NVIDIA's ResNet-50 v1.5 recipe (DeepLearningExamples): 90 epochs, 256 images
per rank, SGD momentum 0.875, weight decay 1/32768, learning rate 0.256 per 256 images scaled
with the global batch, label smoothing 0.1, cosine decay after a 5-epoch warm-up. ``step``
gives MXNet's ImageNet schedule (x0.1 at epochs 30 and 60, no warm-up by default).

The engine writes :meth:`TrainConfig.to_dict` of the resolved configuration as ``config.json``
in the output directory, so a run can be reproduced.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from recordkit.errors import RecordkitError
from recordkit.loaders.augment import AUTO_AUGMENTS, MODES, Augment
from recordkit_train.models import (
    check_arch,
    check_image_size,
    check_small_input,
    default_small_input,
)
from recordkit_train.optim import SCHEDULES, scaled_lr
from recordkit_train.precision import PRECISIONS, resolve_precision

__all__ = ["BASE_LR", "MAX_IMAGE_SIZE", "ConfigError", "TrainConfig", "cpu_threads"]

BASE_LR = 0.256
"""Learning rate for a global batch of 256 images (scaled linearly with the batch)."""

MAX_IMAGE_SIZE = 16384
"""The largest ``image_size`` a checkpoint may carry (a 16384-pixel crop is 800 MB)."""

_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "tuple[int, ...]": (list, tuple),
    "tuple[float, float]": (list, tuple),
}


def _fits(value: Any, annotation: str) -> bool:
    """Whether a checkpoint's config value has the type of the field annotated ``annotation``
    (``"int | None"`` etc., as ``from __future__ import annotations`` leaves them)."""
    for part in str(annotation).split(" | "):
        if part == "None" and value is None:
            return True
        kinds = _TYPES.get(part)
        if kinds is None:
            return True  # a type this check does not know: from_dict / __post_init__ judge
        if isinstance(value, bool) and bool not in kinds:
            continue
        if isinstance(value, kinds):
            if part == "tuple[int, ...]":
                return all(type(v) is int for v in value)
            if part == "tuple[float, float]":
                return len(value) == 2 and all(type(v) in (int, float) and v == v for v in value)
            return not (isinstance(value, float) and value != value)  # NaN
    return False


def cpu_threads(
    workers: int | None, threads: int | None, cpus: int | None = None
) -> tuple[int, int]:
    """Loader workers and model threads for training on a CPU, so that together they use the
    cores once: ``workers`` = a quarter of the cores (at least 1), ``threads`` = the rest.

    On a CPU the loader's processes and the model's OpenMP threads share the same cores; with
    PyTorch's default (one thread per core) plus the loader's default (one worker per core)
    every core is claimed twice, and an OpenMP barrier that waits for a descheduled thread
    stalls the whole step (docs/BENCHMARKS.md: 2 threads + 1 worker ran 5x slower than
    1 + 1 on a busy 2-core machine). Tiny images need little loading: a quarter is plenty.

    Args:
        workers: Given loader workers, or None.
        threads: Given model threads, or None.
        cpus: Cores for this rank; default: the CPUs this process may use / ranks on the node.

    Returns:
        ``(workers, threads)``.
    """
    from recordkit.loaders.factory import local_world_size, usable_cpus

    if cpus is None:
        cpus = max(1, usable_cpus() // local_world_size())
    if workers is None:
        workers = max(1, cpus // 4)
    if threads is None:
        threads = max(1, cpus - workers)
    return workers, threads


class ConfigError(RecordkitError):
    """A training configuration that cannot run (bad value, too few records for one batch)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on.

    ``None`` values are resolved by :meth:`resolved` (``precision``, ``lr``,
    ``warmup_epochs``, ``channels_last``, ``small_input``); the resolved configuration is what
    gets saved.

    Attributes:
        data: Shard directory (may be None with ``synthetic``).
        out: Output directory for ``config.json``, ``metrics.jsonl``, ``last.pt``, ``best.pt``.
        arch: Model architecture: any torchvision classification model
            (:data:`recordkit_train.models.ARCHS`).
        epochs: Training length.
        batch_size: Images per rank per step.
        image_size: Training and validation crop side in pixels.
        precision: ``fp16``, ``bf16``, ``fp32``; None: the device's default.
        lr: Peak learning rate; None: ``base_lr * batch_size * world_size / 256``.
        base_lr: Learning rate per 256 images, used when ``lr`` is None.
        momentum: SGD momentum.
        weight_decay: L2 penalty on convolution and linear weights.
        label_smoothing: Cross-entropy label smoothing.
        lr_schedule: ``cosine``, ``step``, ``linear`` or ``onecycle``
            (:class:`recordkit_train.optim.LRSchedule`).
        warmup_epochs: Linear warm-up length, capped at 20 % of the run's steps; None: 5 for
            cosine and linear, 0 for step and onecycle (which has its own warm-up).
        lr_step_epochs: ``step``: epochs at which the rate is multiplied by ``lr_factor``.
        lr_factor: ``step``: the multiplier.
        zero_init_residual: Zero the last BatchNorm scale of each residual block.
        small_input: The CIFAR-style stride-1 stem (ResNet and RegNet families); None: on at
            ``image_size`` <= 64 for those families, off otherwise. Checkpoints written before
            this option existed read as False.
        channels_last: NHWC memory format; None: on for CUDA, off otherwise.
        workers: Loader workers per rank; None: the loader's default on CUDA, and on a CPU
            :func:`cpu_threads`'s share (the workers and the model share the cores there).
        threads: Intra-op threads of the model on a CPU (``torch.set_num_threads``); None:
            the cores left after the loader workers (:func:`cpu_threads`). Unused on CUDA.
        cache_dir: Shard cache for remote ``data`` (``s3://``, ``gs://``, ``https://``); None:
            ``RECORDKIT_CACHE``, else ``~/.cache/recordkit`` (``docs/REMOTE.md``).
        cache_limit: Most bytes the cache holds (``50GB``); None: ``RECORDKIT_CACHE_LIMIT``,
            else 20 GB.
        remote_read: ``auto`` (training streams shards through the cache, validation reads
            records with range requests), ``cache`` or ``direct``.
        backend: Loader backend (``auto``, ``dali``, ``torch``).
        gpu_decode: Torch backend on CUDA: decode JPEGs on the GPU (nvJPEG through
            torchvision) instead of in the CPU workers; the choice for a GPU machine without
            DALI and with few CPU cores per GPU.
        seed: Base seed for initialisation, order and augmentation.
        print_freq: Iterations between training log lines (and metric syncs).
        eval_every: Validate every N epochs (and after the last).
        checkpoint_every: Also write ``last.pt`` every this many training steps, mid-epoch
            (None: at epoch ends only, and when stopped by SIGTERM / SIGUSR1).
        resume: Output directory or checkpoint file to resume from.
        pretrained: Weights to fine-tune from (checkpoint or state dict; see
            :mod:`recordkit_train.pretrained`); not read when resuming.
        freeze_backbone: Train only the classifier (``fc``).
        backbone_lr_scale: Learning-rate multiplier for everything but the classifier.
        iters: Steps for ``synthetic`` and ``test_io``.
        synthetic: Train on random tensors made on the device (no data loading).
        test_io: Only run the loader and report its throughput.
        deterministic: ``torch.use_deterministic_algorithms(True)`` and no cuDNN autotuning.
        progress: A progress bar per epoch on rank 0; None: when stderr is a terminal.
        tensorboard: Also write TensorBoard scalars to ``<out>/tensorboard``.
        dist_timeout: Seconds a collective waits for the other ranks before this rank gives
            up (a hung rank); None: PyTorch's default (10 min NCCL, 30 min gloo).
        aug: Training crop mode: ``rrc``, ``pad-crop`` or ``none``
            (:class:`recordkit.loaders.Augment` ``mode``).
        rrc_scale: ``rrc``: crop area range, fractions of the image area.
        rrc_ratio: ``rrc``: crop aspect-ratio range (width / height).
        pad: ``pad-crop``: zero padding on each side, pixels.
        hflip: Mirror probability for training crops (``none`` never mirrors).
        val_resize_ratio: Validation resizes the shorter side to ``image_size /
            val_resize_ratio`` before the centre crop; None: 0.875 with ``rrc``, 1.0 with
            ``pad-crop`` and ``none`` (train and validation then see the same scale).
        auto_augment: ``autoaugment``, ``randaugment``, ``trivialaugment`` or None.
        ra_n: RandAugment operations per image.
        ra_m: RandAugment magnitude (0-30).
        mixup: Mixup beta-distribution alpha; 0 disables (:mod:`recordkit_train.mixup`).
        cutmix: CutMix beta-distribution alpha; 0 disables.
        mixup_prob: Probability that a batch is mixed at all.
        mixup_switch_prob: With both mixup and cutmix on, probability of CutMix for a batch.
        ema_decay: Exponential moving average of the weights with this decay, evaluated beside
            the model; 0 disables (:mod:`recordkit_train.ema`).
        ema_warmup: timm's EMA warm-up: decay ``min(ema_decay, 1 - k ** (-2/3))`` at update k.
    """

    data: str | None = None
    out: str = "runs/train"
    arch: str = "resnet50"
    epochs: int = 90
    batch_size: int = 256
    image_size: int = 224
    precision: str | None = None
    lr: float | None = None
    base_lr: float = BASE_LR
    momentum: float = 0.875
    weight_decay: float = 3.0517578125e-05
    label_smoothing: float = 0.1
    lr_schedule: str = "cosine"
    warmup_epochs: float | None = None
    lr_step_epochs: tuple[int, ...] = field(default=(30, 60))
    lr_factor: float = 0.1
    zero_init_residual: bool = False
    small_input: bool | None = None
    channels_last: bool | None = None
    workers: int | None = None
    cache_dir: str | None = None
    cache_limit: str | None = None
    remote_read: str = "auto"
    threads: int | None = None
    backend: str = "auto"
    gpu_decode: bool = False
    seed: int = 0
    print_freq: int = 10
    eval_every: int = 1
    checkpoint_every: int | None = None
    resume: str | None = None
    pretrained: str | None = None
    freeze_backbone: bool = False
    backbone_lr_scale: float = 1.0
    iters: int = 100
    synthetic: bool = False
    test_io: bool = False
    deterministic: bool = False
    progress: bool | None = None
    tensorboard: bool = False
    dist_timeout: float | None = None
    aug: str = "rrc"
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    pad: int = 4
    hflip: float = 0.5
    val_resize_ratio: float | None = None
    auto_augment: str | None = None
    ra_n: int = 2
    ra_m: int = 9
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    ema_decay: float = 0.0
    ema_warmup: bool = False

    def __post_init__(self) -> None:
        """Check the values.

        Raises:
            ConfigError: A value is out of range or unknown.
        """
        try:
            check_arch(self.arch)
            if self.small_input:
                check_small_input(self.arch)
            small = self.small_input
            if small is None:
                small = default_small_input(self.arch, self.image_size)
            if not small and self.image_size >= 1:
                check_image_size(self.arch, self.image_size)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.lr_schedule not in SCHEDULES:
            raise ConfigError(
                f"unknown lr_schedule {self.lr_schedule!r}; choose one of: {', '.join(SCHEDULES)}"
            )
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError(
                f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}"
            )
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")
        for name in ("epochs", "batch_size", "image_size", "print_freq", "eval_every", "iters"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.data is None and not self.synthetic:
            raise ConfigError("data is required (or use synthetic)")
        if self.remote_read not in ("auto", "cache", "direct"):
            raise ConfigError(
                f"remote_read must be auto, cache or direct, got {self.remote_read!r}"
            )
        if self.cache_limit is not None:
            from recordkit.sizes import parse_size

            parse_size(self.cache_limit, ConfigError)
        if self.warmup_epochs is not None and not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs}")
        if self.lr_schedule == "onecycle" and self.warmup_epochs:
            raise ConfigError("onecycle has its own warm-up (30 % of the run); drop warmup_epochs")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every must be at least 1, got {self.checkpoint_every}")
        if self.dist_timeout is not None and not self.dist_timeout > 0:
            raise ConfigError(f"dist_timeout must be > 0 seconds, got {self.dist_timeout}")
        if not self.backbone_lr_scale > 0:
            raise ConfigError(f"backbone_lr_scale must be > 0, got {self.backbone_lr_scale}")
        if self.freeze_backbone and self.backbone_lr_scale != 1.0:
            raise ConfigError("freeze_backbone and backbone_lr_scale exclude each other")
        object.__setattr__(self, "lr_step_epochs", tuple(int(e) for e in self.lr_step_epochs))
        for name in ("rrc_scale", "rrc_ratio"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.aug not in MODES:
            raise ConfigError(f"unknown aug {self.aug!r}; choose one of: {', '.join(MODES)}")
        if self.auto_augment is not None and self.auto_augment not in AUTO_AUGMENTS:
            raise ConfigError(
                f"unknown auto_augment {self.auto_augment!r}; "
                f"choose one of: {', '.join(AUTO_AUGMENTS)}"
            )
        for name in ("mixup", "cutmix"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} (a beta alpha) must be >= 0, got {getattr(self, name)}")
        for name in ("mixup_prob", "mixup_switch_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} is a probability, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        try:
            self.augment()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def augment(self) -> Augment:
        """The loaders' :class:`~recordkit.loaders.Augment` for this configuration (training
        crop mode, ranges, flip, auto-augment and the validation resize)."""
        ratio = self.val_resize_ratio
        if ratio is None:
            ratio = 0.875 if self.aug == "rrc" else 1.0
        return Augment(
            scale=self.rrc_scale,
            ratio=self.rrc_ratio,
            flip=self.hflip,
            val_resize_ratio=ratio,
            mode=self.aug,
            pad=self.pad,
            auto_augment=self.auto_augment,
            ra_n=self.ra_n,
            ra_m=self.ra_m,
        )

    @property
    def mixes(self) -> bool:
        """Whether training batches are mixed (mixup or cutmix on, with some probability)."""
        return (self.mixup > 0 or self.cutmix > 0) and self.mixup_prob > 0

    def resolved(self, device: torch.device | str, world_size: int = 1) -> TrainConfig:
        """Fill in the device- and world-dependent defaults.

        Args:
            device: Where training runs.
            world_size: Number of ranks.

        Returns:
            A copy with ``precision``, ``lr``, ``warmup_epochs``, ``channels_last`` and
            ``small_input`` set, and on a CPU ``workers`` and ``threads`` (:func:`cpu_threads`).

        Raises:
            ConfigError: The precision is not available on ``device``.
        """
        dev = torch.device(device)
        try:
            precision = resolve_precision(self.precision, dev)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        lr = self.lr
        if lr is None:
            lr = scaled_lr(self.base_lr, batch_size=self.batch_size, world_size=world_size)
        warmup = self.warmup_epochs
        if warmup is None:
            warmup = 0.0
            if self.lr_schedule in ("cosine", "linear"):
                warmup = min(5.0, float(self.epochs))
        channels_last = self.channels_last
        if channels_last is None:
            channels_last = dev.type == "cuda"
        small_input = self.small_input
        if small_input is None:
            small_input = default_small_input(self.arch, self.image_size)
        workers, threads = self.workers, self.threads
        if dev.type == "cpu":
            workers, threads = cpu_threads(workers, threads)
        return dataclasses.replace(
            self,
            workers=workers,
            threads=threads,
            small_input=small_input,
            precision=precision,
            lr=lr,
            warmup_epochs=warmup,
            channels_last=channels_last,
        )

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-able values (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["lr_step_epochs"] = list(self.lr_step_epochs)
        out["rrc_scale"] = list(self.rrc_scale)
        out["rrc_ratio"] = list(self.rrc_ratio)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Rebuild a configuration from :meth:`to_dict` (unknown keys are ignored).

        Args:
            values: The dict, e.g. from ``config.json`` or a checkpoint.

        Returns:
            The configuration.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in values.items() if k in names}
        for name in ("lr_step_epochs", "rrc_scale", "rrc_ratio"):
            if name in kept:
                kept[name] = tuple(kept[name])
        return cls(**kept)

    @classmethod
    def from_checkpoint(
        cls, state: dict[str, Any], source: str | Path, **overrides: Any
    ) -> TrainConfig:
        """Rebuild the configuration a checkpoint was trained with, as untrusted input.

        Args:
            state: The loaded checkpoint (see :func:`recordkit_train.checkpoint.load_checkpoint`).
            source: The checkpoint file, for messages.
            **overrides: Values that replace the checkpoint's (``data``, ``resume``).

        Returns:
            The configuration.

        Raises:
            ConfigError: ``config`` is missing or not a dict of plain values, a value has the
                wrong type or is out of range (an ``image_size`` above
                :data:`MAX_IMAGE_SIZE` included).
        """
        values = state.get("config")
        if not isinstance(values, dict):
            raise ConfigError(
                f"{source} is not a recordkit-train checkpoint "
                f"(its config is a {type(values).__name__}, not a dict)"
            )
        names = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in values.items():
            field_ = names.get(key) if isinstance(key, str) else None
            if field_ is not None and key not in overrides and not _fits(value, field_.type):
                shown = repr(value)
                shown = shown if len(shown) <= 40 else shown[:37] + "..."
                raise ConfigError(f"{source}: config {key} = {shown} is not a {field_.type}")
        # Written before the option existed (or unresolved): the ImageNet stem it was built with.
        legacy = {} if values.get("small_input") is not None else {"small_input": False}
        try:
            cfg = cls.from_dict({**values, **legacy, **overrides})
        except (TypeError, ValueError, OverflowError) as exc:
            first = " ".join(str(exc).split())[:200]
            raise ConfigError(f"{source} has an unusable config: {first}") from None
        if cfg.image_size > MAX_IMAGE_SIZE:
            raise ConfigError(
                f"{source}: config image_size {cfg.image_size} is above {MAX_IMAGE_SIZE}"
            )
        return cfg

    def write_json(self, directory: str | Path) -> Path:
        """Write ``config.json`` into ``directory`` (created if missing).

        Args:
            directory: The output directory.

        Returns:
            The file written.
        """
        path = Path(directory) / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path
