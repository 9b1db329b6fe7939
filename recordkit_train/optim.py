"""Optimizer and learning-rate schedules for ResNet training.

Defaults follow NVIDIA's ResNet-50 v1.5 recipe (DeepLearningExamples): SGD with momentum
0.875, weight decay 3.0517578125e-05 (1/32768) on weights only, learning rate 0.256 per 256
images scaled linearly with the global batch (Goyal et al., "Accurate, Large Minibatch SGD").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "MAX_WARMUP_FRACTION",
    "SCHEDULES",
    "LRSchedule",
    "NO_DECAY_MODULES",
    "NO_DECAY_NAMES",
    "build_optimizer",
    "is_no_decay",
    "load_optimizer_state",
    "scaled_lr",
]

logger = logging.getLogger(__name__)

SCHEDULES: tuple[str, ...] = ("cosine", "step", "linear", "onecycle")
"""The schedule kinds :class:`LRSchedule` accepts."""

MAX_WARMUP_FRACTION = 0.2
"""The linear warm-up never takes more than this fraction of the run's steps."""

ONECYCLE_PCT_START = 0.3
ONECYCLE_DIV_FACTOR = 25.0
ONECYCLE_FINAL_DIV_FACTOR = 1e4

_FUSED_DEVICES = ("cuda", "cpu")

NO_DECAY_NAMES: frozenset[str] = frozenset(
    {"pos_embedding", "class_token", "relative_position_bias_table", "layer_scale", "logit_scale"}
)
"""Multi-dimensional parameters that get no weight decay either, by their last name component
(as timm's ``no_weight_decay``): ViT's position embedding and class token, Swin's and MaxViT's
relative-position bias tables, ConvNeXt's layer scale, Swin v2's attention logit scale."""

NO_DECAY_MODULES: frozenset[str] = frozenset({"cpb_mlp"})
"""Modules none of whose parameters get weight decay: Swin v2's continuous position-bias MLP
(timm leaves it out too)."""


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """Whether parameter ``name`` is left out of weight decay: normalisation scales and biases
    (every tensor of at most one dimension), :data:`NO_DECAY_NAMES` and the parameters of
    :data:`NO_DECAY_MODULES`."""
    parts = name.split(".")
    return (
        param.ndim <= 1
        or parts[-1] in NO_DECAY_NAMES
        or any(p in NO_DECAY_MODULES for p in parts[:-1])
    )


def scaled_lr(base_lr: float = 0.256, *, batch_size: int, world_size: int = 1) -> float:
    """The linear-scaling rule: ``base_lr * batch_size * world_size / 256``.

    Args:
        base_lr: Learning rate for a global batch of 256 images.
        batch_size: Images per rank per step.
        world_size: Number of ranks.

    Returns:
        The learning rate for the global batch ``batch_size * world_size``.

    Raises:
        ValueError: ``batch_size`` or ``world_size`` is below 1.
    """
    if batch_size < 1 or world_size < 1:
        raise ValueError(
            f"batch_size and world_size must be at least 1, got {batch_size} and {world_size}"
        )
    return base_lr * batch_size * world_size / 256


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    momentum: float = 0.875,
    weight_decay: float = 3.0517578125e-05,
    nesterov: bool = False,
    lr_scale: Callable[[str], float] | None = None,
    fused: bool | None = None,
) -> torch.optim.SGD:
    """SGD with weight decay on weights only.

    Parameters with at most one dimension (BatchNorm, LayerNorm and GroupNorm weights and
    biases, convolution and linear biases) and those named in :data:`NO_DECAY_NAMES` (ViT's
    position embedding and class token, ...) get no weight decay; the others (convolution and
    linear weights) get ``weight_decay``. Frozen parameters (``requires_grad=False``) are left out.

    With ``lr_scale`` the groups are further split by learning-rate multiplier; each group
    then carries it as ``"lr_scale"``, which :meth:`LRSchedule.apply` honours (fine-tuning
    with a slower backbone, :mod:`recordkit_train.pretrained`).

    The fused implementation is the default on CUDA and CPU: one kernel per step instead of a
    few per parameter group, and it takes the loss scaler's ``found_inf`` on the device, so an
    fp16 step needs no host sync (plain SGD makes :class:`torch.amp.GradScaler` read
    ``found_inf.item()`` every step). Fused and foreach SGD give bitwise the same weights.

    Args:
        model: The model (unwrapped or not; parameters are what counts).
        lr: Initial learning rate (a schedule usually overwrites it every step).
        momentum: SGD momentum.
        weight_decay: L2 penalty for the decayed group.
        nesterov: Use Nesterov momentum.
        lr_scale: ``parameter name -> learning-rate multiplier``; None: 1 for all.
        fused: Use the fused kernel; None: when every parameter is a floating-point tensor
            on CUDA or the CPU.

    Returns:
        The optimizer, with the decayed group first and the undecayed one second (a group
        with no parameters is left out); with ``lr_scale``, those two per multiplier, in
        order of first appearance.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    scales: dict[int, float] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if is_no_decay(name, param) else decay).append(param)
        if lr_scale is not None:
            scales[id(param)] = float(lr_scale(name))
    groups: list[dict[str, Any]] = []
    for scale in dict.fromkeys(scales.values()) if lr_scale is not None else [None]:
        for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
            chosen = [p for p in params if scale is None or scales[id(p)] == scale]
            if chosen:
                group: dict[str, Any] = {"params": chosen, "weight_decay": wd}
                if scale is not None:
                    group["lr_scale"] = scale
                groups.append(group)
    params = decay + no_decay
    if fused is None:
        fused = bool(params) and all(
            p.device.type in _FUSED_DEVICES and p.is_floating_point() for p in params
        )
    logger.debug(
        "SGD%s: %d decayed and %d undecayed parameter tensors",
        " (fused)" if fused else "",
        len(decay),
        len(no_decay),
    )
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, fused=fused or None)


_IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable", "differentiable")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, keeping this optimizer's implementation flags.

    ``load_state_dict`` copies every saved group option, ``fused``/``foreach`` included, so a
    checkpoint written by a plain SGD would turn a fused optimizer back into a foreach one
    whose ``step`` then rejects the loss scaler's ``found_inf``. Hyper-parameters (momentum,
    weight decay, ``lr_scale``, the learning rate) come from the checkpoint as before.

    Args:
        optimizer: The optimizer built for this run.
        state: A saved ``optimizer.state_dict()``.

    Raises:
        ValueError: The saved parameter groups do not match (other groups or sizes).
    """
    kept = [{k: g[k] for k in _IMPLEMENTATION_KEYS if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, flags in zip(optimizer.param_groups, kept, strict=True):
        group.update(flags)


@dataclass
class LRSchedule:
    """Learning rate per iteration: cosine, step, linear or one-cycle, updated every step.

    Positions are ``(epoch, iteration)`` with ``iteration`` in ``[0, iters_per_epoch)``;
    ``t = epoch * iters_per_epoch + iteration`` counts global steps, ``T = epochs *
    iters_per_epoch`` is the run's length and ``W`` the number of warm-up steps,
    ``round(warmup_epochs * iters_per_epoch)`` capped at ``floor(max_warmup_fraction * T)``
    (:data:`MAX_WARMUP_FRACTION`, 20 %), so that a short run still reaches its peak and decays.

    - Warm-up (``t < W``, all kinds but ``onecycle``): ``base_lr * (t + 1) / W`` -- linear from
      ``base_lr / W`` (near 0) to exactly ``base_lr`` at the last warm-up step, as in NVIDIA's
      ResNet-50 recipe (here per iteration rather than per epoch).
    - ``cosine``: ``final_lr + (base_lr - final_lr) * (1 + cos(pi * p)) / 2`` with
      ``p = (t - W) / (T - W)``: ``base_lr`` right after the warm-up, ``final_lr`` at the end
      of training (``lr_at(epochs, 0)``) and beyond.
    - ``linear``: ``final_lr + (base_lr - final_lr) * (1 - p)``, the same ``p``.
    - ``step``: ``base_lr * step_factor ** k``, ``k`` the number of ``step_epochs`` at or
      before ``epoch`` -- MXNet's ``MultiFactorScheduler`` as used by its ImageNet examples
      (``--lr-step-epochs 30,60``, factor 0.1).
    - ``onecycle``: ``torch.optim.lr_scheduler.OneCycleLR`` with its defaults (cosine
      annealing, ``pct_start`` 0.3, ``div_factor`` 25, ``final_div_factor`` 1e4): from
      ``base_lr / 25`` up to ``base_lr`` over the first 30 % of the steps, then down to
      ``base_lr / 25 / 1e4`` at the last step. It has its own warm-up: ``warmup_epochs`` must
      be 0.

    The schedule holds only its configuration; :meth:`state_dict` round-trips it.

    Attributes:
        kind: One of :data:`SCHEDULES`.
        base_lr: Peak learning rate (after the warm-up).
        epochs: Training length in epochs.
        iters_per_epoch: Optimizer steps per epoch.
        warmup_epochs: Length of the linear warm-up in epochs (may be fractional; 0 = none).
        step_epochs: ``step`` only: epochs at whose start the rate is multiplied by
            ``step_factor``.
        step_factor: ``step`` only: the multiplier.
        final_lr: ``cosine`` and ``linear``: the rate at the end of training.
        max_warmup_fraction: The warm-up's cap, as a fraction of the run's steps.
    """

    kind: str
    base_lr: float
    epochs: int
    iters_per_epoch: int
    warmup_epochs: float = 0.0
    step_epochs: Sequence[int] = field(default=(30, 60))
    step_factor: float = 0.1
    final_lr: float = 0.0
    max_warmup_fraction: float = MAX_WARMUP_FRACTION

    def __post_init__(self) -> None:
        """Validate and normalise the configuration.

        Raises:
            ValueError: An unknown kind or an impossible value.
        """
        if self.kind not in SCHEDULES:
            raise ValueError(
                f"unknown LR schedule {self.kind!r}; choose one of: {', '.join(SCHEDULES)}"
            )
        if self.epochs < 1 or self.iters_per_epoch < 1:
            raise ValueError(
                f"epochs and iters_per_epoch must be at least 1, got {self.epochs} and "
                f"{self.iters_per_epoch}"
            )
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(
                f"warmup_epochs must be between 0 and epochs ({self.epochs}), "
                f"got {self.warmup_epochs}"
            )
        if self.kind == "onecycle" and self.warmup_epochs:
            raise ValueError(
                "onecycle has its own warm-up (30 % of the run): warmup_epochs must be 0"
            )
        if not 0 <= self.max_warmup_fraction <= 1:
            raise ValueError(
                f"max_warmup_fraction must be in [0, 1], got {self.max_warmup_fraction}"
            )
        if self.base_lr < 0 or self.final_lr < 0:
            raise ValueError("learning rates must not be negative")
        self.step_epochs = tuple(sorted(int(e) for e in self.step_epochs))

    @property
    def requested_warmup_iters(self) -> int:
        """Warm-up steps as asked (``warmup_epochs * iters_per_epoch``), before the cap."""
        return round(self.warmup_epochs * self.iters_per_epoch)

    @property
    def warmup_iters(self) -> int:
        """Number of warm-up steps (at most ``max_warmup_fraction`` of the run)."""
        cap = math.floor(self.max_warmup_fraction * self.total_iters + 1e-9)
        return min(self.requested_warmup_iters, cap)

    @property
    def total_iters(self) -> int:
        """Number of steps in the whole training."""
        return self.epochs * self.iters_per_epoch

    def _onecycle(self, t: int) -> float:
        """``OneCycleLR``'s rate at step ``t`` (two phases, cosine annealing)."""
        initial = self.base_lr / ONECYCLE_DIV_FACTOR
        lowest = initial / ONECYCLE_FINAL_DIV_FACTOR
        peak_step = float(ONECYCLE_PCT_START * self.total_iters) - 1
        last_step = self.total_iters - 1
        t = min(t, last_step)
        if t <= peak_step:
            start, end, begin, finish = initial, self.base_lr, 0.0, peak_step
        else:
            start, end, begin, finish = self.base_lr, lowest, peak_step, float(last_step)
        pct = (t - begin) / (finish - begin) if finish > begin else 1.0
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    def lr_at(self, epoch: int, iteration: int = 0) -> float:
        """The learning rate for step ``iteration`` of ``epoch`` (both 0-based).

        Args:
            epoch: The epoch.
            iteration: The step within the epoch.

        Returns:
            The learning rate.
        """
        t = epoch * self.iters_per_epoch + iteration
        if self.kind == "onecycle":
            return self._onecycle(t)
        warmup = self.warmup_iters
        if t < warmup:
            return self.base_lr * (t + 1) / warmup
        if self.kind in ("cosine", "linear"):
            span = self.total_iters - warmup
            progress = min(1.0, (t - warmup) / span) if span > 0 else 1.0
            if self.kind == "linear":
                return self.final_lr + (self.base_lr - self.final_lr) * (1.0 - progress)
            return self.final_lr + (self.base_lr - self.final_lr) * 0.5 * (
                1.0 + math.cos(math.pi * progress)
            )
        decays = sum(1 for e in self.step_epochs if e <= epoch)
        return self.base_lr * self.step_factor**decays

    def describe(self) -> str:
        """One line with the resolved schedule: peak, warm-up, total steps, milestones."""
        total = self.total_iters
        text = f"lr schedule: {self.kind}, peak {self.base_lr:.4g}, {total} steps"
        if self.kind == "onecycle":
            peak = max(1, round(ONECYCLE_PCT_START * total))
            return (
                f"{text}; from {self.base_lr / ONECYCLE_DIV_FACTOR:.4g} up to the peak at step "
                f"{peak}, down to {self._onecycle(total - 1):.4g} at step {total}"
            )
        warmup = self.warmup_iters
        text += f", {warmup} warm-up steps"
        if warmup < self.requested_warmup_iters:
            text += (
                f" (capped at {self.max_warmup_fraction:.0%} of the run; "
                f"{self.warmup_epochs:g} warm-up epochs would be {self.requested_warmup_iters})"
            )
        if self.kind == "step":
            inside = [e for e in self.step_epochs if 0 < e < self.epochs]
            marks = ", ".join(f"epoch {e} (step {e * self.iters_per_epoch})" for e in inside)
            text += f"; x{self.step_factor:g} at {marks or 'no epoch inside the run'}"
        else:
            text += f"; down to {self.final_lr:.4g} at step {total}"
        return text

    def apply(self, optimizer: torch.optim.Optimizer, epoch: int, iteration: int = 0) -> float:
        """Set every parameter group's ``lr`` to :meth:`lr_at` (times its ``lr_scale``, if any).

        Args:
            optimizer: The optimizer to update.
            epoch: The epoch.
            iteration: The step within the epoch.

        Returns:
            The learning rate set.
        """
        lr = self.lr_at(epoch, iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def state_dict(self) -> dict[str, Any]:
        """The configuration as plain values (loadable with ``weights_only=True``)."""
        state = asdict(self)
        state["step_epochs"] = list(self.step_epochs)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the configuration with one from :meth:`state_dict`.

        A state saved before the warm-up cap existed (no ``max_warmup_fraction``) keeps its
        uncapped warm-up, so a resumed run follows the schedule it started with.

        Raises:
            ValueError: The state is invalid.
        """
        restored = LRSchedule(**{"max_warmup_fraction": 1.0, **state})
        for key, value in asdict(restored).items():
            setattr(self, key, value)
