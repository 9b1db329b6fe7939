"""Import datasets in foreign formats: MXNet RecordIO (``.rec`` / ``.idx``) → recordkit shards.

>>> from recordkit.interop import ConvertOptions, convert_rec, read_rec  # doctest: +SKIP
>>> res = convert_rec("data.rec", ConvertOptions(out="shards"), idx="data.idx",
...                   lst="data.lst")                                    # doctest: +SKIP
>>> print(res.summary())                                                 # doctest: +SKIP
>>> for r in read_rec("data.rec"):                                       # doctest: +SKIP
...     print(r.id, r.labels, len(r.image))

Modules: :mod:`~recordkit.interop.mxnet_rec` (the RecordIO reader, byte layout in its
docstring), :mod:`~recordkit.imageinfo` (JPEG/PNG header probe),
:mod:`~recordkit.interop.options` (options, result, error),
:mod:`~recordkit.interop.rec_to_shards` (the conversion). Needs neither torch, DALI nor OpenCV.
User documentation: ``docs/CONVERT.md``.
"""

from recordkit.interop.mxnet_rec import (
    RecFormatError,
    RecHeader,
    RecRecord,
    read_idx,
    read_rec,
    scan_rec_headers,
)
from recordkit.interop.options import (
    DEFAULT_SHARD_BYTES,
    ConvertError,
    ConvertOptions,
    ConvertResult,
)
from recordkit.interop.rec_to_shards import convert_rec, read_class_names

__all__ = [
    "DEFAULT_SHARD_BYTES",
    "ConvertError",
    "ConvertOptions",
    "ConvertResult",
    "RecFormatError",
    "RecHeader",
    "RecRecord",
    "convert_rec",
    "read_class_names",
    "read_idx",
    "read_rec",
    "scan_rec_headers",
]
