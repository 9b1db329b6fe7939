"""recordkit-train: distributed fp16 ResNet training on recordkit shards.

The training engine is not written yet (its own issue); this package holds the ``recordkit-train``
entry point so that the command exists and says so.
"""

__all__: list[str] = []
