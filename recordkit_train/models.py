"""Model building: every torchvision classification model, randomly initialised.

``--arch`` takes any name of ``torchvision.models.list_models(module=torchvision.models)``
(:data:`TORCHVISION_ARCHS`) and recordkit's own small classic networks for 28-32 px datasets,
``convnet2``, ``lenet`` and ``mlp`` (:mod:`recordkit_train.small_models`); :data:`ARCHS` is
both. torchvision's ResNet is "ResNet v1.5": in bottleneck blocks the stride-2
downsampling sits on the 3x3 convolution (``conv2``), not on the first 1x1 as in the original
paper (NVIDIA's DeepLearningExamples and timm use the same). Weights are always randomly
initialised (``weights=None``); nothing is downloaded.

Per family, what the recipe's options mean:

- ``zero_init_residual``: the scale (gamma) of the last BatchNorm of every residual block
  starts at 0 -- ResNet/ResNeXt/Wide-ResNet ``BasicBlock.bn2`` / ``Bottleneck.bn3`` and RegNet's
  ``ResBottleneckBlock.f.c`` BatchNorm. Other families have no such block; the option is a
  no-op there (logged).
- ``small_input``: the CIFAR-style stem for 28-64 px inputs. ResNet family: ``conv1`` becomes a
  3x3 stride-1 convolution and the max-pool is dropped; RegNet: its 3x3 stem convolution gets
  stride 1. Other families have none (:func:`check_small_input` says so).
- ``image_size``: ViTs are built for it (it must be a multiple of the patch size); other
  families take any size at or above :func:`min_image_size`.
"""

from __future__ import annotations

import difflib
import logging
import re
import warnings

import torch
from torch import nn
from torchvision import models as tv_models

from recordkit_train.small_models import SMALL_ARCHS, SMALL_MIN_SIZE, build_small_model

__all__ = [
    "ARCHS",
    "SMALL_INPUT_MAX_SIZE",
    "TORCHVISION_ARCHS",
    "build_model",
    "check_arch",
    "check_image_size",
    "check_small_input",
    "default_small_input",
    "family",
    "head_name",
    "is_own",
    "min_image_size",
    "supports_small_input",
]

logger = logging.getLogger(__name__)

TORCHVISION_ARCHS: tuple[str, ...] = tuple(sorted(tv_models.list_models(module=tv_models)))
"""torchvision's classification models."""

ARCHS: tuple[str, ...] = tuple(sorted((*TORCHVISION_ARCHS, *SMALL_ARCHS)))
"""Architectures :func:`build_model` accepts: torchvision's and recordkit's own."""

SMALL_INPUT_MAX_SIZE = 64
"""``small_input`` defaults to on for models that have the stem at ``image_size`` <= this."""

_SMALL_STEM_FAMILIES = ("resnet", "regnet")
_ZERO_INIT_FAMILIES = ("resnet", "regnet")

# The smallest square input each family runs on (measured with a 2-image training forward);
# families that run on anything get a floor of 8 px.
_MIN_SIZE = {
    "alexnet": 63,
    "convnext": 32,
    "densenet": 29,
    "googlenet": 15,
    "inception": 75,
    "maxvit": 224,
    "squeezenet": 21,  # 1_1 runs from 17
    "vgg": 32,
}
_DEFAULT_MIN_SIZE = 8


def is_own(arch: str) -> bool:
    """Whether ``arch`` is one of recordkit's own networks (not torchvision's)."""
    return arch in SMALL_ARCHS


def family(arch: str) -> str:
    """The model family of ``arch``: ``resnet`` (also ResNeXt, Wide-ResNet), ``vit``, ....

    recordkit's own networks are each their own family (``convnet2``, ``lenet``, ``mlp``).
    """
    if is_own(arch):
        return arch
    if arch.startswith(("resnet", "resnext", "wide_resnet")):
        return "resnet"
    if arch.startswith("inception"):
        return "inception"
    return re.split(r"[_\d]", arch, maxsplit=1)[0]


def check_arch(arch: str) -> None:
    """Raise ``ValueError`` for an unknown name, with the closest known names.

    Raises:
        ValueError: ``arch`` is not in :data:`ARCHS`.
    """
    if arch in ARCHS:
        return
    close = difflib.get_close_matches(arch, ARCHS, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise ValueError(
        f"unknown architecture {arch!r}; {hint}`recordkit-train run --arch list` lists all "
        f"{len(ARCHS)}"
    )


def _patch_size(arch: str) -> int | None:
    match = re.fullmatch(r"vit_\w_(\d+)", arch)
    return int(match.group(1)) if match else None


def min_image_size(arch: str) -> int:
    """The smallest ``image_size`` ``arch`` runs on (with the standard stem)."""
    if is_own(arch):
        return SMALL_MIN_SIZE[arch]
    patch = _patch_size(arch)
    if patch is not None:
        return patch
    return _MIN_SIZE.get(family(arch), _DEFAULT_MIN_SIZE)


def check_image_size(arch: str, image_size: int) -> None:
    """Raise ``ValueError`` when ``arch`` cannot take ``image_size`` px inputs.

    Raises:
        ValueError: Too small, not a multiple of the ViT patch, or not 224 for MaxViT.
    """
    patch = _patch_size(arch)
    if patch is not None and image_size % patch:
        raise ValueError(
            f"{arch} needs an image size that is a multiple of its patch size {patch}, "
            f"got {image_size}"
        )
    if family(arch) == "maxvit" and image_size % 224:
        raise ValueError(f"{arch} needs an image size that is a multiple of 224, got {image_size}")
    low = min_image_size(arch)
    if image_size < low:
        raise ValueError(f"{arch} needs an image size of at least {low} px, got {image_size}")


def supports_small_input(arch: str) -> bool:
    """Whether ``arch`` has a small-input (stride-1) stem variant."""
    return family(arch) in _SMALL_STEM_FAMILIES


def default_small_input(arch: str, image_size: int) -> bool:
    """The ``small_input`` default: on at ``image_size`` <= 64 for models that have it."""
    return supports_small_input(arch) and image_size <= SMALL_INPUT_MAX_SIZE


def check_small_input(arch: str) -> None:
    """Raise ``ValueError`` when ``small_input`` is asked for a model without such a stem.

    Raises:
        ValueError: ``arch`` is not of the ResNet or RegNet family.
    """
    if not supports_small_input(arch):
        raise ValueError(
            f"the small-input stem exists for the ResNet, ResNeXt, Wide-ResNet and RegNet "
            f"models, not {arch}; drop --small-input"
        )


def _small_stem(model: nn.Module, arch: str) -> None:
    """Replace the ImageNet stem by the CIFAR-style one (see the module docstring)."""
    if family(arch) == "resnet":
        out = model.conv1.out_channels
        model.conv1 = nn.Conv2d(3, out, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    else:  # regnet: stem = Conv2dNormActivation(3x3, stride 2)
        model.stem[0].stride = (1, 1)


def _zero_init_residual(model: nn.Module, arch: str) -> int:
    """Zero the last BatchNorm scale of each residual block; returns how many."""
    norms: list[nn.BatchNorm2d] = []
    if family(arch) == "resnet":
        for module in model.modules():
            if isinstance(module, tv_models.resnet.Bottleneck):
                norms.append(module.bn3)
            elif isinstance(module, tv_models.resnet.BasicBlock):
                norms.append(module.bn2)
    elif family(arch) == "regnet":
        for module in model.modules():
            if isinstance(module, tv_models.regnet.ResBottleneckBlock):
                norms.append(module.f.c[1])
    for norm in norms:
        nn.init.zeros_(norm.weight)
    return len(norms)


def head_name(model: nn.Module) -> str:
    """The dotted name of the classifier layer (``fc``, ``classifier.1``, ``heads.head``, ...).

    It is the last ``Linear`` or ``Conv2d`` registered in the model, the layer whose output
    width is the number of classes in every torchvision classification model.

    Raises:
        ValueError: The model has no such layer.
    """
    last = None
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            last = name
    if last is None:
        raise ValueError(f"{type(model).__name__} has no Linear or Conv2d classifier")
    return last


def build_model(
    arch: str,
    num_classes: int,
    *,
    image_size: int = 224,
    small_input: bool = False,
    zero_init_residual: bool = False,
    channels_last: bool = False,
) -> nn.Module:
    """Build a randomly initialised classification model (torchvision's or recordkit's own).

    Args:
        arch: One of :data:`ARCHS`.
        num_classes: Width of the classifier.
        image_size: Input side in pixels (ViTs and recordkit's own networks are built for
            it; others only check it).
        small_input: The CIFAR-style stride-1 stem (ResNet and RegNet families only).
        zero_init_residual: Set the scale (gamma) of the last BatchNorm in every residual
            block to zero, so each block starts as the identity (Goyal et al., "Accurate,
            Large Minibatch SGD"); a no-op for families without such blocks.
        channels_last: Convert parameters and buffers to the ``torch.channels_last`` memory
            format (NHWC strides, NCHW shape); feed inputs in the same format.

    Returns:
        The model, on the CPU, in training mode.

    Raises:
        ValueError: ``arch`` is unknown, ``num_classes`` is below 1, the image size does not
            fit the model or ``small_input`` is asked for a model without that stem.
    """
    check_arch(arch)
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if small_input:
        check_small_input(arch)
    else:
        check_image_size(arch, image_size)
    model: nn.Module
    if is_own(arch):
        model = build_small_model(arch, num_classes, image_size)
    else:
        kwargs: dict[str, object] = {"weights": None, "num_classes": num_classes}
        if family(arch) in ("inception", "googlenet"):
            kwargs.update(aux_logits=False, init_weights=True)  # one output, no init warning
        if family(arch) == "vit":
            kwargs["image_size"] = image_size
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model = tv_models.get_model(arch, **kwargs)
    if small_input:
        _small_stem(model, arch)
    zeroed = _zero_init_residual(model, arch) if zero_init_residual else 0
    if zero_init_residual and not zeroed:
        logger.info("%s has no residual BatchNorm to zero-initialise", arch)
    model.train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    logger.debug(
        "built %s: %d classes, small_input=%s, %d residual BatchNorm scales zeroed, "
        "channels_last=%s",
        arch,
        num_classes,
        small_input,
        zeroed,
        channels_last,
    )
    return model
