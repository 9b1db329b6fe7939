"""The packer's side of a remote ``--out``: staging directory, remote state, manifest last.

See :mod:`recordkit.pack.upload` for the protocol. :class:`RemoteOutput` is what
:func:`recordkit.pack.pack` talks to instead of a local output directory's checks.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import logging
import os
from pathlib import Path

from recordkit.format.atomic import atomic_write_text
from recordkit.format.manifest import MANIFEST_NAME
from recordkit.pack.options import PackError, PackOptions
from recordkit.pack.plan import SplitPlan
from recordkit.pack.state import (
    DoneShard,
    already_packed,
    drop_split_from_manifest,
    finished_shards,
    parse_state,
    read_existing_manifest,
    split_files,
    state_data,
    state_files,
    state_name,
)
from recordkit.pack.upload import RemoteDir, Uploader, default_staging

__all__ = ["RemoteOutput"]

logger = logging.getLogger(__name__)


def _index_name(shard_file: str) -> str:
    return Path(shard_file).with_suffix(".idx").name


class RemoteOutput:
    """One pack into a remote directory, staged in a local one.

    Use :meth:`open`; then :meth:`prepare` each split, :meth:`shard_done` after each shard,
    :meth:`publish` once every shard is written, and :meth:`close` always.
    """

    def __init__(self, url: str, staging: Path, opts: PackOptions) -> None:
        self.url = url
        self.remote = RemoteDir(url)
        self.staging = staging
        self.opts = opts
        self._plans: dict[str, SplitPlan] = {}
        self._uploaded: dict[str, dict[int, DoneShard]] = {}
        self._lock_fd: int | None = None
        self.uploader = Uploader(self.remote, self._record, pending=opts.upload_window)

    @classmethod
    def open(cls, opts: PackOptions) -> RemoteOutput:
        """Check the options and the bucket, lock the staging directory, fetch the manifest.

        Raises:
            PackError: ``--part`` / ``--merge`` with a remote output, or the staging
                directory is in use by another pack.
            RemoteError: The bucket is missing or not readable.
        """
        url = str(opts.out)
        if opts.part[1] > 1 or opts.merge:
            raise PackError(
                f"--part / --merge with a remote --out ({url}) is not supported: pack the parts "
                "into local directories, or pack to the remote URL from one machine"
            )
        staging = opts.staging or default_staging(url)
        try:
            staging.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PackError(f"cannot create staging directory {staging}: {exc.strerror}") from None
        self = cls(url, staging, opts)
        try:
            self._lock()
            self.remote.check_bucket()
            text = self.remote.read_text(MANIFEST_NAME)
            local = staging / MANIFEST_NAME
            if text is None:
                local.unlink(missing_ok=True)
            else:
                atomic_write_text(local, text)
        except BaseException:
            self.close()
            raise
        return self

    def _lock(self) -> None:
        fd = os.open(self.staging / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PackError(
                f"another pack to {self.url} is running (staging directory {self.staging})"
            ) from None
        self._lock_fd = fd

    # --- before packing ---------------------------------------------------------------------
    def _remote_leftovers(self, split: str) -> list[str]:
        names = self.remote.names()
        pats = (f"{split}-?????-of-?????.tfrecord", f"{split}-?????-of-?????.idx")
        found = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in pats)]
        found += [n for n in names if n.startswith(f".pack-state.{split}.")]
        if not self.remote.listable and self.remote.size(state_name(split, (0, 1))) is not None:
            found.append(state_name(split, (0, 1)))
        return sorted(set(found))

    def _push_manifest(self) -> None:
        local = self.staging / MANIFEST_NAME
        if local.exists():
            self.remote.write_text(MANIFEST_NAME, local.read_text(encoding="utf-8"))
        else:
            self.remote.remove([MANIFEST_NAME])

    def _uploaded_shards(self, plan: SplitPlan) -> dict[int, DoneShard]:
        """Shards the remote state file records whose remote files are complete."""
        name = state_name(plan.name, (0, 1))
        text = self.remote.read_text(name)
        if text is None:
            return {}
        try:
            data = json.loads(text)
        except ValueError as exc:
            logger.warning("ignoring unreadable state file %s: %s", self.remote.child(name), exc)
            return {}
        done = {}
        for k, shard in parse_state(data, self.remote.child(name), plan).items():
            e = shard.entry
            idx = self.remote.read_text(e.index) if self.remote.size(e.file) == e.bytes else None
            if idx is not None and sum(1 for ln in idx.splitlines() if ln.strip()) == e.records:
                done[k] = shard
            else:
                logger.warning("%s: recorded as uploaded but incomplete; redoing it", e.file)
        return done

    def prepare(self, plan: SplitPlan) -> dict[int, DoneShard] | None:
        """The remote counterpart of the local checks: clear (``overwrite``), continue
        (``resume``) or refuse; queue the upload of shards finished locally but not remotely.

        Args:
            plan: The split.

        Returns:
            The finished shards, or ``None`` when the split is already packed (``resume``).
        """
        opts, out = self.opts, self.staging
        existing = read_existing_manifest(out)
        packed = existing is not None and plan.name in existing.splits
        self._plans[plan.name] = plan
        if opts.overwrite:
            if packed:
                drop_split_from_manifest(out, plan.name)
                self._push_manifest()
            self.remote.remove(self._remote_leftovers(plan.name))
            self._clear_staged(plan.name)
            self._uploaded[plan.name] = {}
            self._save_state(plan.name)
            return {}
        if already_packed(existing, plan, self.url, resume=opts.resume):
            return None
        if opts.resume:
            uploaded = self._uploaded_shards(plan)
            self._uploaded[plan.name] = dict(uploaded)
            local = finished_shards(out, plan, ignore=frozenset(uploaded))
            for k, shard in sorted(local.items()):
                logger.info("uploading %s, packed before the interruption", shard.entry.file)
                self.shard_done(plan.name, k, shard)
            return {**local, **uploaded}
        leftovers = self._remote_leftovers(plan.name)
        if leftovers:
            raise PackError(
                f"{self.url} holds an unfinished pack of split {plan.name!r} ({leftovers[0]}); "
                "use --resume to finish it or --overwrite to start over"
            )
        self._clear_staged(plan.name)  # nothing remote to resume: staged files are stale
        self._uploaded[plan.name] = {}
        # The remote state file now exists: a write check before any image is packed.
        self._save_state(plan.name)
        return {}

    def _clear_staged(self, split: str) -> None:
        for p in split_files(self.staging, split) + state_files(self.staging, split):
            p.unlink(missing_ok=True)

    # --- while packing ----------------------------------------------------------------------
    def shard_done(self, split: str, number: int, shard: DoneShard) -> None:
        """Queue a finished shard's upload (blocks while the upload window is full)."""
        files = (self.staging / shard.entry.file, self.staging / shard.entry.index)
        self.uploader.submit(split, number, files, shard)

    def _record(self, split: str, number: int, shard: DoneShard) -> None:
        self._uploaded[split][number] = shard
        self._save_state(split)

    def _save_state(self, split: str) -> None:
        data = state_data(self._plans[split], (0, 1), self._uploaded[split])
        self.remote.write_text(state_name(split, (0, 1)), json.dumps(data, ensure_ascii=False))

    # --- after packing ----------------------------------------------------------------------
    def publish(self, splits: list[str]) -> str:
        """Wait for every upload, then upload the staged manifest and remove the state files.

        Returns:
            The manifest's URL.
        """
        self.uploader.finish()
        self._push_manifest()
        self.remote.remove([state_name(s, (0, 1)) for s in splits])
        (self.staging / MANIFEST_NAME).unlink(missing_ok=True)
        return self.remote.child(MANIFEST_NAME)

    def finish_uploads(self) -> None:
        """Wait for every queued upload (nothing to publish: all splits were packed)."""
        self.uploader.finish()

    def close(self) -> None:
        """Stop the uploads, release the staging lock, remove the staging directory if empty."""
        self.uploader.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
            leftovers = [p for p in self.staging.iterdir() if p.name != ".lock"]
            if not leftovers:
                (self.staging / ".lock").unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    self.staging.rmdir()
