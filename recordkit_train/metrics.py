"""Accuracy and loss accumulated on the device, summed across ranks, read once.

Meters keep their sums as tensors on the device of the batches they see, so updating them
never waits for the GPU; only :meth:`AccuracyMeter.compute` / :meth:`LossMeter.compute` copy
to the host. Call ``all_reduce()`` on every rank before ``compute()`` to get global figures.

Labels: single-label targets are ``(B,)``. Multi-label targets ``(B, L)`` padded with -1
(``make_loader(multi_label=True)``) are scored on their first label, ``targets[:, 0]`` --
the same single-label semantics as the default loader.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["AccuracyMeter", "LossMeter", "read_meters", "topk_correct"]

logger = logging.getLogger(__name__)


def _first_labels(targets: torch.Tensor) -> torch.Tensor:
    if targets.ndim == 2:
        return targets[:, 0]
    if targets.ndim != 1:
        raise ValueError(f"targets must be (B,) or (B, L), got shape {tuple(targets.shape)}")
    return targets


def topk_correct(
    logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> torch.Tensor:
    """Count the samples whose label is among the ``k`` highest logits, for each ``k``.

    Args:
        logits: ``(B, C)`` scores.
        targets: ``(B,)`` labels, or ``(B, L)`` padded with -1 (the first label is used).
        ks: The ``k`` values; each is clipped to ``C`` (top-5 of 3 classes is top-3).

    Returns:
        An int64 tensor of ``len(ks)`` counts on ``logits.device`` (no host sync).

    Raises:
        ValueError: Shapes do not match or a ``k`` is below 1.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (B, C), got shape {tuple(logits.shape)}")
    labels = _first_labels(targets)
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} logits rows but {labels.shape[0]} targets")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive, got {tuple(ks)}")
    num_classes = logits.shape[1]
    maxk = min(max(ks), num_classes)
    top = logits.topk(maxk, dim=1).indices  # (B, maxk)
    hits = top.eq(labels.to(top.device).unsqueeze(1))  # (B, maxk); at most one True per row
    cumulative = hits.cumsum(dim=1).sum(dim=0)  # (maxk,) samples hit within the first j+1
    # Python-int indexing selects on the device; an index tensor built from a list would be a
    # blocking host-to-device copy on CUDA at every step.
    return torch.stack([cumulative[min(k, num_classes) - 1] for k in ks]).to(torch.int64)


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def _reduce_device(device: torch.device | None) -> torch.device:
    if device is not None:
        return device
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class AccuracyMeter:
    """Top-k accuracy over many batches, on the device.

    Example:
        >>> meter = AccuracyMeter()
        >>> meter.update(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1]))
        >>> meter.compute()
        {'top1': 50.0, 'top5': 100.0, 'samples': 2}
    """

    def __init__(self, ks: Sequence[int] = (1, 5), device: torch.device | str | None = None):
        """Create an empty meter.

        Args:
            ks: The ``k`` values to track (:func:`topk_correct`).
            device: Where the sums live; default the device of the first batch.
        """
        self.ks = tuple(ks)
        self.device = torch.device(device) if device is not None else None
        self._correct: torch.Tensor | None = None
        self._count: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._correct = None
        self._count = None

    def _ensure(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._correct is None or self._count is None:
            self.device = self.device or device
            self._correct = torch.zeros(len(self.ks), dtype=torch.int64, device=self.device)
            self._count = torch.zeros((), dtype=torch.int64, device=self.device)
        return self._correct, self._count

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch (see :func:`topk_correct` for the shapes).

        Args:
            logits: ``(B, C)`` scores.
            targets: ``(B,)`` labels or ``(B, L)`` padded with -1.
        """
        correct, count = self._ensure(logits.device)
        correct += topk_correct(logits.detach(), targets, self.ks).to(correct.device)
        count += logits.shape[0]

    def all_reduce(self) -> None:
        """Sum the counts over all ranks (no-op outside ``torch.distributed``); call on all."""
        correct, count = self._ensure(_reduce_device(self.device))
        packed = _all_reduce_sum(torch.cat([correct, count.reshape(1)]))
        self._correct, self._count = packed[:-1].clone(), packed[-1].clone()

    def compute(self) -> dict[str, float | int]:
        """Accuracies in percent and the sample count; one host sync.

        Returns:
            ``{"top1": ..., "top5": ..., "samples": N}`` (one ``top{k}`` per ``k``);
            accuracies are NaN when no samples were seen.
        """
        if self._correct is None or self._count is None:
            return {**{f"top{k}": math.nan for k in self.ks}, "samples": 0}
        return self._compute_from(torch.cat([self._correct, self._count.reshape(1)]).tolist())

    def _state(self, device: torch.device) -> torch.Tensor:
        correct, count = self._ensure(device)
        return torch.cat([correct, count.reshape(1)])

    def _load(self, packed: torch.Tensor) -> None:
        counts = packed.to(torch.int64)  # a copy: packed is float64
        self._correct, self._count = counts[:-1], counts[-1]

    def _compute_from(self, values: list[float]) -> dict[str, float | int]:
        *correct, count = values
        result: dict[str, float | int] = {
            f"top{k}": (100.0 * c / count if count else math.nan)
            for k, c in zip(self.ks, correct, strict=True)
        }
        result["samples"] = int(count)
        return result


class LossMeter:
    """Sample-weighted mean loss over many batches, on the device."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        """Create an empty meter.

        Args:
            device: Where the sums live; default the device of the first loss.
        """
        self.device = torch.device(device) if device is not None else None
        self._sums: torch.Tensor | None = None  # [sum of loss * n, n] in float64

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._sums = None

    def _ensure(self, device: torch.device) -> torch.Tensor:
        if self._sums is None:
            self.device = self.device or device
            self._sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        return self._sums

    def update(self, loss: torch.Tensor, n: int) -> None:
        """Add a batch's mean loss.

        Args:
            loss: Scalar mean loss over the batch.
            n: Samples in the batch.
        """
        sums = self._ensure(loss.device)
        sums[0] += loss.detach().to(sums.device, torch.float64) * n
        sums[1] += n

    def all_reduce(self) -> None:
        """Sum over all ranks (no-op outside ``torch.distributed``); call on every rank."""
        self._sums = _all_reduce_sum(self._ensure(_reduce_device(self.device)))

    def compute(self) -> dict[str, float | int]:
        """The mean loss and the sample count; one host sync.

        Returns:
            ``{"loss": mean, "samples": N}``; the mean is NaN when no samples were seen.
        """
        if self._sums is None:
            return {"loss": math.nan, "samples": 0}
        return self._compute_from(self._sums.tolist())

    def global_sums(self) -> list[float]:
        """``[sum of loss x n, n]`` over all ranks, leaving this meter as it is.

        A collective (call it on every rank) and one host sync: for checkpoints, not steps.
        """
        sums = self._ensure(_reduce_device(self.device)).clone()
        return [float(v) for v in _all_reduce_sum(sums).tolist()]

    def load_sums(self, sums: Sequence[float]) -> None:
        """Start from :meth:`global_sums` of an earlier run (on one rank only, so that the
        next all-reduce counts them once)."""
        device = self.device or torch.device("cpu")
        self._sums = torch.tensor([float(v) for v in sums], dtype=torch.float64, device=device)

    def _state(self, device: torch.device) -> torch.Tensor:
        return self._ensure(device)

    def _load(self, packed: torch.Tensor) -> None:
        self._sums = packed.clone()  # float64 already

    @staticmethod
    def _compute_from(values: list[float]) -> dict[str, float | int]:
        total, count = values
        return {"loss": total / count if count else math.nan, "samples": int(count)}


def read_meters(*meters: Any, reduce: bool = True) -> list[dict[str, float | int]]:
    """Sum several meters over all ranks with one collective and read them with one host sync.

    What a training loop does at a print boundary: instead of one ``all_reduce`` and one
    ``compute()`` (a device-to-host copy) per meter, the sums travel packed in one float64
    tensor (exact for counts below 2**53).

    Args:
        meters: The meters (:class:`AccuracyMeter`, :class:`LossMeter`, or anything with
            their ``device`` / ``_state`` / ``_load`` / ``_compute_from``, such as
            :class:`recordkit_train.preemption.StepTrace`), each updated at least once or
            empty.
        reduce: Sum over ranks first (every rank must call this); False reads local sums.

    Returns:
        Each meter's ``compute()`` result, in order; the meters hold the summed values after.
    """
    device = next((m.device for m in meters if m.device is not None), None)
    device = _reduce_device(device) if reduce else (device or torch.device("cpu"))
    parts = [m._state(device) for m in meters]
    packed = torch.cat([p.to(torch.float64) for p in parts])
    if reduce:
        packed = _all_reduce_sum(packed)
    values = packed.tolist()
    results: list[dict[str, float | int]] = []
    start = 0
    for meter, part in zip(meters, parts, strict=True):
        end = start + part.numel()
        meter._load(packed[start:end])
        results.append(meter._compute_from(values[start:end]))
        start = end
    return results
