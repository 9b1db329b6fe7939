"""recordkit's own small classic networks for 28-32 px datasets (MNIST, Fashion-MNIST, CIFAR).

``--arch`` takes these next to torchvision's models. Each is the published network, layer for
layer, built for the run's ``image_size`` and the loader's 3-channel images (the dense layers
after the last pooling are sized from ``image_size``, so a model is rebuilt with the size it
was trained at, which checkpoints record):

- ``convnet2``: TensorFlow's "Build a Convolutional Neural Network using Estimators" tutorial
  network, the "2 Conv+pooling | None | 0.916 | Tensorflow's doc" row of Fashion-MNIST's
  benchmark table, whose code ships as ``benchmark/convnet.py`` in the dataset's repository
  (Debian: ``/usr/share/doc/dataset-fashion-mnist/benchmark/convnet.py.gz``): conv 5x5, 32
  filters, "same" padding, ReLU; max-pool 2x2 stride 2; conv 5x5, 64 filters, "same", ReLU;
  max-pool 2x2 stride 2; dense 1024 ReLU; dropout 0.4; dense ``num_classes``. On a 28x28x1
  input: 7x7x64 = 3,136 features, 3,274,634 parameters. Weights: Glorot-uniform, biases 0
  (TensorFlow's ``tf.layers`` defaults).
- ``lenet``: MXNet's LeNet (``example/image-classification/symbols/lenet.py``, what
  ``train_mnist.py --network lenet`` trains): conv 5x5, 20 filters, no padding, tanh; max-pool
  2x2 stride 2; conv 5x5, 50 filters, tanh; max-pool 2x2 stride 2; dense 500 tanh; dense
  ``num_classes``. On 28x28x1: 4x4x50 = 800 features, 431,080 parameters.
- ``mlp``: MXNet's MLP (``symbols/mlp.py``, ``train_mnist.py --network mlp``): flatten; dense
  128 ReLU; dense 64 ReLU; dense ``num_classes``. On 28x28x1: 109,386 parameters.

The two MXNet networks are initialised as MXNet's ``fit.py`` does by default
(``Xavier(rnd_type="gaussian", factor_type="in", magnitude=2)``: normal with standard
deviation sqrt(2 / fan_in)), biases 0.

None of them has BatchNorm or residual blocks: ``zero_init_residual`` is a no-op (logged) and
the small-input stem does not apply (they are small-input networks already). Weight decay
skips the biases, as for every model (:func:`recordkit_train.optim.build_optimizer`).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["SMALL_ARCHS", "SMALL_MIN_SIZE", "build_small_model", "ConvNet2", "LeNet", "MLP"]


class ConvNet2(nn.Sequential):
    """TensorFlow's tutorial CNN (Fashion-MNIST ``benchmark/convnet.py``); see the module doc."""

    def __init__(self, num_classes: int, image_size: int, in_channels: int = 3) -> None:
        side = image_size // 2 // 2  # two "valid" 2x2 stride-2 pools after "same" convs
        super().__init__(
            nn.Conv2d(in_channels, 32, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, stride=2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, stride=2),
            nn.Flatten(),
            nn.Linear(64 * side * side, 1024),
            nn.ReLU(inplace=True),
            nn.Dropout(0.4),
            nn.Linear(1024, num_classes),
        )
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)


class LeNet(nn.Sequential):
    """MXNet's LeNet (``symbols/lenet.py``); see the module docstring."""

    def __init__(self, num_classes: int, image_size: int, in_channels: int = 3) -> None:
        side = ((image_size - 4) // 2 - 4) // 2
        super().__init__(
            nn.Conv2d(in_channels, 20, kernel_size=5),
            nn.Tanh(),
            nn.MaxPool2d(2, stride=2),
            nn.Conv2d(20, 50, kernel_size=5),
            nn.Tanh(),
            nn.MaxPool2d(2, stride=2),
            nn.Flatten(),
            nn.Linear(50 * side * side, 500),
            nn.Tanh(),
            nn.Linear(500, num_classes),
        )
        _mxnet_init(self)


class MLP(nn.Sequential):
    """MXNet's MLP (``symbols/mlp.py``); see the module docstring."""

    def __init__(self, num_classes: int, image_size: int, in_channels: int = 3) -> None:
        super().__init__(
            nn.Flatten(),
            nn.Linear(in_channels * image_size * image_size, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, num_classes),
        )
        _mxnet_init(self)


def _mxnet_init(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(module.bias)


SMALL_ARCHS: dict[str, Callable[..., nn.Module]] = {
    "convnet2": ConvNet2,
    "lenet": LeNet,
    "mlp": MLP,
}
"""recordkit's own architectures, by ``--arch`` name."""

SMALL_MIN_SIZE = {"convnet2": 4, "lenet": 16, "mlp": 1}
"""The smallest ``image_size`` each takes (LeNet's unpadded convolutions need 16 px)."""


def build_small_model(
    arch: str, num_classes: int, image_size: int, in_channels: int = 3
) -> nn.Module:
    """Build one of :data:`SMALL_ARCHS`, randomly initialised, for ``image_size`` px inputs.

    Args:
        arch: A key of :data:`SMALL_ARCHS`.
        num_classes: Width of the last layer.
        image_size: Input side in pixels (sizes the first dense layer).
        in_channels: Input channels: 3 for recordkit's loaders; 1 reproduces the published
            single-channel networks' parameter counts.

    Raises:
        KeyError: ``arch`` is not one of them (callers check with ``check_arch`` first).
    """
    return SMALL_ARCHS[arch](num_classes, image_size, in_channels)
