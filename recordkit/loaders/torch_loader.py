"""The PyTorch backend: a map-style dataset over a split, uint8 collate, normalize on device.

- :class:`RecordDataset` is a ``torch.utils.data.Dataset`` over one split. Shard files are opened
  lazily in whichever process reads them (``ShardReader`` reopens after ``fork`` and pickles
  without its descriptor, so ``spawn`` workers work too). Bring your own ``transform`` (it gets
  an RGB ``PIL.Image``, like torchvision's ``ImageFolder``), or a ``decode`` callable that gets the
  :class:`~recordkit.Record` itself (what :func:`~recordkit.loaders.make_loader` uses).
- :class:`TorchLoader` is what ``make_loader(backend="torch")`` returns: a ``DataLoader`` with a
  :class:`~recordkit.loaders.sampling.RecordSampler`, workers that return uint8 ``(3, S, S)``
  crops, and the float conversion + normalization done on the target device (ffcv / DALI
  style: 4x fewer bytes through the worker pipes and the host-to-device copy). Workers stack
  each batch into a shared-memory block they reuse once this process has released it
  (:mod:`recordkit.loaders.batch_slots`), plain-bilinear crops resized straight into it
  (:class:`~recordkit.loaders.decode.PendingCrop`). With
  ``gpu_decode`` the workers send JPEG bytes and crops instead, and
  :class:`~recordkit.loaders.gpu_decode.BatchDecoder` decodes and transforms each batch on the
  device.
- Training loaders keep their workers between epochs (``persistent_workers``) and feed them
  one endless stream of batches, epoch after epoch (:class:`_EpochStream`), so they decode the
  next epoch's first batches while this one's last are consumed; validation loaders start
  their workers for each pass, so they exist only while validating. The DataLoader iterator
  is created (and each batch made) with the loader's CUDA device current, so the pin-memory
  thread pins for that device (:func:`~recordkit.loaders.gpu_decode.on_device`).
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import gc
import logging
import multiprocessing as mp
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.data import DataLoader, default_collate, get_worker_info
from torch.utils.data import Dataset as TorchDataset

from recordkit.dataset import Dataset, Split, open_dataset
from recordkit.errors import CorruptRecordError
from recordkit.format.example import PayloadError, Record, decode_example, load_parser
from recordkit.loaders.augment import Augment
from recordkit.loaders.batch_slots import BatchSlots, ReceivedSlots, SlotRelease
from recordkit.loaders.decode import PendingCrop, pil_rgb
from recordkit.loaders.factory import resolve_device
from recordkit.loaders.gpu_decode import BatchDecoder, EncodedBatch, on_device
from recordkit.loaders.sampling import RecordSampler

if TYPE_CHECKING:
    from recordkit.loaders.streaming import ShardFeeder

__all__ = [
    "RecordDataset",
    "TorchLoader",
    "batch_to_device",
    "collate_labels",
    "normalize_batch",
    "normalize_device",
    "normalize_host",
    "stack_samples",
]

log = logging.getLogger(__name__)


class RecordDataset(TorchDataset):
    """Map-style dataset over one split of a shard directory.

    Example:
        >>> ds = RecordDataset("shards/", split="val", transform=my_transform)  # doctest: +SKIP
        >>> image, label = ds[0]                                                 # doctest: +SKIP

    Args:
        path_or_dataset: A shard directory or an opened :class:`recordkit.Dataset`.
        split: Split name (``"train"``, ``"val"``, …).
        transform: Applied to the decoded sample (by default an RGB ``PIL.Image``).
        target_transform: Applied to the label.
        decode: ``decode(record) -> sample`` or ``decode(record, seed) -> sample`` replacing the
            default Pillow decode (e.g. :class:`~recordkit.loaders.decode.TrainDecode`).
        multi_label: Return all labels as a tuple instead of the first label as an int.
        verify_crc: Check record CRCs on read.

    Indexing with ``(index, seed)`` (what ``RecordSampler(with_seeds=True)`` yields) passes
    ``seed`` to ``decode`` so that random augmentation is reproducible per sample.
    """

    def __init__(
        self,
        path_or_dataset: str | os.PathLike[str] | Dataset,
        split: str = "train",
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
        *,
        decode: Callable[..., Any] | None = None,
        multi_label: bool = False,
        verify_crc: bool = True,
    ) -> None:
        ds = (
            path_or_dataset
            if isinstance(path_or_dataset, Dataset)
            else open_dataset(path_or_dataset, verify_crc=verify_crc)
        )
        self.root = ds.root
        self.classes: list[str] = ds.classes
        self.split: Split = ds[split]
        self.split_name = split
        self.transform = transform
        self.target_transform = target_transform
        self.decode = decode
        self.multi_label = multi_label

    def __len__(self) -> int:
        return len(self.split)

    def record(self, index: int) -> Record:
        """Read and parse record ``index`` (no image decoding)."""
        data = self.split.read_bytes(index)
        try:
            return decode_example(data)
        except PayloadError as exc:
            s, j = self.split.locate(index)
            reader = self.split.readers[s]
            raise CorruptRecordError(reader.path, reader.entries[j][0], str(exc)) from None

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[Any, Any]:
        return self._item(index, pending=False)

    def __getitems__(self, indices: Sequence[int | tuple[int, int]]) -> list[tuple[Any, Any]]:
        """A batch's items, as a DataLoader's fetcher asks for them (``torch.utils.data``).

        The same as ``[self[i] for i in indices]``, except that crops the batch's collate
        resizes into place (:class:`~recordkit.loaders.decode.PendingCrop`, from a decode with
        ``pending=True``) stay pending: ``dataset[i]`` always gives a finished sample.
        """
        return [self._item(i, pending=True) for i in indices]

    def _item(self, index: int | tuple[int, int], *, pending: bool) -> tuple[Any, Any]:
        seed: int | None = None
        if isinstance(index, tuple):
            index, seed = index
        rec = self.record(int(index))
        if self.decode is None:
            sample: Any = pil_rgb(rec)
        elif seed is None:
            sample = self.decode(rec)
        else:
            sample = self.decode(rec, seed)
        if isinstance(sample, PendingCrop) and (not pending or self.transform is not None):
            sample = sample.tensor()
        if self.transform is not None:
            sample = self.transform(sample)
        target: Any = rec.labels if self.multi_label else rec.label
        if self.target_transform is not None:
            target = self.target_transform(target)
        return sample, target

    def __repr__(self) -> str:
        return f"RecordDataset({str(self.root)!r}, split={self.split_name!r}, records={len(self)})"


def collate_labels(labels: Sequence[int | Sequence[int]], multi_label: bool) -> torch.Tensor:
    """Labels as int64: ``(B,)``, or ``(B, L)`` padded with -1 (L = most labels in the batch)."""
    if not multi_label:
        return torch.tensor([int(x) for x in labels], dtype=torch.int64)  # type: ignore[arg-type]
    rows = [list(x) for x in labels]  # type: ignore[arg-type]
    width = max(len(r) for r in rows)
    return torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.int64)


def stack_samples(samples: Sequence[torch.Tensor]) -> tuple[torch.Tensor, str]:
    """Stack uint8 ``(3, S, S)`` samples into one contiguous batch, keeping their memory layout.

    Samples that are views of HWC arrays (what the OpenCV resize gives) are stacked as NHWC,
    ``(B, S, S, 3)``, others as NCHW. One copy, into shared memory when run in a DataLoader
    worker (``default_collate``), so the batch crosses to the main process without another.

    Returns:
        ``(batch, layout)``, ``layout`` ``"NHWC"`` or ``"NCHW"``.
    """
    views, layout = _layout_views(samples)
    return default_collate(views), layout


def _layout_views(samples: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], str]:
    """The samples as stacked by :func:`stack_samples`: HWC views (``"NHWC"``) when every
    sample is a view of an HWC array, else the samples themselves (``"NCHW"``)."""
    if all(s.dim() == 3 and s.permute(1, 2, 0).is_contiguous() for s in samples):
        return [s.permute(1, 2, 0) for s in samples], "NHWC"
    return list(samples), "NCHW"


class _Collate:
    """uint8 stacking, or :meth:`EncodedBatch.collate` (picklable for spawn workers).

    In a DataLoader worker, with ``keep`` > 0, uint8 batches are stacked into the worker's
    reusable shared-memory blocks (:class:`~recordkit.loaders.batch_slots.BatchSlots`, created
    in the worker) instead of a fresh block per batch; the fourth item of what it returns is
    then the block's :class:`~recordkit.loaders.batch_slots.SlotRelease`, else ``None``.
    """

    def __init__(self, multi_label: bool, encoded: bool, keep: int = 0) -> None:
        self.multi_label = multi_label
        self.encoded = encoded
        self.keep = keep
        self.slots: BatchSlots | None = None  # this worker's blocks, made in the worker

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "slots": None}  # a spawned worker makes its own

    def __call__(self, batch: list[tuple[Any, Any]]) -> tuple[Any, torch.Tensor, str, Any]:
        samples = [b[0] for b in batch]
        labels = collate_labels([b[1] for b in batch], self.multi_label)
        if self.encoded:
            return EncodedBatch.collate(samples), labels, "encoded", None
        in_worker = self.keep > 0 and get_worker_info() is not None
        if samples and all(isinstance(s, PendingCrop) for s in samples):
            sizes = {s.size for s in samples}
            if len(sizes) == 1:
                size = sizes.pop()
                out, handle = self._batch((len(samples), size, size, 3), in_worker)
                dst = out.numpy()
                for i, s in enumerate(samples):  # resized (and mirrored) into the batch
                    s.finish(dst[i])
                return out, labels, "NHWC", handle
        samples = [s.tensor() if isinstance(s, PendingCrop) else s for s in samples]
        if in_worker:
            stacked = self._into_slot(samples)
            if stacked is not None:
                return stacked[0], labels, stacked[1], stacked[2]
        images, layout = stack_samples(samples)
        return images, labels, layout, None

    def _batch(
        self, shape: tuple[int, ...], in_worker: bool
    ) -> tuple[torch.Tensor, SlotRelease | None]:
        """An uninitialized uint8 batch: in one of this worker's blocks, else fresh memory."""
        if not in_worker:
            return torch.from_numpy(np.empty(shape, np.uint8)), None
        if self.slots is None:
            self.slots = BatchSlots(self.keep)
        return self.slots.take(shape)

    def _into_slot(self, samples: list[Any]) -> tuple[torch.Tensor, str, SlotRelease] | None:
        """:func:`stack_samples` into one of this worker's blocks; ``None`` for samples that
        are not uint8 tensors of one shape (left to ``default_collate`` and its errors)."""
        if not samples or not all(
            isinstance(s, torch.Tensor) and s.dtype == torch.uint8 and s.dim() == 3 for s in samples
        ):
            return None
        views, layout = _layout_views(samples)
        if any(v.shape != views[0].shape for v in views):
            return None
        out, handle = self._batch((len(views), *views[0].shape), True)
        assert handle is not None
        torch.stack(views, out=out)
        return out, layout, handle


def batch_to_device(images: torch.Tensor, layout: str, device: torch.device) -> torch.Tensor:
    """A collated uint8 batch -> uint8 ``(B, 3, S, S)`` on ``device``, still uint8.

    One host-to-device copy of the uint8 bytes (a quarter of float32's), non-blocking on CUDA,
    where the DataLoader has pinned the batch; an NHWC batch arrives as a channels-last view.
    """
    x = images.to(device, non_blocking=device.type == "cuda")
    return x.permute(0, 3, 1, 2) if layout == "NHWC" else x


def normalize_batch(
    images: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    dtype: torch.dtype,
    channels_last: bool,
) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` (any memory layout) -> ``images * scale + shift`` in ``dtype``.

    With ``scale = 1 / std255`` and ``shift = -mean255 / std255`` this is ``(x - mean) / std``.
    CPU tensors go through :func:`normalize_host` (one fused pass per channel), others through
    :func:`normalize_device`.
    """
    if images.device.type == "cpu":
        return normalize_host(images, scale, shift, dtype, channels_last)
    return normalize_device(images, scale, shift, dtype, channels_last)


def normalize_device(
    images: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    dtype: torch.dtype,
    channels_last: bool,
) -> torch.Tensor:
    """:func:`normalize_batch` as three kernels where ``images`` lives: a cast into ``dtype``
    in the requested memory format (the permute of an NHWC batch happens here), then in-place
    ``mul_`` and ``add_`` by ``(1, 3, 1, 1)`` ``scale`` / ``shift`` tensors kept on the same
    device (nothing read back by the host)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = images.to(dtype=dtype, memory_format=fmt)
    return x.mul_(scale).add_(shift)


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64}


def _host_empty(shape: tuple[int, ...], dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """An uninitialized CPU tensor allocated by NumPy, which asks the kernel for transparent
    huge pages on large blocks (``madvise``): a fresh 38.5 MB batch then costs ~75 page faults
    instead of ~9,400. Measured, 64 x 3 x 224 x 224 float32 normalized per batch on one core:
    34 ms into ``torch.empty``, 25 ms into this (16 ms into a reused buffer)."""
    np_dtype = _NUMPY_DTYPES.get(dtype)
    if np_dtype is None or len(shape) != 4:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return torch.empty(shape, dtype=dtype, memory_format=fmt)
    b, c, h, w = shape
    if channels_last:
        return torch.from_numpy(np.empty((b, h, w, c), np_dtype)).permute(0, 3, 1, 2)
    return torch.from_numpy(np.empty(shape, np_dtype))


def normalize_host(
    images: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    dtype: torch.dtype,
    channels_last: bool,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`normalize_batch` on the CPU, by table look-up: ``images * scale + shift`` has
    only 256 values per channel, computed once in float64 and rounded; OpenCV's ``LUT`` then
    maps each uint8 plane (``split`` from an NHWC batch) straight into the float32 output
    (one pass, no arithmetic). Measured for 64 x 3 x 224 x 224 on one core: 10 ms from an
    NHWC batch, against 21 ms for a per-channel ``torch.add(shift, x, alpha=scale)`` and 29
    for cast + ``mul_`` + ``add_`` (``docs/LOADERS.md``). Other dtypes take the ``torch.add``
    form. ``out``: where to write (shape, dtype and memory format as asked), else a fresh
    :func:`_host_empty` buffer."""
    if out is None:
        out = _host_empty(tuple(images.shape), dtype, channels_last)
    sc = scale.detach().to("cpu", torch.float64).flatten()
    sh = shift.detach().to("cpu", torch.float64).flatten()
    b, c = images.shape[:2]
    if dtype == torch.float32 and images.dtype == torch.uint8 and c == 3 and b > 0:
        lut = (torch.arange(256, dtype=torch.float64).view(256, 1) * sc + sh).float().numpy()
        nhwc, dst = images.permute(0, 2, 3, 1), out.permute(0, 2, 3, 1)
        if nhwc.is_contiguous() and channels_last:  # NHWC -> NHWC: one call for the batch
            rows = nhwc.numpy().reshape(-1, images.shape[3], 3)
            cv2.LUT(
                rows,
                np.ascontiguousarray(lut.reshape(256, 1, 3)),
                dst=dst.numpy().reshape(rows.shape),
            )
            return out
        if not channels_last:
            planes = [np.ascontiguousarray(lut[:, k].reshape(256, 1)) for k in range(3)]
            src, target = images.numpy(), out.numpy()
            for i in range(b):
                split = cv2.split(src[i].transpose(1, 2, 0)) if nhwc.is_contiguous() else src[i]
                for k in range(3):
                    cv2.LUT(np.ascontiguousarray(split[k]), planes[k], dst=target[i, k])
            return out
    shift32 = sh.float()
    for k in range(c):
        torch.add(shift32[k], images[:, k], alpha=float(sc[k]), out=out[:, k])
    return out


class HostBuffers:
    """Output buffers for :func:`normalize_host`, reused once nothing references them.

    A fresh 38.5 MB float32 batch costs its page faults and the kernel's zeroing on first
    write (~10 ms per 64 x 3 x 224 x 224 batch here, as much as the look-up itself). Each
    buffer is a NumPy array lent to torch with ``torch.from_numpy``, and the pool keeps a weak
    reference to that tensor's storage (``StorageWeakRef``, what torch's own multiprocessing
    uses). The storage dies only when the last tensor or view of it is gone (autograd's saved
    tensors included); then the array is lent again. So a batch is never overwritten while
    anything can still read it; a caller who keeps every batch just gets fresh buffers.
    """

    def __init__(self, keep: int = 3) -> None:
        self.keep = keep
        self._pool: list[tuple[np.ndarray, StorageWeakRef]] = []

    def get(self, shape: tuple[int, ...], dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
        """A ``(B, C, H, W)`` tensor of ``dtype`` (channels-last if asked), contents undefined."""
        b, c, h, w = shape
        want = (b, h, w, c) if channels_last else (b, c, h, w)
        np_dtype = _NUMPY_DTYPES[dtype]
        free = [
            k
            for k, (arr, ref) in enumerate(self._pool)
            if ref.expired() and arr.shape == want and arr.dtype == np_dtype
        ]
        if free:
            arr = self._pool.pop(free[0])[0]
        else:
            arr = np.empty(want, np_dtype)  # huge pages on large blocks (_host_empty)
            self._pool = self._pool[-(self.keep - 1) :] if self.keep > 1 else []
        t = torch.from_numpy(arr)
        self._pool.append((arr, StorageWeakRef(t.untyped_storage())))
        return t.permute(0, 3, 1, 2) if channels_last else t


class _EpochStream:
    """The batches of epoch after epoch, endlessly: a DataLoader ``batch_sampler``.

    Each epoch's batches are exactly those that a ``BatchSampler`` over the sampler set to that
    epoch gives (same indices, same per-sample seeds, the same last partial batch or none), and
    no batch spans two epochs. It reads a private copy of the loader's sampler, so computing
    epochs ahead never changes the epoch the caller set.
    """

    def __init__(self, sampler: RecordSampler, batch_size: int, drop_last: bool) -> None:
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.sampler = copy.copy(sampler)
        self.handed_out = 0  # batches handed to the DataLoader since the last restart

    def follows(self, sampler: RecordSampler) -> bool:
        """Whether the stream was built from a sampler with ``sampler``'s settings."""
        return self.sampler.settings() == sampler.settings()

    def restart(self, sampler: RecordSampler) -> None:
        """Begin again at ``sampler``'s current epoch, with its settings."""
        self.sampler = copy.copy(sampler)
        self.handed_out = 0

    def __iter__(self) -> Iterator[list[Any]]:
        sampler, size = self.sampler, self.batch_size
        while True:
            items = iter(sampler)
            while batch := list(islice(items, size)):
                if len(batch) < size and self.drop_last:
                    break
                self.handed_out += 1
                yield batch
            sampler.set_epoch(sampler.epoch + 1)


_frozen_in: list[int] = []  # the pid that froze its objects (once per process)


def _freeze_gc_once() -> None:
    """``gc.freeze()`` once per process, before its first fork of DataLoader workers.

    What Python's ``gc`` documentation advises for a process that forks without ``exec``: the
    objects alive now (torch, OpenCV, numpy and everything imported: ~350 k of them) move to a
    permanent generation that collections no longer scan. Without it a full collection (~0.2 s
    here) lands in the first batch's window in the parent or in a worker, and a worker's
    collection writes to the shared pages of every object it scans, copying them. Reference
    counting frees frozen objects as before; only reference cycles that are already garbage at
    this moment stay uncollected, which is why it happens once, not at every fork. Measured on
    10 k records, 4 workers: first batch 0.61-0.85 s before, 0.25-0.35 s after
    (docs/BENCHMARKS.md).
    """
    if _frozen_in != [os.getpid()]:
        _frozen_in[:] = [os.getpid()]
        gc.freeze()


_WORKER_PIDS: set[int] = set()  # this process's DataLoader workers (they ignore SIGTERM)


def _reap_workers() -> None:
    """At exit, end the workers still alive with SIGKILL: they ignore the SIGTERM that
    ``multiprocessing``'s own exit handler sends its daemonic children before joining them,
    so without this a process that exits with a loader still open would wait for ever.

    torch's SIGCHLD handler reports any worker that dies of a signal as a failure (raising
    "DataLoader worker ... is killed by signal" inside ``multiprocessing``'s exit handler, a
    traceback at every such exit), so it is set back to the default first: the process is
    ending, and there is no batch left to fail."""
    alive = {child.pid for child in mp.active_children()}  # only children not yet reaped
    doomed = _WORKER_PIDS & alive
    if doomed and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    _WORKER_PIDS.clear()


def _track_workers(iterator: Any) -> None:
    """Remember the workers of a DataLoader iterator for :func:`_reap_workers`."""
    if not _WORKER_PIDS:
        atexit.register(_reap_workers)  # after multiprocessing's handler, so it runs before it
    for worker in getattr(iterator, "_workers", ()):
        if worker.pid is not None:
            _WORKER_PIDS.add(worker.pid)


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the worker ignores SIGTERM and SIGUSR1.

    Schedulers and torchrun signal a job's whole process group (``killpg``), workers included,
    and torch's workers die of a SIGTERM that their parent did not send; the training process
    would then fail on its next batch ("DataLoader worker ... is killed by signal") instead of
    finishing its step and writing a checkpoint (recordkit-train's preemption handling). The
    decision belongs to the training process: a worker still ends when the loader shuts it
    down, or within seconds of its parent's exit (torch's worker watchdog).
    """
    for name in ("SIGTERM", "SIGUSR1"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)


def _workers_fork() -> bool:
    """Whether DataLoader workers (default context) start by ``fork``; the platform default
    comes first in ``get_all_start_methods``, and nothing here fixes the start method."""
    method = mp.get_start_method(allow_none=True) or mp.get_all_start_methods()[0]
    return method == "fork"


class TorchLoader:
    """Batches ``(images, labels)`` from a split with the torch backend.

    Built by :func:`~recordkit.loaders.make_loader`; see there for the arguments. Images are
    normalized ``dtype`` tensors on ``device`` (``(B, 3, S, S)``, channels-last memory format if
    asked); labels are int64 on ``device``.
    """

    backend = "torch"

    def __init__(
        self,
        dataset: RecordDataset,
        sampler: RecordSampler,
        *,
        batch_size: int,
        image_size: int,
        train: bool,
        augment: Augment,
        device: torch.device,
        dtype: torch.dtype,
        channels_last: bool,
        drop_last: bool,
        num_workers: int,
        prefetch: int,
        gpu_decode: bool,
        multi_label: bool,
        feeder: ShardFeeder | None = None,
    ) -> None:
        device = resolve_device(device)
        self.feeder = feeder  # a remote split streamed through the shard cache
        self.dataset = dataset
        self.sampler = sampler
        self.batch_size = batch_size
        self.image_size = image_size
        self.train = train
        self.augment = augment
        self.device = device
        self.dtype = dtype
        self.channels_last = channels_last
        self.drop_last = drop_last
        self.gpu_decode = gpu_decode
        self.multi_label = multi_label
        self._num_workers = num_workers
        mean = torch.tensor(augment.mean255, dtype=torch.float64).view(1, 3, 1, 1)
        std = torch.tensor(augment.std255, dtype=torch.float64).view(1, 3, 1, 1)
        # On the device in the output dtype (read by its kernels, never by the host); on the
        # CPU in float32, read once per batch by normalize_host.
        stat_dtype = torch.float32 if device.type == "cpu" else dtype
        self._scale = (1.0 / std).to(device=device, dtype=stat_dtype)
        self._shift = (-mean / std).to(device=device, dtype=stat_dtype)
        # uint8 to the device, then normalized there; CPU-only runs normalize on the host.
        self._normalize = normalize_host if device.type == "cpu" else normalize_device
        self._buffers = HostBuffers() if device.type == "cpu" and dtype in _NUMPY_DTYPES else None
        self._decoder = BatchDecoder(device, image_size, augment, train) if gpu_decode else None
        # Workers stack batches into shared-memory blocks they reuse once this process has
        # released them (recordkit.loaders.batch_slots): enough for the batch in hand, the
        # ones queued and the one being filled; this process keeps them mapped.
        keep = prefetch + 2 if num_workers > 0 and not gpu_decode else 0
        self._received = ReceivedSlots(num_workers * keep) if keep else None
        kwargs: dict[str, Any] = {}
        if num_workers > 0:
            # Validation workers live only while validating, not beside the training ones.
            kwargs.update(prefetch_factor=prefetch, persistent_workers=train)
        # Training with workers: one endless stream of batches, epoch after epoch, so the
        # workers go on into the next epoch while the last batches of this one are consumed
        # (as MXNet's iterators and DALI's pipelines do) instead of idling at each boundary.
        # (A fed remote split goes epoch by epoch: the feeder follows one epoch's order.)
        self._stream = (
            _EpochStream(sampler, batch_size, drop_last)
            if train and num_workers and feeder is None
            else None
        )
        self._batches: Iterator[Any] | None = None  # the stream's DataLoader iterator
        self._stream_start = 0  # the epoch the stream began with
        self._taken = 0  # batches taken from the stream since then
        self._start_batch = 0  # the batch the current epoch starts at (set_epoch)
        self._yielded = 0  # batches the current pass has yielded
        if self._stream is not None:
            kwargs.update(batch_sampler=self._stream)
        else:
            kwargs.update(batch_size=batch_size, sampler=sampler, drop_last=drop_last)
        # A private generator for the workers' base seed, which DataLoader otherwise draws
        # from torch's global generator at every iter(): training code that resumes mid-epoch
        # (and restores the global generator) would then see one draw more than the run it
        # continues. Augmentation uses the sampler's per-sample seeds, not this one.
        generator = torch.Generator()
        generator.manual_seed(sampler.seed)
        self.loader = DataLoader(
            dataset,
            num_workers=num_workers,
            generator=generator,
            worker_init_fn=_ignore_stop_signals if num_workers else None,
            collate_fn=_Collate(multi_label, encoded=gpu_decode, keep=keep),
            pin_memory=device.type == "cuda",
            **kwargs,
        )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch: the order (and augmentation) is a function of ``(seed, epoch)``.

        Args:
            epoch: The epoch.
            start_batch: Begin at this batch of the epoch (a mid-epoch resume): the batches
                before it are skipped without reading a record; the ones after are exactly
                those of the whole epoch, augmentation included.

        Raises:
            ValueError: ``start_batch`` is not in ``[0, len(self)]``.
        """
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in [0, {len(self)}], got {start_batch}")
        self.sampler.set_epoch(epoch, start=min(len(self.sampler), start_batch * self.batch_size))
        self._start_batch = start_batch
        self._yielded = 0

    def state_dict(self) -> dict[str, int]:
        """Where the current pass is: ``{"epoch", "batch"}``, ``batch`` the batches of the
        epoch consumed so far (skipped ones included). ``set_epoch(epoch, batch)`` resumes."""
        return {"epoch": self.sampler.epoch, "batch": self._start_batch + self._yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a :meth:`state_dict`: ``set_epoch(state["epoch"], state["batch"])``."""
        self.set_epoch(int(state["epoch"]), int(state.get("batch", 0)))

    def __len__(self) -> int:
        """Batches in a whole epoch (a mid-epoch start yields ``len - start_batch``)."""
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._yielded = 0
        batches = self._iter_stream() if self._stream is not None else self._iter_epoch()
        for batch in batches:
            self._yielded += 1
            yield batch

    def close(self) -> None:
        """Stop the loader's worker processes now (the endless stream's, and persistent
        ones) rather than when the loader is garbage-collected, and a remote split's feeder
        (its cache pins go: a pass left mid-way, by a stop request, keeps them otherwise while
        the loader lives); a later epoch starts them again."""
        if self.feeder is not None:
            self.feeder.stop()
        for it in (self._batches, getattr(self.loader, "_iterator", None)):
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
        self._batches = None
        if getattr(self.loader, "_iterator", None) is not None:
            self.loader._iterator = None
        if self._received is not None:
            self._received.clear()  # the workers' blocks: unmapped once nothing else holds them

    def _iter_epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._share_index(self.sampler)
        feeder = self.feeder
        try:
            # The iterator starts the pin-memory thread (once, with persistent workers: later
            # epochs reuse it), which pins for the device current now: make it ours.
            with on_device(self.device):
                batches = iter(self.loader)
            _track_workers(batches)
            if feeder is not None:  # after the workers are forked: no thread forked mid-lock
                # from the resume point: shards read only by skipped batches are not fetched
                feeder.start(self.sampler.indices()[self.sampler.start :])
            taken = 0
            while True:
                with on_device(self.device):  # not around the yield: the caller's code is its own
                    batch = self._next_batch(batches)
                if batch is None:
                    return
                taken += len(batch[1])
                if feeder is not None:
                    feeder.consumed(taken)  # shards read only by taken batches can go
                yield batch
        finally:
            if feeder is not None:
                feeder.stop()

    def _iter_stream(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch's batches from the endless stream. The stream goes on where the last
        epoch ended when this is the epoch after it, taken whole; any other epoch (the first,
        a resume, one repeated or left early) starts the stream again at this epoch (and at
        its ``start_batch``)."""
        assert self._stream is not None
        epoch, per_epoch, start = self.sampler.epoch, len(self), self._start_batch
        if per_epoch - start <= 0:
            return
        # _taken counts the stream's batches from its first epoch's batch 0, skipped ones too.
        if (
            self._batches is None
            or not self._stream.follows(self.sampler)
            or self._taken != (epoch - self._stream_start) * per_epoch + start
        ):
            self._stream.restart(self.sampler)
            self._share_index(self._stream.sampler)
            # with persistent workers, iter() resets a left-over iterator (dropping what it had
            # prefetched) and starts the stream again; see _iter_epoch for the device
            with on_device(self.device):
                self._batches = iter(self.loader)
            _track_workers(self._batches)
            self._stream_start, self._taken = epoch, start
        batches = self._batches
        for _ in range(per_epoch - start):
            with on_device(self.device):
                batch = self._next_batch(batches)
            if batch is None:  # pragma: no cover - the stream is endless
                raise RuntimeError("the batch stream ended")
            self._taken += 1  # taken from the stream, whether or not the caller takes it
            yield batch

    def _share_index(self, sampler: RecordSampler) -> None:
        """Read the split's index (one int64 array per shard) before forking the workers,
        which then share its pages instead of each reading every ``.idx`` file again. Spawned
        workers get the dataset pickled without it and read what they need themselves. The
        epoch's order (a permutation of the split, 0.05-0.1 s at 1.28 M records) is computed on
        a thread meanwhile; both are numpy, but each holds the GIL much of the time, so they
        overlap only in part (docs/BENCHMARKS.md, "Index in memory")."""
        if self._num_workers > 0 and _workers_fork():
            load_parser()  # protobuf, imported once here rather than in every worker
            _freeze_gc_once()
            with ThreadPoolExecutor(1, thread_name_prefix="recordkit-order") as pool:
                order = pool.submit(sampler.indices)
                self.dataset.split.load_index()
                order.result()

    def _next_batch(self, batches: Iterator[Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
        item = next(batches, None)
        if item is None:
            return None
        samples, labels, layout, handle = item
        if self._decoder is not None:
            images = self._decoder(samples)
        else:
            images = batch_to_device(samples, layout, self.device)
        if self._buffers is not None and images.dim() == 4:
            out = self._buffers.get(tuple(images.shape), self.dtype, self.channels_last)
            images = normalize_host(
                images, self._scale, self._shift, self.dtype, self.channels_last, out=out
            )
        else:
            images = self._normalize(
                images, self._scale, self._shift, self.dtype, self.channels_last
            )
        if handle is not None and self._received is not None:
            # normalized into other memory (or copied to the device, pinned or staged,
            # before this point): the worker may fill the block again
            self._received.add(handle)
            handle.release(images)
        return images, labels.to(self.device, non_blocking=self.device.type == "cuda")

    def __repr__(self) -> str:
        return (
            f"TorchLoader(split={self.dataset.split_name!r}, batches={len(self)}, "
            f"batch_size={self.batch_size}, rank={self.sampler.rank}/{self.sampler.world_size})"
        )
