"""``recordkit pack``: im2rec ``.lst`` files → sharded TFRecord datasets, in parallel.

>>> from recordkit.pack import PackOptions, pack          # doctest: +SKIP
>>> from recordkit.imaging import ImageOptions             # doctest: +SKIP
>>> res = pack("data/mydata", "images/", PackOptions(out="shards", threads=8,
...            image=ImageOptions(resize=480, quality=95)))  # doctest: +SKIP
>>> print(res.summary())                                   # doctest: +SKIP

Modules: :mod:`~recordkit.pack.options` (what goes in and out), :mod:`~recordkit.pack.lists`
(which lists, which class map), :mod:`~recordkit.pack.plan` (shard count and assignment),
:mod:`~recordkit.pack.state` (resume, parts, manifest), :mod:`~recordkit.pack.prepare` (what a
run works out before and beside its images: plans, shards to write, outside-ROOT entries),
:mod:`~recordkit.pack.core` (the pipeline). User documentation: ``docs/PACK.md``.
"""

from recordkit.pack.core import Progress, pack
from recordkit.pack.options import (
    DEFAULT_SHARD_BYTES,
    PackError,
    PackOptions,
    PackResult,
    SplitResult,
    default_threads,
)

__all__ = [
    "DEFAULT_SHARD_BYTES",
    "PackError",
    "PackOptions",
    "PackResult",
    "Progress",
    "SplitResult",
    "default_threads",
    "pack",
]
