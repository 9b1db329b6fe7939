"""Mixup and CutMix on the device, after the loader (the same for the DALI and torch backends).

timm's ``Mixup`` in its default ``"batch"`` mode, as NVIDIA's ResNet-50 recipe uses it:

- one ``lam`` per batch: with probability ``prob`` the batch is mixed, else ``lam = 1``; when
  both are on, CutMix with probability ``switch_prob``, else mixup; ``lam ~ Beta(alpha,
  alpha)`` of the chosen one;
- each image is mixed with the batch flipped (image ``i`` with image ``B - 1 - i``): mixup
  ``x = lam * x + (1 - lam) * x.flip(0)``; CutMix pastes a box of the flipped batch (centre
  uniform in the image, sides ``sqrt(1 - lam)`` of the image's, clipped at the border) and
  sets ``lam = 1 - box area / image area`` (the share the image really keeps);
- soft targets ``lam * y + (1 - lam) * y.flip(0)`` of label-smoothed one-hot rows ``y``
  (``1 - smoothing + smoothing / C`` on the label, ``smoothing / C`` elsewhere), so label
  smoothing is folded into the targets and the loss is :func:`soft_target_cross_entropy`.

The draws are made on the host with a NumPy generator seeded from ``(seed, rank, epoch,
step)`` (no device sync, and a resumed run mixes its batches as the original run did); the
pixels are mixed where the batch lives.

Training accuracy with mixed batches is counted against each image's *dominant* label (the
larger share: ``argmax`` of its soft target), see :func:`dominant_labels`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "MixParams",
    "Mixer",
    "cutmix_box",
    "dominant_labels",
    "mix_targets",
    "one_hot_smoothed",
    "soft_target_cross_entropy",
]


@dataclass(frozen=True)
class MixParams:
    """What one batch gets: ``lam`` (the share each image keeps) and, for CutMix, the box
    ``(top, bottom, left, right)`` (rows ``top:bottom``, columns ``left:right``) pasted from
    the flipped batch; ``box`` None means mixup (or nothing when ``lam == 1``)."""

    lam: float
    box: tuple[int, int, int, int] | None = None


def cutmix_box(
    height: int, width: int, lam: float, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """timm's ``rand_bbox``: sides ``int(H * sqrt(1 - lam))`` / ``int(W * sqrt(1 - lam))``,
    centre uniform over the image, clipped to it. Returns ``(top, bottom, left, right)``."""
    ratio = float(np.sqrt(1.0 - lam))
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(rng.integers(0, height))
    cx = int(rng.integers(0, width))
    top = int(np.clip(cy - cut_h // 2, 0, height))
    bottom = int(np.clip(cy + cut_h // 2, 0, height))
    left = int(np.clip(cx - cut_w // 2, 0, width))
    right = int(np.clip(cx + cut_w // 2, 0, width))
    return top, bottom, left, right


def one_hot_smoothed(
    labels: torch.Tensor, num_classes: int, smoothing: float = 0.0
) -> torch.Tensor:
    """float32 ``(B, C)`` rows: ``1 - smoothing + smoothing / C`` on the label, ``smoothing /
    C`` elsewhere (what ``CrossEntropyLoss(label_smoothing=…)`` targets)."""
    off = smoothing / num_classes
    out = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return out.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


def mix_targets(
    labels: torch.Tensor, num_classes: int, lam: float, smoothing: float = 0.0
) -> torch.Tensor:
    """``lam * y + (1 - lam) * y.flip(0)`` with ``y`` = :func:`one_hot_smoothed` rows."""
    y = one_hot_smoothed(labels, num_classes, smoothing)
    return y.mul(lam).add_(y.flip(0), alpha=1.0 - lam)


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum(targets * log_softmax(logits))`` (float32)."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def dominant_labels(targets: torch.Tensor) -> torch.Tensor:
    """Each row's largest target: the label with the larger share of a mixed image (ties: the
    lower class index). What training top-1 is counted against when batches are mixed."""
    return targets.argmax(dim=1)


class Mixer:
    """Mixes training batches (timm ``Mixup`` semantics, batch mode); see the module docstring.

    Args:
        mixup_alpha: Beta alpha for mixup; 0 turns mixup off.
        cutmix_alpha: Beta alpha for CutMix; 0 turns CutMix off.
        prob: Probability that a batch is mixed.
        switch_prob: With both on, probability of CutMix.
        label_smoothing: Folded into the soft targets.
        num_classes: Width of the targets.
        seed: Base seed; with ``rank``, the epoch and the step it fixes each batch's draws.
        rank: This process's rank (ranks mix differently).
    """

    def __init__(
        self,
        *,
        mixup_alpha: float,
        cutmix_alpha: float,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.0,
        num_classes: int,
        seed: int = 0,
        rank: int = 0,
    ) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError("mixup_alpha and cutmix_alpha must be >= 0")
        if mixup_alpha == 0 and cutmix_alpha == 0:
            raise ValueError("at least one of mixup_alpha and cutmix_alpha must be > 0")
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.label_smoothing = label_smoothing
        self.num_classes = num_classes
        self.seed = seed
        self.rank = rank

    def params(self, height: int, width: int, epoch: int, step: int) -> MixParams:
        """The draws for batch ``step`` of ``epoch`` (host only, deterministic)."""
        rng = np.random.default_rng([self.seed % 2**32, self.rank, epoch, step, 0x4D49])
        if rng.random() >= self.prob:
            return MixParams(1.0)
        use_cutmix = self.cutmix_alpha > 0 and (
            self.mixup_alpha == 0 or rng.random() < self.switch_prob
        )
        if not use_cutmix:
            return MixParams(float(rng.beta(self.mixup_alpha, self.mixup_alpha)))
        lam = float(rng.beta(self.cutmix_alpha, self.cutmix_alpha))
        top, bottom, left, right = cutmix_box(height, width, lam, rng)
        kept = 1.0 - (bottom - top) * (right - left) / float(height * width)
        return MixParams(kept, (top, bottom, left, right))

    def apply(
        self, images: torch.Tensor, labels: torch.Tensor, params: MixParams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix ``images`` in place as ``params`` says; return them and the soft targets."""
        lam = params.lam
        if params.box is not None:
            top, bottom, left, right = params.box
            if bottom > top and right > left:
                images[:, :, top:bottom, left:right] = images.flip(0)[:, :, top:bottom, left:right]
        elif lam != 1.0:
            flipped = images.flip(0).mul_(1.0 - lam)
            images.mul_(lam).add_(flipped)
        return images, mix_targets(labels, self.num_classes, lam, self.label_smoothing)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, *, epoch: int, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix batch ``step`` of ``epoch``: ``(mixed images, soft targets (B, C) float32)``."""
        params = self.params(int(images.shape[-2]), int(images.shape[-1]), epoch, step)
        return self.apply(images, labels, params)
