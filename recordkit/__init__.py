"""recordkit: image folders → sharded TFRecord datasets → DALI / PyTorch batches.

``import recordkit`` is cheap: it needs neither torch nor DALI.

>>> import recordkit
>>> ds = recordkit.open("shards/")                       # doctest: +SKIP
>>> ds.classes, len(ds["val"]), ds["val"][0].label       # doctest: +SKIP
"""

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
from recordkit.verify import VerifyReport, verify

__version__ = "0.1.0"

open = open_dataset  # noqa: A001 - recordkit.open(path) is the documented entry point

__all__ = [
    "FORMAT_VERSION",
    "CorruptRecordError",
    "Dataset",
    "IndexMismatchError",
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
