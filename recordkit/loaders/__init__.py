"""Loaders: shard directories to normalized image batches, with DALI or plain PyTorch.

>>> from recordkit.loaders import make_loader
>>> loader = make_loader("shards/", split="train", batch_size=256)  # doctest: +SKIP

Names are imported lazily: ``recordkit.loaders.augment`` and ``recordkit.loaders.sampling`` need
neither torch nor DALI; the rest imports torch on first use. DALI is imported only by
:mod:`recordkit.loaders.dali`, when that backend is used. See ``docs/LOADERS.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recordkit.loaders.augment import IMAGENET_MEAN as IMAGENET_MEAN
    from recordkit.loaders.augment import IMAGENET_STD as IMAGENET_STD
    from recordkit.loaders.augment import Augment as Augment
    from recordkit.loaders.bench import measure_throughput as measure_throughput
    from recordkit.loaders.factory import Loader as Loader
    from recordkit.loaders.factory import dali_available as dali_available
    from recordkit.loaders.factory import make_loader as make_loader
    from recordkit.loaders.preview import contact_sheet as contact_sheet
    from recordkit.loaders.sampling import RecordSampler as RecordSampler
    from recordkit.loaders.sampling import rank_indices as rank_indices
    from recordkit.loaders.sampling import resolve_rank_world as resolve_rank_world
    from recordkit.loaders.streaming import RemoteOptions as RemoteOptions
    from recordkit.loaders.torch_loader import RecordDataset as RecordDataset
    from recordkit.loaders.torch_loader import TorchLoader as TorchLoader

_LAZY = {
    "IMAGENET_MEAN": "augment",
    "IMAGENET_STD": "augment",
    "Augment": "augment",
    "Loader": "factory",
    "dali_available": "factory",
    "make_loader": "factory",
    "RecordSampler": "sampling",
    "rank_indices": "sampling",
    "resolve_rank_world": "sampling",
    "RemoteOptions": "streaming",
    "RecordDataset": "torch_loader",
    "TorchLoader": "torch_loader",
    "contact_sheet": "preview",
    "measure_throughput": "bench",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'recordkit.loaders' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"recordkit.loaders.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
