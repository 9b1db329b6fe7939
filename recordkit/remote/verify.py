"""``recordkit verify s3://…``: each shard downloaded to a temporary file, one at a time, and
checked exactly as a local shard is (:func:`recordkit.verify.verify_shard`)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from recordkit.format.index import max_index_bytes
from recordkit.remote.fs import RangeStream, RemoteError, read_all
from recordkit.remote.manifest import read_remote_manifest
from recordkit.remote.urls import join_url

__all__ = ["verify_remote"]


def _download(url: str, size: int, dest: Path) -> None:
    with open(dest, "wb") as out, RangeStream.open(url, size) as src:
        shutil.copyfileobj(src, out, 8 << 20)


def verify_remote(url: str, *, decode: bool, images: bool, progress=None):  # noqa: ANN001, ANN201
    """Verify the dataset at ``url`` (see :func:`recordkit.verify.verify`); problems name
    the URLs. Files the manifest does not list are not looked for (object stores and web
    servers need not list a "directory").

    Raises:
        ManifestError: No readable manifest at ``url``.
        RemoteError: Access denied, or the server keeps failing.
    """
    from recordkit.memory import MemoryBudget
    from recordkit.verify import (
        Problem,
        VerifyReport,
        _compare_with_manifest,
        _max_labels,
        verify_shard,
    )

    root = url.rstrip("/")
    manifest = read_remote_manifest(root)
    budget = MemoryBudget.probe() if images else None
    total = VerifyReport()
    with tempfile.TemporaryDirectory(prefix="recordkit-verify-") as tmp:
        for split_name, split in manifest.splits.items():
            for entry in split.shards:
                shard_url, idx_url = join_url(root, entry.file), join_url(root, entry.index)
                local, idx = Path(tmp) / entry.file, Path(tmp) / entry.index
                try:
                    _download(shard_url, entry.bytes, local)
                    idx.write_bytes(read_all(idx_url, limit=max_index_bytes(entry.bytes)))
                except RemoteError as exc:
                    if exc.status != 404:
                        raise
                    total.files += 1
                    what = "missing" if exc.url == shard_url else "index missing"
                    total.problems.append(
                        Problem(exc.url, None, f"{what} (listed in split {split_name!r})")
                    )
                    continue
                rep, digest = verify_shard(
                    local,
                    index_path=idx,
                    require_index=True,
                    decode=decode,
                    images=images,
                    num_classes=len(manifest.classes),
                    max_labels=_max_labels(manifest, split_name),
                    budget=budget,
                    progress=progress,
                )
                if digest:
                    _compare_with_manifest(rep, digest, entry, shard_url)
                names = {str(local): shard_url, str(idx): idx_url}
                total.files += rep.files
                total.records += rep.records
                total.bytes += rep.bytes
                total.problems += [
                    Problem(names.get(p.path, p.path), p.offset, p.message) for p in rep.problems
                ]
                total.warnings += [
                    w.replace(str(local), shard_url).replace(str(idx), idx_url)
                    for w in rep.warnings
                ]
                local.unlink(missing_ok=True)
                idx.unlink(missing_ok=True)
    return total
