"""recordkit-train: distributed fp16 ResNet training on recordkit shards.

Modules: :mod:`~recordkit_train.models` (ResNet v1.5), :mod:`~recordkit_train.precision`
(fp16/bf16/fp32, the loss-scaling step), :mod:`~recordkit_train.optim` (SGD without decay on
BN/biases, cosine and step schedules), :mod:`~recordkit_train.checkpoint` (atomic,
``weights_only`` loading, RNG state), :mod:`~recordkit_train.metrics` (exact top-k counts),
:mod:`~recordkit_train.engine` (train / evaluate / benchmark, DDP through torchrun, checkpoints
and resume), :mod:`~recordkit_train.distributed` (torchrun environment, failed-rank handling),
:mod:`~recordkit_train.reporting` (progress bar, TensorBoard), :mod:`~recordkit_train.plot`,
:mod:`~recordkit_train.pretrained` (fine-tuning), :mod:`~recordkit_train.predict`,
:mod:`~recordkit_train.export` (ONNX) and :mod:`~recordkit_train.demo`. The command line is
``recordkit-train`` (:mod:`~recordkit_train.cli`): ``run``, ``eval``, ``predict``, ``export``,
``demo``.
"""

__all__: list[str] = []
