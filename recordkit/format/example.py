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

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    "example_parts",
    "load_parser",
    "image_example_parts",
    "decode_example",
    "example_labels",
    "example_image_labels",
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


@functools.cache
def _proto() -> tuple[Any, type[Exception]]:
    """The generated protobuf module and protobuf's ``DecodeError``, imported on first use:
    writing image records needs no protobuf (:func:`image_example_parts` writes the bytes
    directly), so ``recordkit pack`` does not pay for importing it."""
    from google.protobuf.message import DecodeError

    from recordkit.format import example_pb2

    return example_pb2, DecodeError


def load_parser() -> None:
    """Import protobuf and the generated ``Example`` module now, not at the first parse: a
    loader calls it before forking its workers, which then share the imported modules instead
    of each importing protobuf before its first record."""
    _proto()


def _pb() -> Any:
    return _proto()[0]


def _parse(data: bytes) -> example_pb2.Example:
    """``Example.FromString(data)``, a parse error as :class:`PayloadError`."""
    pb, decode_error = _proto()
    try:
        return pb.Example.FromString(data)
    except decode_error as exc:
        raise PayloadError(f"not a valid tf.train.Example ({exc})") from None


def _bytes_feature(values: Iterable[bytes]) -> example_pb2.Feature:
    pb = _pb()
    return pb.Feature(bytes_list=pb.BytesList(value=list(values)))


def _int64_feature(values: Iterable[int]) -> example_pb2.Feature:
    pb = _pb()
    return pb.Feature(int64_list=pb.Int64List(value=list(values)))


def _float_feature(values: Iterable[float]) -> example_pb2.Feature:
    pb = _pb()
    return pb.Feature(float_list=pb.FloatList(value=list(values)))


def encode_features(features: dict[str, Any]) -> bytes:
    """Serialize a mapping of feature lists into an ``Example``.

    Args:
        features: key → list of ``bytes`` / ``str`` (BytesList), ``float`` (FloatList) or
            ``int`` (Int64List). A scalar is taken as a one-element list.

    Returns:
        The serialized ``Example``, deterministic for equal input (keys are sorted).
    """
    ex = _pb().Example()
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
    ex = _parse(data)
    out: dict[str, FeatureValue] = {}
    for key, feat in ex.features.feature.items():
        kind = feat.WhichOneof("kind")
        out[key] = list(getattr(feat, kind).value) if kind else []
    return out


def encode_example(record: Record) -> bytes:
    """Serialize a :class:`Record` to ``Example`` bytes (deterministic).

    The same bytes as building the ``Example`` message and calling
    ``SerializeToString(deterministic=True)`` (map keys sorted), written directly; see
    :func:`example_parts`.
    """
    head, tail = example_parts(record)
    return b"".join((head, record.image, tail))


def example_parts(record: Record) -> tuple[bytes, bytes]:
    """The serialized ``Example`` of ``record`` around its image: ``(head, tail)``.

    ``head + record.image + tail`` is :func:`encode_example`'s output, so a writer can frame and
    checksum the three pieces without copying the image into a protobuf message and out again
    (``tests/test_format.py`` checks the bytes against protobuf's serializer). See
    :func:`image_example_parts`.
    """
    return image_example_parts(
        len(record.image),
        labels=record.labels,
        filename=record.filename,
        index=record.index,
        format=record.format,
        height=record.height,
        width=record.width,
        channels=record.channels,
        text=record.text,
    )


def image_example_parts(
    size: int,
    *,
    labels: tuple[int, ...],
    filename: str,
    index: int,
    format: str,
    height: int,
    width: int,
    channels: int,
    text: str | None,
) -> tuple[bytes, bytes]:
    """:func:`example_parts` of a record whose image is ``size`` bytes, from its fields.

    Wire format, keys in sorted order as deterministic serialization writes a map:
    ``Example{1: Features{1: entry per key}}``, ``entry{1: key, 2: Feature}``,
    ``Feature{1: BytesList{1: bytes...} | 3: Int64List{1: packed varints}}``. The entries that
    repeat from record to record (channels, label, class name, format, height, width) are
    built once and reused: the packer writes tens of thousands of thumbnails a second.
    """
    key = (channels, labels, text)
    before = _MEMO.get(key)
    if before is None:
        before = _int64_entry(_K_CHANNELS, channels) + _labels_entry(labels)
        if text is not None:
            before += _bytes_entry(_K_TEXT, text.encode("utf-8", "surrogateescape"))
        _remember(key, before)
    key2 = (format, height, width)
    parts = _MEMO.get(key2)
    if parts is None:
        parts = (
            _bytes_entry(_K_FORMAT, format.encode()) + _int64_entry(_K_HEIGHT, height),
            _int64_entry(_K_WIDTH, width),
        )
        _remember(key2, parts)
    # a file name that is not UTF-8 (read from a .lst with surrogateescape) keeps its bytes
    name = _bytes_entry(_K_FILENAME, filename.encode("utf-8", "surrogateescape"))
    after = b"".join((name, parts[0], _int64_entry(_K_INDEX, index), parts[1]))
    value = b"\x0a" + _varint(size)  # BytesList.value
    blist = b"\x0a" + _varint(len(value) + size)  # Feature.bytes_list
    feature = b"\x12" + _varint(len(blist) + len(value) + size)  # entry.value
    body = len(_K_ENCODED) + len(feature) + len(blist) + len(value) + size  # the map entry
    entry = b"\x0a" + _varint(body)
    total = len(before) + len(entry) + body + len(after)  # Example.features
    head = b"".join((b"\x0a", _varint(total), before, entry, _K_ENCODED, feature, blist, value))
    return head, after


_MEMO: dict[tuple[Any, ...], Any] = {}
_MEMO_MAX = 4096


def _remember(key: tuple[Any, ...], value: Any) -> None:
    if len(_MEMO) >= _MEMO_MAX:  # many distinct classes or sizes: start again
        _MEMO.clear()
    _MEMO[key] = value


_U64_MASK = (1 << 64) - 1
_SMALL = [bytes((i,)) for i in range(128)]


def _varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int (an int64 below 0: add 2**64 first)."""
    if n < 0x80:
        return _SMALL[n]
    if n < 0x4000:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    if n < 0x200000:
        return bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, n >> 14))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _key(name: str) -> bytes:
    raw = name.encode()
    return b"\x0a" + _varint(len(raw)) + raw  # entry.key


def _entry(key: bytes, feature: bytes) -> bytes:
    body = key + b"\x12" + _varint(len(feature)) + feature  # entry{key, value}
    return b"\x0a" + _varint(len(body)) + body  # Features.feature


def _bytes_entry(key: bytes, value: bytes) -> bytes:
    item = b"\x0a" + _varint(len(value)) + value  # BytesList.value
    return _entry(key, b"\x0a" + _varint(len(item)) + item)  # Feature.bytes_list


def _labels_entry(values: tuple[int, ...]) -> bytes:
    packed = b"".join(_varint(v & _U64_MASK) for v in values)
    # an empty packed field is omitted, as protobuf does
    ilist = b"\x0a" + _varint(len(packed)) + packed if packed else b""  # Int64List.value
    return _entry(_K_LABEL, b"\x1a" + _varint(len(ilist)) + ilist)  # Feature.int64_list


def _int64_heads(key: bytes) -> list[bytes]:
    """Per varint length 1..10, the bytes of a one-value int64 entry before the varint."""
    heads = [b""]
    for size in range(1, 11):
        ilist = b"\x0a" + _varint(size)
        feature = b"\x1a" + _varint(len(ilist) + size)
        body = len(key) + 1 + len(_varint(len(feature) + len(ilist) + size))
        body += len(feature) + len(ilist) + size
        heads.append(
            b"\x0a" + _varint(body) + key + b"\x12" + _varint(len(feature) + len(ilist) + size)
            + feature + ilist
        )  # fmt: skip
    return heads


def _int64_entry(key: bytes, value: int) -> bytes:
    v = _varint(value & _U64_MASK)
    return _INT64_HEADS[key][len(v)] + v


_K_CHANNELS = _key(KEY_CHANNELS)
_K_LABEL = _key(KEY_LABEL)
_K_TEXT = _key(KEY_TEXT)
_K_ENCODED = _key(KEY_ENCODED)
_K_FILENAME = _key(KEY_FILENAME)
_K_FORMAT = _key(KEY_FORMAT)
_K_HEIGHT = _key(KEY_HEIGHT)
_K_INDEX = _key(KEY_INDEX)
_K_WIDTH = _key(KEY_WIDTH)
_INT64_HEADS = {k: _int64_heads(k) for k in (_K_CHANNELS, _K_LABEL, _K_HEIGHT, _K_INDEX, _K_WIDTH)}


def _one(fmap: Any, key: str, kind: str, default: Any) -> Any:
    if key not in fmap:
        return default
    values = getattr(fmap[key], kind).value
    return values[0] if values else default


def _image_features(data: bytes) -> tuple[Any, tuple[int, ...]]:
    """The feature map of an image ``Example`` and its labels, or the reason it is not one."""
    ex = _parse(data)
    f = ex.features.feature
    image = f.get(KEY_ENCODED)
    if image is None or not image.bytes_list.value:
        raise PayloadError(f"Example has no {KEY_ENCODED!r} bytes feature")
    label = f.get(KEY_LABEL)
    labels = tuple(label.int64_list.value) if label is not None else ()
    if not labels:
        raise PayloadError(f"Example has no {KEY_LABEL!r} int64 feature")
    return f, labels


def example_labels(data: bytes) -> tuple[int, ...]:
    """The labels of an image ``Example``, with :func:`decode_example`'s checks and messages.

    Cheaper than :func:`decode_example` when only the labels are needed (``verify``): no
    :class:`Record` is built.

    Raises:
        PayloadError: As :func:`decode_example`.
    """
    return _image_features(data)[1]


def example_image_labels(data: bytes) -> tuple[bytes, tuple[int, ...]]:
    """The encoded image and the labels of an image ``Example`` (what DALI's tfrecord reader
    extracts), with :func:`decode_example`'s checks and messages.

    Raises:
        PayloadError: As :func:`decode_example`.
    """
    f, labels = _image_features(data)
    return f[KEY_ENCODED].bytes_list.value[0], labels


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
    f, labels = _image_features(data)
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
