"""Named training presets for ``recordkit-train run --recipe NAME`` (docs/RECIPES.md).

A recipe is a set of :class:`~recordkit_train.config.TrainConfig` values. Options given
explicitly on the command line (or as keyword arguments to :func:`resolve_recipe`) win over
the recipe's; everything the recipe does not set keeps the command's default. The values are
plain field names of ``TrainConfig``, so a recipe is exactly the ``run`` command it stands for
(:meth:`Recipe.command` prints it).

- ``imagenet-rn50-90`` / ``imagenet-rn50-250-mixup``: NVIDIA's ResNet-50 v1.5 recipe
  (DeepLearningExamples, PyTorch/Classification/ConvNets: ``configs.yml`` and the resnet50v1.5
  README): SGD momentum 0.875, 0.256 per 256 images, weight decay 1/32768, label smoothing
  0.1, cosine decay after an 8-epoch warm-up; the 250-epoch run adds mixup 0.2. NVIDIA
  reports 77.1 % and 78.3 % top-1 (8 GPUs, AMP).
- ``fashion-mnist-resnet18``: ResNet18 with its ImageNet stem on Fashion-MNIST's 28x28 images
  (built with ``tools/make_fashion_mnist.py``), 3 epochs: what 2 CPU cores train in about
  15-20 minutes; measured figures, and why it does not reach its published figure in 15
  minutes on 2 cores, in docs/RECIPES.md.
- ``fashion-mnist-convnet2``: the Fashion-MNIST benchmark's TensorFlow tutorial CNN
  (:mod:`recordkit_train.small_models`, published 0.916) in 5 epochs: SGD with momentum,
  cosine decay, flips only (in a short trial they beat pad-and-crop), the network's own
  dropout as the regulariser; measured accuracy and wall time in docs/RECIPES.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from recordkit.errors import RecordkitError

__all__ = ["RECIPES", "Recipe", "RecipeError", "get_recipe", "resolve_recipe"]


class RecipeError(RecordkitError, ValueError):
    """An unknown recipe name."""


@dataclass(frozen=True)
class Recipe:
    """One preset.

    Attributes:
        name: What ``--recipe`` takes.
        summary: One line for ``--recipe list``.
        values: ``TrainConfig`` field -> value.
        reference: Where the values and the expected accuracy come from.
    """

    name: str
    summary: str
    values: Mapping[str, Any] = field(default_factory=dict)
    reference: str = ""

    def command(self) -> str:
        """The ``recordkit-train run`` options this recipe stands for."""
        parts = []
        for key, value in self.values.items():
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                parts.append(flag if value else "--no-" + key.replace("_", "-"))
            elif isinstance(value, tuple):
                parts.append(f"{flag} {','.join(str(v) for v in value)}")
            else:
                parts.append(f"{flag} {value}")
        return " ".join(parts)


_NVIDIA_RN50 = {
    "arch": "resnet50",
    "image_size": 224,
    "batch_size": 256,
    "base_lr": 0.256,
    "momentum": 0.875,
    "weight_decay": 3.0517578125e-05,
    "label_smoothing": 0.1,
    "lr_schedule": "cosine",
    "warmup_epochs": 8.0,
    "aug": "rrc",
}
_NVIDIA_REF = (
    "NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5 (README, "
    "configs.yml)"
)

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "imagenet-rn50-90",
            "ResNet-50 v1.5 on ImageNet, 90 epochs (NVIDIA: 77.1 % top-1)",
            {**_NVIDIA_RN50, "epochs": 90},
            _NVIDIA_REF,
        ),
        Recipe(
            "imagenet-rn50-250-mixup",
            "ResNet-50 v1.5 on ImageNet, 250 epochs + mixup 0.2 (NVIDIA: 78.3 % top-1)",
            {**_NVIDIA_RN50, "epochs": 250, "mixup": 0.2},
            _NVIDIA_REF,
        ),
        Recipe(
            "fashion-mnist-resnet18",
            "ResNet18 (ImageNet stem) on Fashion-MNIST 28x28, 3 epochs on 2 CPU cores",
            {
                "arch": "resnet18",
                "small_input": False,
                "image_size": 28,
                "batch_size": 128,
                "epochs": 3,
                "lr": 0.1,
                "momentum": 0.9,
                "weight_decay": 5e-4,
                "label_smoothing": 0.1,
                "lr_schedule": "cosine",
                "warmup_epochs": 0.3,
                "aug": "pad-crop",
                "pad": 2,
                "hflip": 0.5,
            },
            "Fashion-MNIST README benchmark table (ResNet18 with the CIFAR-style stem: 0.949); "
            "docs/RECIPES.md for the measured run and why it falls short of that",
        ),
        Recipe(
            "fashion-mnist-convnet2",
            "TensorFlow's 2-conv tutorial CNN on Fashion-MNIST 28x28, 5 epochs on 2 CPU cores "
            "(published: 0.916)",
            {
                "arch": "convnet2",
                "image_size": 28,
                "batch_size": 128,
                "epochs": 5,
                "lr": 0.05,
                "momentum": 0.9,
                "weight_decay": 5e-4,
                "label_smoothing": 0.0,
                "lr_schedule": "cosine",
                "warmup_epochs": 0.3,
                "aug": "pad-crop",
                "pad": 0,
                "hflip": 0.5,
            },
            "Fashion-MNIST README benchmark table, '2 Conv+pooling | None | 0.916 | "
            "Tensorflow's doc' (benchmark/convnet.py); docs/RECIPES.md for the measured run",
        ),
    )
}
"""The presets, by name."""


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``.

    Raises:
        RecipeError: No such recipe (the message lists the names).
    """
    try:
        return RECIPES[name]
    except KeyError:
        raise RecipeError(
            f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)} "
            "(`recordkit-train run --recipe list` describes them)"
        ) from None


def resolve_recipe(name: str, explicit: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe's values with ``explicit`` ones on top.

    Args:
        name: A key of :data:`RECIPES`.
        explicit: ``TrainConfig`` field -> value the user set; these win.

    Returns:
        The merged field -> value dict (only the fields either side sets).

    Raises:
        RecipeError: Unknown recipe, or a recipe value naming no ``TrainConfig`` field.
    """
    from recordkit_train.config import TrainConfig

    recipe = get_recipe(name)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(recipe.values) - known)
    if unknown:  # a recipe written for options this build lacks
        raise RecipeError(f"recipe {name} sets unknown options: {', '.join(unknown)}")
    return {**recipe.values, **explicit}
