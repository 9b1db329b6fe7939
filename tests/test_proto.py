"""The Example proto: generated module in sync with proto/, wire compatible with TensorFlow's."""

from __future__ import annotations

import ast
import importlib.util
import struct
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor

from recordkit.format import example_pb2
from recordkit.format.example import decode_features, encode_features

REPO_ROOT = Path(__file__).resolve().parents[1]


def _load_gen_proto():
    spec = importlib.util.spec_from_file_location("gen_proto", REPO_ROOT / "tools" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _without_json_names(serialized: bytes) -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto.FromString(serialized)

    def strip(messages) -> None:
        for m in messages:
            for f in m.field:
                f.ClearField("json_name")
            strip(m.nested_type)

    strip(fd.message_type)
    return fd


def test_generated_descriptor_equals_compiled_descriptor():
    pytest.importorskip("grpc_tools")
    gen = _load_gen_proto()
    assert gen.compiled_descriptor() == gen.generated_descriptor()


def test_generated_descriptor_matches_proto_source():
    pytest.importorskip("grpc_tools")
    gen = _load_gen_proto()
    compiled = _without_json_names(gen.compiled_descriptor())
    assert [m.name for m in compiled.message_type]  # protoc really compiled something
    assert compiled == _without_json_names(gen.generated_descriptor())


def test_generated_module_is_what_protoc_writes(tmp_path):
    """Regenerating example_pb2.py with the pinned protoc reproduces the committed file."""
    protoc = pytest.importorskip("grpc_tools.protoc")
    gen = _load_gen_proto()
    rc = protoc.main(
        [
            "protoc",
            f"--proto_path={gen.PROTO_DIR}",
            f"--python_out={tmp_path}",
            str(gen.PROTO_DIR / gen.PROTO),
        ]
    )
    assert rc == 0
    generated = gen.PROTO.replace(".proto", "_pb2.py")
    fresh = (tmp_path / generated).read_text()
    committed = (gen.ROOT / generated).read_text()
    assert fresh == committed, "run `python tools/gen_proto.py` and commit example_pb2.py"


# --------------------------------------------------------------------------------------------
# A hand-written protobuf wire encoder, to check bytes without trusting the generated code.


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 are 10-byte two's complement varints
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def example(features: dict[str, bytes]) -> bytes:
    """Example{features=1: Features{feature=1: map entries {key=1, value=2}}}."""
    entries = b"".join(ld(1, ld(1, k.encode()) + ld(2, v)) for k, v in sorted(features.items()))
    return ld(1, entries)


def bytes_feature(*values: bytes) -> bytes:
    return ld(1, b"".join(ld(1, v) for v in values))  # Feature.bytes_list=1, BytesList.value=1


def float_feature(*values: float) -> bytes:  # Feature.float_list=2, packed FloatList.value=1
    return ld(2, ld(1, b"".join(struct.pack("<f", v) for v in values)))


def int64_feature(*values: int) -> bytes:  # Feature.int64_list=3, packed Int64List.value=1
    return ld(3, ld(1, b"".join(varint(v) for v in values)))


def test_varint_reference():
    assert varint(0) == b"\x00" and varint(1) == b"\x01"
    assert varint(300) == b"\xac\x02"
    assert varint(-1) == b"\xff" * 9 + b"\x01"


def test_hand_encoded_int64_feature_bytes():
    # Known bytes, spelled out: Example > Features > entry("k") > Feature > Int64List[1, 300]
    wire = example({"k": int64_feature(1, 300)})
    assert wire == bytes.fromhex("0a0e 0a0c 0a01 6b 1207 1a05 0a03 01ac02".replace(" ", ""))
    ex = example_pb2.Example.FromString(wire)
    assert list(ex.features.feature["k"].int64_list.value) == [1, 300]
    assert ex.features.feature["k"].WhichOneof("kind") == "int64_list"
    assert ex.SerializeToString(deterministic=True) == wire


@pytest.mark.parametrize(
    ("key", "feature", "values"),
    [
        ("image/encoded", bytes_feature(b"\xff\xd8jpeg", b""), [b"\xff\xd8jpeg", b""]),
        ("image/class/label", int64_feature(3, 0, -2, 2**62), [3, 0, -2, 2**62]),
        ("x/float", float_feature(0.5, -2.0, 2.0**100), [0.5, -2.0, 2.0**100]),
    ],
)
def test_each_feature_kind_on_the_wire(key, feature, values):
    wire = example({key: feature})
    ex = example_pb2.Example.FromString(wire)
    feat = ex.features.feature[key]
    kind = {1: "bytes_list", 2: "float_list", 3: "int64_list"}[feature[0] >> 3]
    assert feat.WhichOneof("kind") == kind
    assert list(getattr(feat, kind).value) == values  # float32-exact values: no rounding
    assert ex.SerializeToString(deterministic=True) == wire
    assert decode_features(wire) == {key: values}
    assert encode_features({key: values}) == wire


def test_multi_feature_example_is_sorted_and_identical():
    feats = {
        "image/encoded": bytes_feature(b"abc"),
        "image/format": bytes_feature(b"png"),
        "image/class/label": int64_feature(1, 2),
        "image/height": int64_feature(7),
    }
    wire = example(feats)
    assert (
        encode_features(
            {
                "image/encoded": b"abc",
                "image/format": "png",
                "image/class/label": [1, 2],
                "image/height": 7,
            }
        )
        == wire
    )
    assert example_pb2.Example.FromString(wire).SerializeToString(deterministic=True) == wire


def test_unpacked_int64_is_accepted():
    # TF parsers accept both encodings of repeated scalars; so must we.
    unpacked = ld(3, b"".join(varint(1 << 3 | 0) + varint(v) for v in (5, 6)))
    ex = example_pb2.Example.FromString(example({"n": unpacked}))
    assert list(ex.features.feature["n"].int64_list.value) == [5, 6]


# --------------------------------------------------------------------------------------------
# Descriptor: names, numbers, types and packing as in tensorflow/core/example/*.proto

T = FieldDescriptor
EXPECTED = {
    # message: {field: (number, type, repeated, packed, message type or None)}
    "Example": {"features": (1, T.TYPE_MESSAGE, False, False, "Features")},
    "Features": {"feature": (1, T.TYPE_MESSAGE, True, False, "Features.FeatureEntry")},
    "Feature": {
        "bytes_list": (1, T.TYPE_MESSAGE, False, False, "BytesList"),
        "float_list": (2, T.TYPE_MESSAGE, False, False, "FloatList"),
        "int64_list": (3, T.TYPE_MESSAGE, False, False, "Int64List"),
    },
    "BytesList": {"value": (1, T.TYPE_BYTES, True, False, None)},
    "FloatList": {"value": (1, T.TYPE_FLOAT, True, True, None)},
    "Int64List": {"value": (1, T.TYPE_INT64, True, True, None)},
}


def _shape(desc) -> dict:
    out = {}
    for name, fields in EXPECTED.items():
        msg = desc.message_types_by_name[name]
        out[name] = {
            f.name: (
                f.number,
                f.type,
                f.is_repeated,
                f.is_packed,
                f.message_type.full_name.split(".", 1)[1] if f.message_type else None,
            )
            for f in msg.fields
        }
        assert set(out[name]) == set(fields), name
    return out


def test_descriptor_matches_tensorflow_example_proto():
    assert _shape(example_pb2.DESCRIPTOR) == EXPECTED
    feature = example_pb2.DESCRIPTOR.message_types_by_name["Feature"]
    assert [f.name for f in feature.oneofs_by_name["kind"].fields] == [
        "bytes_list",
        "float_list",
        "int64_list",
    ]
    entry = example_pb2.DESCRIPTOR.message_types_by_name["Features"].nested_types_by_name[
        "FeatureEntry"
    ]
    assert entry.GetOptions().map_entry
    key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
    assert (key.number, key.type) == (1, T.TYPE_STRING)
    assert (value.number, value.type, value.message_type.name) == (2, T.TYPE_MESSAGE, "Feature")


def _tfrecord_package_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """TensorFlow's example.proto as shipped (serialized) in the ``tfrecord`` package.

    Read from the source text without importing it (importing ``tfrecord`` pulls in torch).
    """
    spec = importlib.util.find_spec("tfrecord")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the tfrecord package is not installed")
    src = Path(next(iter(spec.submodule_search_locations))) / "example_pb2.py"
    for node in ast.walk(ast.parse(src.read_text())):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", "") == "AddSerializedFile"
            and isinstance(node.args[0], ast.Constant)
        ):
            return descriptor_pb2.FileDescriptorProto.FromString(node.args[0].value)
    raise AssertionError(f"no serialized descriptor in {src}")


def _proto_shape(fd: descriptor_pb2.FileDescriptorProto) -> dict:
    def walk(msgs, prefix=""):
        for m in msgs:
            if m.name in ("FeatureList", "FeatureLists", "SequenceExample") and not prefix:
                continue  # TF-only messages recordkit does not need
            yield (
                prefix + m.name,
                sorted(
                    (f.name, f.number, f.type, f.label, f.type_name.rsplit(".", 1)[-1])
                    for f in m.field
                ),
            )
            yield from walk(m.nested_type, prefix + m.name + ".")

    return dict(walk(fd.message_type))


def test_descriptor_equals_tensorflows_field_for_field():
    tf = _tfrecord_package_descriptor()
    assert tf.package == "tensorflow"
    ours = descriptor_pb2.FileDescriptorProto()
    example_pb2.DESCRIPTOR.CopyToProto(ours)
    assert _proto_shape(ours) == _proto_shape(tf)
    assert set(_proto_shape(ours)) == {
        "BytesList",
        "FloatList",
        "Int64List",
        "Feature",
        "Features",
        "Features.FeatureEntry",
        "Example",
    }
