"""Regenerate recordkit/format/example_pb2.py from proto/recordkit/format/example.proto.

Usage: python tools/gen_proto.py [--check]

Uses the protoc bundled with ``grpcio-tools`` (installed by the ``test`` extra) so no system
protoc is needed. ``--check`` exits 1 if the committed module's descriptor differs from what the
``.proto`` compiles to (tests/test_proto.py runs the same comparison).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"
# The path below proto/ is the name the file registers under in protobuf's descriptor pool; it
# must be unique per process (the `tfrecord` package registers a bare "example.proto").
PROTO = "recordkit/format/example.proto"
OUT_ROOT = ROOT  # protoc mirrors PROTO's directories: ROOT/recordkit/format/example_pb2.py


def _protoc(*args: str) -> None:
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - exercised by hand
        raise SystemExit("grpcio-tools is missing: pip install grpcio-tools") from exc
    rc = protoc.main(["protoc", f"--proto_path={PROTO_DIR}", *args, str(PROTO_DIR / PROTO)])
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")


def compiled_descriptor() -> bytes:
    """Return the FileDescriptorProto that protoc makes of the .proto, serialized.

    ``json_name`` is cleared: protoc's descriptor sets fill it in, while the descriptor embedded
    in generated Python code does not carry it.
    """
    from google.protobuf import descriptor_pb2

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        _protoc(f"--descriptor_set_out={out}")
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    (fd,) = fds.file
    for msg in _all_messages(fd.message_type):
        for fld in msg.field:
            fld.ClearField("json_name")
    return fd.SerializeToString(deterministic=True)


def _all_messages(messages):  # noqa: ANN001, ANN202 - descriptor_pb2 containers
    for m in messages:
        yield m
        yield from _all_messages(m.nested_type)


def generated_descriptor() -> bytes:
    """Return the serialized FileDescriptorProto embedded in the committed example_pb2."""
    from google.protobuf import descriptor_pb2

    sys.path.insert(0, str(ROOT))
    from recordkit.format import example_pb2

    fd = descriptor_pb2.FileDescriptorProto()
    example_pb2.DESCRIPTOR.CopyToProto(fd)
    return fd.SerializeToString(deterministic=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    if args.check:
        same = compiled_descriptor() == generated_descriptor()
        print(f"example_pb2.py matches proto/{PROTO}" if same else "example_pb2.py DRIFTED")
        return 0 if same else 1
    _protoc(f"--python_out={OUT_ROOT}")
    print(f"wrote {OUT_ROOT / PROTO.replace('.proto', '_pb2.py')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
