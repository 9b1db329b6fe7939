"""``tf.train.Example`` payloads for image records, and the feature keys recordkit uses.

A record's data is an ``Example`` (see ``proto/example.proto``) with these features, following
the TensorFlow / TPU ImageNet conventions:

================== ======== ==============================================================
key                type     meaning
================== ======== ==============================================================
image/encoded      bytes    the encoded image (JPEG or PNG), exactly as stored
image/format       bytes    ``jpeg`` or ``png``
image/height       int64    height in pixels of the encoded image
image/width        int64    width in pixels
image/channels     int64    1 (grayscale) or 3 (RGB)
image/class/label  int64    one or more 0-based class labels
image/filename     bytes    path relative to the dataset root, UTF-8, ``/``-separated
image/index        int64    the image's index in the ``.lst`` it came from
image/class/text   bytes    optional: the class name of the first label
================== ======== ==============================================================
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from recordkit.format import example_pb2

__all__ = [
    "KEY_ENCODED",
    "KEY_FORMAT",
    "KEY_HEIGHT",
    "KEY_WIDTH",
    "KEY_CHANNELS",
    "KEY_LABEL",
    "KEY_FILENAME",
    "KEY_INDEX",
    "KEY_TEXT",
    "Record",
    "encode_example",
    "decode_example",
    "encode_features",
    "decode_features",
]

KEY_ENCODED = "image/encoded"
KEY_FORMAT = "image/format"
KEY_HEIGHT = "image/height"
KEY_WIDTH = "image/width"
KEY_CHANNELS = "image/channels"
KEY_LABEL = "image/class/label"
KEY_FILENAME = "image/filename"
KEY_INDEX = "image/index"
KEY_TEXT = "image/class/text"

FeatureValue = list[bytes] | list[float] | list[int]


class PayloadError(ValueError):
    """A record's data is not a valid ``Example`` or lacks a required image feature."""


@dataclass(frozen=True, slots=True)
class Record:
    """One image record as stored in a shard.

    Args:
        image: Encoded image bytes (JPEG or PNG), stored untouched.
        labels: One or more 0-based class labels; an ``int`` is accepted for one label.
        filename: Path of the source image relative to the dataset root.
        index: The image's index in the ``.lst`` file (``-1`` when unknown).
        format: ``"jpeg"`` or ``"png"``.
        height: Height of the encoded image in pixels (0 when unknown).
        width: Width in pixels (0 when unknown).
        channels: 1 for grayscale, 3 for RGB.
        text: Optional class name of the first label.
    """

    image: bytes
    labels: tuple[int, ...]
    filename: str = ""
    index: int = -1
    format: str = "jpeg"
    height: int = 0
    width: int = 0
    channels: int = 3
    text: str | None = field(default=None)

    def __post_init__(self) -> None:
        labels = self.labels
        if isinstance(labels, int):
            labels = (labels,)
        labels = tuple(int(x) for x in labels)
        if not labels:
            raise ValueError("a Record needs at least one label")
        object.__setattr__(self, "labels", labels)
        if not isinstance(self.image, bytes):
            object.__setattr__(self, "image", bytes(self.image))

    @property
    def label(self) -> int:
        """The first (for single-label data, the only) label."""
        return self.labels[0]


def _bytes_feature(values: Iterable[bytes]) -> example_pb2.Feature:
    return example_pb2.Feature(bytes_list=example_pb2.BytesList(value=list(values)))


def _int64_feature(values: Iterable[int]) -> example_pb2.Feature:
    return example_pb2.Feature(int64_list=example_pb2.Int64List(value=list(values)))


def _float_feature(values: Iterable[float]) -> example_pb2.Feature:
    return example_pb2.Feature(float_list=example_pb2.FloatList(value=list(values)))


def encode_features(features: dict[str, Any]) -> bytes:
    """Serialize a mapping of feature lists into an ``Example``.

    Args:
        features: key → list of ``bytes`` / ``str`` (BytesList), ``float`` (FloatList) or
            ``int`` (Int64List). A scalar is taken as a one-element list.

    Returns:
        The serialized ``Example``, deterministic for equal input (keys are sorted).
    """
    ex = example_pb2.Example()
    fmap = ex.features.feature
    for key in sorted(features):
        values = features[key]
        if not isinstance(values, (list, tuple)):
            values = [values]
        if all(isinstance(v, (bytes, bytearray, memoryview, str)) for v in values) and values:
            fmap[key].CopyFrom(
                _bytes_feature(v.encode() if isinstance(v, str) else bytes(v) for v in values)
            )
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            fmap[key].CopyFrom(_int64_feature(values))
        elif all(isinstance(v, (int, float)) for v in values):
            fmap[key].CopyFrom(_float_feature(values))
        else:
            raise TypeError(f"feature {key!r}: cannot encode values of mixed or unknown type")
    return ex.SerializeToString(deterministic=True)


def decode_features(data: bytes) -> dict[str, FeatureValue]:
    """Parse a serialized ``Example`` into ``{key: list of values}``.

    Args:
        data: A serialized ``Example``.

    Returns:
        Each feature as a list of ``bytes``, ``float`` or ``int``; an empty feature gives ``[]``.

    Raises:
        PayloadError: ``data`` does not parse as an ``Example``.
    """
    try:
        ex = example_pb2.Example.FromString(data)
    except DecodeError as exc:
        raise PayloadError(f"not a valid tf.train.Example ({exc})") from None
    out: dict[str, FeatureValue] = {}
    for key, feat in ex.features.feature.items():
        kind = feat.WhichOneof("kind")
        out[key] = list(getattr(feat, kind).value) if kind else []
    return out


def encode_example(record: Record) -> bytes:
    """Serialize a :class:`Record` to ``Example`` bytes (deterministic)."""
    ex = example_pb2.Example()
    f = ex.features.feature
    f[KEY_ENCODED].bytes_list.value.append(record.image)
    f[KEY_FORMAT].bytes_list.value.append(record.format.encode())
    f[KEY_HEIGHT].int64_list.value.append(record.height)
    f[KEY_WIDTH].int64_list.value.append(record.width)
    f[KEY_CHANNELS].int64_list.value.append(record.channels)
    f[KEY_LABEL].int64_list.value.extend(record.labels)
    # a file name that is not UTF-8 (read from a .lst with surrogateescape) keeps its bytes
    f[KEY_FILENAME].bytes_list.value.append(record.filename.encode("utf-8", "surrogateescape"))
    f[KEY_INDEX].int64_list.value.append(record.index)
    if record.text is not None:
        f[KEY_TEXT].bytes_list.value.append(record.text.encode("utf-8", "surrogateescape"))
    return ex.SerializeToString(deterministic=True)


def _one(fmap: Any, key: str, kind: str, default: Any) -> Any:
    if key not in fmap:
        return default
    values = getattr(fmap[key], kind).value
    return values[0] if values else default


def decode_example(data: bytes) -> Record:
    """Parse ``Example`` bytes written by :func:`encode_example` (or a compatible tool).

    Missing optional features take the :class:`Record` defaults, so TFRecords made by other
    tools with the TF ImageNet keys read too.

    Args:
        data: A serialized ``Example``.

    Returns:
        The decoded :class:`Record`.

    Raises:
        PayloadError: ``data`` is not an ``Example``, or lacks ``image/encoded`` or a label.
    """
    try:
        ex = example_pb2.Example.FromString(data)
    except DecodeError as exc:
        raise PayloadError(f"not a valid tf.train.Example ({exc})") from None
    f = ex.features.feature
    if KEY_ENCODED not in f or not f[KEY_ENCODED].bytes_list.value:
        raise PayloadError(f"Example has no {KEY_ENCODED!r} bytes feature")
    labels = tuple(f[KEY_LABEL].int64_list.value) if KEY_LABEL in f else ()
    if not labels:
        raise PayloadError(f"Example has no {KEY_LABEL!r} int64 feature")
    text = _one(f, KEY_TEXT, "bytes_list", None)
    return Record(
        image=f[KEY_ENCODED].bytes_list.value[0],
        labels=labels,
        filename=_one(f, KEY_FILENAME, "bytes_list", b"").decode("utf-8", "replace"),
        index=_one(f, KEY_INDEX, "int64_list", -1),
        format=_one(f, KEY_FORMAT, "bytes_list", b"jpeg").decode("ascii", "replace"),
        height=_one(f, KEY_HEIGHT, "int64_list", 0),
        width=_one(f, KEY_WIDTH, "int64_list", 0),
        channels=_one(f, KEY_CHANNELS, "int64_list", 3),
        text=text.decode("utf-8", "replace") if text is not None else None,
    )
