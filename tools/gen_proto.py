"""Regenerate recordkit/format/example_pb2.py from proto/example.proto.

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
PROTO = "example.proto"
OUT_DIR = ROOT / "recordkit" / "format"


def _protoc(*args: str) -> None:
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - exercised by hand
        raise SystemExit("grpcio-tools is missing: pip install grpcio-tools") from exc
    rc = protoc.main(["protoc", f"--proto_path={PROTO_DIR}", *args, str(PROTO_DIR / PROTO)])
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")


def compiled_descriptor() -> bytes:
    """Return the serialized FileDescriptorProto that protoc makes of proto/example.proto."""
    from google.protobuf import descriptor_pb2

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        _protoc(f"--descriptor_set_out={out}")
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    (fd,) = fds.file
    return fd.SerializeToString(deterministic=True)


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
        print("example_pb2.py matches proto/example.proto" if same else "example_pb2.py DRIFTED")
        return 0 if same else 1
    _protoc(f"--python_out={OUT_DIR}")
    print(f"wrote {OUT_DIR / 'example_pb2.py'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
