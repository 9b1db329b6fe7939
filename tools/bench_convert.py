"""``convert-rec`` throughput: an im2rec-style ``.rec`` of N small JPEG records to shards.

Writes a RecordIO file the way MXNet's ``recordio.pack`` + ``MXRecordIO.write`` do (magic,
length word, ``IRHeader`` ``<IfQQ``, image bytes, 4-byte padding; one generated ~2 KB JPEG per
record, each with its own id and label), then times :func:`recordkit.interop.convert_rec`
over it (header pass + copy, no ``.idx``) and prints one JSON object. The file is read once
before timing, so the figure is from the page cache.

    python tools/bench_convert.py --records 300000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MAGIC = 0xCED7230A


def _jpeg(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_rec(path: Path, records: int, classes: int) -> int:
    """Write ``records`` single-label records; returns the file size."""
    images = [_jpeg(s) for s in range(16)]
    magic = struct.pack("<I", MAGIC)
    for img in images:  # the payload must not need continuation records
        assert all(img[i : i + 4] != magic for i in range(0, len(img) - 3, 4))
    with open(path, "wb") as f:
        for i in range(records):
            payload = struct.pack("<IfQQ", 0, float(i % classes), i, 0) + images[i % 16]
            f.write(struct.pack("<II", MAGIC, len(payload)))
            f.write(payload)
            f.write(b"\0" * (-len(payload) % 4))
    return path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--classes", type=int, default=1000)
    a = ap.parse_args()

    from recordkit.interop import ConvertOptions, convert_rec

    with tempfile.TemporaryDirectory(prefix="rk-bench-convert-") as tmp:
        rec = Path(tmp) / "data.rec"
        size = write_rec(rec, a.records, a.classes)
        with open(rec, "rb") as f:  # warm the page cache
            while f.read(1 << 24):
                pass
        start = time.perf_counter()
        result = convert_rec(rec, ConvertOptions(out=str(Path(tmp) / "shards")))
        seconds = time.perf_counter() - start
        out_bytes = sum(p.stat().st_size for p in (Path(tmp) / "shards").iterdir())
    print(
        json.dumps(
            {
                "records": a.records,
                "rec_mb": round(size / 1e6, 1),
                "shards_mb": round(out_bytes / 1e6, 1),
                "shards": result.shards,
                "seconds": round(seconds, 2),
                "records_per_sec": round(a.records / seconds),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3),
                "cpus": os.cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
