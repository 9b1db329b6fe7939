"""The record file format only: framing + CRC, Example payloads, index files, manifest.

No image code and no torch here. The byte-level specification is ``docs/FORMAT.md``.
"""

from recordkit.format.example import Record, decode_example, encode_example
from recordkit.format.index import build_index, index_path_for, read_index, write_index
from recordkit.format.manifest import FORMAT_VERSION, MANIFEST_NAME, Manifest, read_manifest
from recordkit.format.reader import ShardReader
from recordkit.format.writer import ShardInfo, ShardWriter

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "Manifest",
    "Record",
    "ShardInfo",
    "ShardReader",
    "ShardWriter",
    "build_index",
    "decode_example",
    "encode_example",
    "index_path_for",
    "read_index",
    "read_manifest",
    "write_index",
]
