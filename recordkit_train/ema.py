"""Exponential moving average of a model's weights, with timm's ``ModelEmaV3`` semantics.

After optimizer step ``k`` (counted from 1 over the whole run) the average moves towards the
model by ``1 - decay_k``::

    ema = decay_k * ema + (1 - decay_k) * model          (lerp, in place)

with ``decay_1 = 0`` (the first update copies the model) and, for ``k >= 2``, ``decay_k =
decay``, or with ``warmup`` ``min(decay, 1 - k' ** -(2/3))`` where ``k' = 1 + (k - 1)`` (timm:
``1 - (1 + step / gamma) ** -power`` with ``gamma = 1``, ``power = 2/3``, ``step = k - 1``).
Floating-point buffers (BatchNorm running statistics) are averaged the same way and integer
ones (``num_batches_tracked``) copied (timm's default); ``copy_buffers=True`` copies every
buffer instead (timm's ``exclude_buffers``).

The average lives beside the model on the same device, in ``eval()`` mode, and is what
``--use-ema`` evaluates, predicts with and exports. Its ``state_dict`` is the averaged
model's own (loadable into a fresh model of the same architecture).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ModelEma"]


class ModelEma:
    """An averaged copy of ``model``; call :meth:`update` after every optimizer step.

    Args:
        model: The model being trained (unwrapped, not DDP).
        decay: The decay once warmed up, in ``[0, 1)``.
        warmup: timm's warm-up: ``decay_k = min(decay, 1 - k ** -(2/3))``.
        copy_buffers: Copy buffers instead of averaging the floating-point ones.
    """

    def __init__(
        self, model: nn.Module, decay: float, *, warmup: bool = False, copy_buffers: bool = False
    ) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.module = copy.deepcopy(model)
        self.module.eval()
        self.module.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.copy_buffers = copy_buffers

    def decay_at(self, step: int) -> float:
        """The decay of update ``step`` (1-based, counted over the run)."""
        k = step - 1
        if k <= 0:
            return 0.0
        if self.warmup:
            return max(min(1.0 - (1.0 + k) ** (-2.0 / 3.0), self.decay), 0.0)
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move the average towards ``model`` after optimizer step ``step`` (1-based)."""
        weight = 1.0 - self.decay_at(step)
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in model.parameters()]
        if ema_params:
            torch._foreach_lerp_(ema_params, params, weight)
        for ema_b, b in zip(self.module.buffers(), model.buffers(), strict=True):
            if ema_b.is_floating_point() and not self.copy_buffers:
                ema_b.lerp_(b, weight)
            else:
                ema_b.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged model's ``state_dict``."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from :meth:`state_dict` (e.g. a checkpoint's ``ema``)."""
        self.module.load_state_dict(state)
