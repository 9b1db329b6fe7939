"""recordkit: image folders → sharded TFRecord datasets → DALI / PyTorch batches.

``import recordkit`` is cheap: it needs neither torch nor DALI.

>>> import recordkit
>>> ds = recordkit.open("shards/")                       # doctest: +SKIP
>>> ds.classes, len(ds["val"]), ds["val"][0].label       # doctest: +SKIP
"""

import importlib
from typing import Any

from recordkit.dataset import Dataset, Split, open_dataset, partition
from recordkit.errors import CorruptRecordError, IndexMismatchError, ManifestError, RecordkitError
from recordkit.format import (
    FORMAT_VERSION,
    Manifest,
    Record,
    ShardInfo,
    ShardReader,
    ShardWriter,
    build_index,
    read_manifest,
)
from recordkit.format.manifest import ShardEntry, SplitEntry, write_manifest
from recordkit.safeio import InputFileError
from recordkit.verify import VerifyReport, verify

__version__ = "0.1.0"

open = open_dataset  # noqa: A001 - recordkit.open(path) is the documented entry point

# Imported on first use so that `import recordkit` needs neither torch, DALI nor Pillow.
# (The packer itself is `recordkit.pack.pack`: the subpackage name is taken.)
_LAZY = {
    "make_loader": "recordkit.loaders",
    "RecordDataset": "recordkit.loaders",
    "RecordSampler": "recordkit.loaders",
    "Augment": "recordkit.loaders",
    "PackOptions": "recordkit.pack",
    "PackResult": "recordkit.pack",
    "ImageOptions": "recordkit.imaging",
    "RecordIndex": "recordkit.format.record_index",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'recordkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "FORMAT_VERSION",
    "Augment",
    "ImageOptions",
    "PackOptions",
    "PackResult",
    "RecordDataset",
    "RecordIndex",
    "RecordSampler",
    "make_loader",
    "CorruptRecordError",
    "Dataset",
    "IndexMismatchError",
    "InputFileError",
    "Manifest",
    "ManifestError",
    "Record",
    "RecordkitError",
    "ShardEntry",
    "ShardInfo",
    "ShardReader",
    "ShardWriter",
    "Split",
    "SplitEntry",
    "VerifyReport",
    "__version__",
    "build_index",
    "open",
    "open_dataset",
    "partition",
    "read_manifest",
    "verify",
    "write_manifest",
]
