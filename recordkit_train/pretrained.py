"""Fine-tuning: start from pretrained weights, optionally freeze or slow down the backbone.

``recordkit-train run --pretrained FILE`` reads ``FILE`` with ``torch.load(weights_only=True)``
(through :func:`recordkit_train.checkpoint.load_checkpoint`; a pickle holding anything but
tensors and plain containers is refused without running it). Accepted:

- a ``recordkit-train`` checkpoint (``best.pt`` / ``last.pt``: its ``model``; its ``classes``
  are compared with the new data's);
- a plain ``state_dict`` — e.g. ``torch.save(torchvision.models.resnet50(weights=…)
  .state_dict(), "r50.pth")`` — or a dict holding one under ``state_dict`` / ``model`` /
  ``model_state_dict``; ``module.`` / ``_orig_mod.`` prefixes (DDP, ``torch.compile``) are
  stripped.

Every tensor whose name and shape match the new model is loaded. The classifier (``fc``) is
loaded only when its shape matches *and* the class names are the same (or either side has
none); otherwise it keeps its fresh initialisation. What was loaded and skipped is logged.
Nothing is downloaded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from recordkit.errors import RecordkitError
from recordkit_train.checkpoint import load_checkpoint
from recordkit_train.models import head_name

__all__ = [
    "HEAD",
    "PretrainedError",
    "PretrainedReport",
    "backbone_lr_scale",
    "freeze_backbone",
    "load_pretrained",
    "read_state_dict",
    "setup_finetuning",
]

logger = logging.getLogger(__name__)

HEAD = "fc"
"""Name of the classifier module in torchvision's ResNets; everything else is the backbone.
Other models' classifier is found by :func:`recordkit_train.models.head_name`."""

_NESTED = ("state_dict", "model", "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.")


class PretrainedError(RecordkitError):
    """A pretrained-weights file holds no usable weights for the model."""


@dataclass(frozen=True)
class PretrainedReport:
    """What :func:`load_pretrained` did.

    Attributes:
        path: The file.
        loaded: Names of the model's tensors set from the file.
        skipped: Names in the file that were not loaded -> why.
        kept: Names of the model's tensors left at their initialisation (absent or skipped).
        head_reset: Whether the classifier was (re-)initialised rather than loaded.
    """

    path: str
    loaded: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)
    head_reset: bool = False


def _is_head(name: str, head: str = HEAD) -> bool:
    return name.startswith(head + ".")


def _strip(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name


def read_state_dict(
    path: str | os.PathLike[str],
) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """Read weights from a checkpoint or state-dict file (``weights_only=True``).

    Args:
        path: The file.

    Returns:
        ``(tensors by name, class names or None)``; names without wrapper prefixes.

    Raises:
        recordkit_train.checkpoint.CheckpointError: Missing, unreadable or unsafe file.
        PretrainedError: It holds no tensors.
    """
    state: dict[str, Any] = load_checkpoint(path, map_location="cpu")
    classes = state.get("classes")
    for key in _NESTED:
        inner = state.get(key)
        if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            state = inner
            break
    tensors = {_strip(str(k)): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise PretrainedError(f"{os.fspath(path)} holds no model weights (no tensors)")
    names = [str(c) for c in classes] if isinstance(classes, (list, tuple)) else None
    return tensors, names


def load_pretrained(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
) -> PretrainedReport:
    """Load every tensor of ``path`` that fits ``model``; re-initialise the classifier if not.

    Args:
        model: The freshly built model (unwrapped).
        path: Checkpoint or state-dict file.
        classes: The new data's class names, to tell whether a same-shaped classifier means
            the same classes.

    Returns:
        The report (also logged: counts at INFO, skipped names at WARNING for the backbone).

    Raises:
        recordkit_train.checkpoint.CheckpointError: Missing, unreadable or unsafe file.
        PretrainedError: No backbone tensor of the file fits the model.
    """
    where = os.fspath(path)
    head_module = head_name(model)
    source, source_classes = read_state_dict(path)
    target = model.state_dict()
    same_classes = not classes or not source_classes or list(classes) == source_classes
    load: dict[str, torch.Tensor] = {}
    skipped: dict[str, str] = {}
    for name, tensor in source.items():
        if name not in target:
            skipped[name] = "not in the model"
        elif tuple(tensor.shape) != tuple(target[name].shape):
            skipped[name] = f"shape {tuple(tensor.shape)} != {tuple(target[name].shape)}"
        elif _is_head(name, head_module) and not same_classes:
            skipped[name] = "class names differ"
        else:
            load[name] = tensor
    if not any(not _is_head(n, head_module) for n in load):
        raise PretrainedError(
            f"{where}: none of its {len(source)} tensors fits this model "
            f"(first: {next(iter(source))}); is it a checkpoint of another architecture?"
        )
    head_names = [n for n in target if _is_head(n, head_module)]
    head_reset = not all(n in load for n in head_names)
    if head_reset:  # all or nothing: never a half-loaded classifier
        for n in head_names:
            if n in load:
                skipped[n] = "rest of the classifier does not fit"
                del load[n]
        head = model.get_submodule(head_module)
        if isinstance(head, nn.Module) and hasattr(head, "reset_parameters"):
            head.reset_parameters()
    model.load_state_dict(load, strict=False)
    kept = [n for n in target if n not in load]
    report = PretrainedReport(where, sorted(load), skipped, kept, head_reset)
    logger.info(
        "pretrained %s: loaded %d of the model's %d tensors%s",
        where,
        len(load),
        len(target),
        f"; {head_module} re-initialised ({len(head_names)} tensors)" if head_reset else "",
    )
    if skipped:
        logger.info(
            "pretrained %s: skipped %d: %s",
            where,
            len(skipped),
            ", ".join(f"{n} ({why})" for n, why in skipped.items()),
        )
    backbone_kept = [n for n in kept if not _is_head(n, head_module)]
    if backbone_kept:
        logger.warning(
            "pretrained %s: %d backbone tensors not in the file, left at initialisation: %s",
            where,
            len(backbone_kept),
            ", ".join(backbone_kept),
        )
    return report


def freeze_backbone(model: nn.Module) -> int:
    """Stop gradients for every parameter outside the classifier.

    BatchNorm layers still normalise with batch statistics in training mode and update
    their running averages (only their affine parameters are frozen).

    Args:
        model: The model (unwrapped).

    Returns:
        The number of parameter tensors frozen.
    """
    head = head_name(model)
    frozen = 0
    for name, param in model.named_parameters():
        if not _is_head(name, head):
            param.requires_grad_(False)
            frozen += 1
    logger.info("froze %d backbone parameter tensors; training %s only", frozen, head)
    return frozen


def backbone_lr_scale(scale: float, head: str = HEAD) -> Callable[[str], float] | None:
    """The ``lr_scale`` for :func:`recordkit_train.optim.build_optimizer`.

    Args:
        scale: Learning-rate multiplier for the backbone (the classifier keeps 1).
        head: The classifier's module name (:func:`recordkit_train.models.head_name`).

    Returns:
        ``name -> multiplier``, or None when ``scale == 1`` (one rate for all).
    """
    if scale == 1.0:
        return None
    return lambda name: 1.0 if _is_head(name, head) else scale


def setup_finetuning(
    model: nn.Module,
    *,
    pretrained: str | None,
    resume: str | None,
    freeze: bool,
    lr_scale: float,
    classes: Sequence[str] | None,
) -> Callable[[str], float] | None:
    """Apply a run's fine-tuning options to a freshly built model (the engine's hook).

    With ``resume`` the pretrained file is not read: the resumed checkpoint holds the
    fine-tuned weights already (so the same command line, plus ``--resume``, continues a
    fine-tuning run).

    Args:
        model: The unwrapped model, before the optimizer is built.
        pretrained: Weights file, or None.
        resume: The run's resume path, or None.
        freeze: Freeze the backbone.
        lr_scale: Backbone learning-rate multiplier.
        classes: The data's class names.

    Returns:
        The ``lr_scale`` callable for the optimizer (None: one rate for all).

    Raises:
        recordkit_train.checkpoint.CheckpointError: Unusable pretrained file.
        PretrainedError: It does not fit the model.
    """
    if pretrained and resume:
        logger.info("resuming: %s is not loaded (the checkpoint has the weights)", pretrained)
    elif pretrained:
        load_pretrained(model, pretrained, classes=classes)
    if freeze:
        freeze_backbone(model)
    return backbone_lr_scale(lr_scale, head_name(model))
