"""recordkit-train: distributed fp16 ResNet training on recordkit shards.

Written so far: the building blocks — :mod:`~recordkit_train.models` (ResNet v1.5),
:mod:`~recordkit_train.precision` (fp16/bf16/fp32, the loss-scaling step),
:mod:`~recordkit_train.optim` (SGD without decay on BN/biases, cosine and step schedules),
:mod:`~recordkit_train.checkpoint` (atomic, ``weights_only`` loading, RNG state),
:mod:`~recordkit_train.metrics` (exact top-k counts) — and :mod:`~recordkit_train.engine`
(train / evaluate, DDP through torchrun, checkpoints and resume) behind ``recordkit-train run``
and ``eval``. Not yet: predict, export, the training demo and TensorBoard.
"""

__all__: list[str] = []
