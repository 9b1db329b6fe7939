"""``make_loader``: one call from a shard directory to batches on a device, DALI or torch."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from recordkit.dataset import Dataset, Split, open_dataset
from recordkit.loaders.augment import Augment
from recordkit.loaders.sampling import RecordSampler, resolve_rank_world

if TYPE_CHECKING:
    from recordkit.loaders.streaming import RemoteOptions, ShardWindowSampler

__all__ = [
    "Loader",
    "dali_available",
    "default_workers",
    "local_world_size",
    "make_loader",
    "resolve_device",
    "usable_cpus",
]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "dali", "torch")


@runtime_checkable
class Loader(Protocol):
    """What :func:`make_loader` returns, whichever the backend."""

    backend: str

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def dali_available() -> bool:
    """Whether ``nvidia.dali`` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except (ImportError, ValueError):
        return False


MAX_WORKERS = 16


def usable_cpus() -> int:
    """CPUs this process may run on: ``sched_getaffinity`` (cpusets, ``taskset``), else all."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def local_world_size() -> int:
    """Ranks on this node: torchrun's ``LOCAL_WORLD_SIZE``, 1 when unset (a single process).

    Raises:
        ValueError: ``LOCAL_WORLD_SIZE`` is set but not an integer >= 1.
    """
    value = os.environ.get("LOCAL_WORLD_SIZE", "").strip()
    if not value:
        return 1
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"environment variable LOCAL_WORLD_SIZE={value!r} is not an integer >= 1")
    return n


def default_workers() -> int:
    """Loader threads/workers for one rank: usable CPUs / ranks on this node, in ``[1, 16]``.

    Probed at call time (contract 12): ``os.sched_getaffinity`` counts the CPUs this process may
    use, ``LOCAL_WORLD_SIZE`` (set by torchrun) the ranks sharing them. An 8-GPU node with 96
    cores gives each rank 12; one process alone gets ``min(CPUs, 16)``. A launcher that already
    binds each rank to its own cores makes this too small: pass ``num_workers`` then.
    """
    return max(1, min(usable_cpus() // local_world_size(), MAX_WORKERS))


def resolve_device(
    device: str | torch.device, *, local_rank: int | None = None, device_count: int | None = None
) -> torch.device:
    """The device batches go to, with ``cuda`` pinned to this rank's GPU.

    ``cuda`` without an index means ``cuda:LOCAL_RANK`` when torchrun's ``LOCAL_RANK`` is set
    (modulo the visible GPUs, as ``recordkit_train.distributed.setup`` does, for launchers that
    show each rank one GPU), else the current CUDA device if CUDA is initialised, else
    ``cuda:0``. Any other device is returned as given. Needs no GPU.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a :class:`torch.device`.
        local_rank: This rank on its node; default ``LOCAL_RANK`` from the environment.
        device_count: Visible GPUs; default ``torch.cuda.device_count()`` (0 without CUDA: the
            index is then ``local_rank`` itself).

    Raises:
        ValueError: ``LOCAL_RANK`` is set but not an integer >= 0.
    """
    dev = torch.device(device)
    if dev.type != "cuda" or dev.index is not None:
        return dev
    if local_rank is None:
        value = os.environ.get("LOCAL_RANK", "").strip()
        if value:
            try:
                local_rank = int(value)
            except ValueError:
                local_rank = -1
            if local_rank < 0:
                raise ValueError(
                    f"environment variable LOCAL_RANK={value!r} is not an integer >= 0"
                )
    if local_rank is not None:
        count = torch.cuda.device_count() if device_count is None else device_count
        return torch.device("cuda", local_rank % count if count > 0 else local_rank)
    if torch.cuda.is_initialized():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cuda", 0)


def _through_cache(
    split: Split, remote: RemoteOptions, **sampling: Any
) -> tuple[Split, ShardWindowSampler, int]:
    """How a rank streams remote ``split`` through the shard cache, for either backend: the
    split reading through the cache, its :class:`~recordkit.loaders.streaming.ShardWindowSampler`
    (``sampling``: the :class:`RecordSampler` arguments) and the rank's byte budget (its share
    of the node's cache limit)."""
    from recordkit.loaders.streaming import ShardWindowSampler, cached_split, window_for

    cache = remote.cache()
    budget = cache.limit // local_world_size()
    sampler = ShardWindowSampler(
        [e.records for e in split.entries], window=window_for(split, budget), **sampling
    )
    return cached_split(split, cache), sampler, budget


def make_loader(
    path: str | os.PathLike[str] | Dataset,
    split: str = "train",
    batch_size: int = 256,
    image_size: int = 224,
    *,
    backend: str = "auto",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    drop_last: bool | None = None,
    augment: Augment | None = None,
    train: bool | None = None,
    num_workers: int | None = None,
    prefetch: int = 2,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    shuffle: bool | None = None,
    gpu_decode: bool = False,
    multi_label: bool = False,
    initial_fill: int | None = None,
    epochs: int | None = None,
    remote: RemoteOptions | None = None,
) -> Loader:
    """Make an epoch-aware loader of normalized image batches over one split.

    Example:
        >>> loader = make_loader("shards/", split="train", batch_size=256, device="cuda",
        ...                      dtype=torch.float16, channels_last=True)  # doctest: +SKIP
        >>> for epoch in range(90):                                        # doctest: +SKIP
        ...     loader.set_epoch(epoch)
        ...     for images, labels in loader: ...

    Args:
        path: Shard directory, its URL (``s3://…``, ``gs://…``, ``https://…``), or an opened
            :class:`recordkit.Dataset`.
        split: Split name.
        batch_size: Samples per batch (per rank).
        image_size: Output side in pixels.
        backend: ``"dali"``, ``"torch"`` or ``"auto"``: DALI when ``device`` is CUDA and DALI is
            importable (GPU decoding), else torch, which measured about as fast as DALI's
            CPU pipeline on CPU (``docs/LOADERS.md``).
        device: Where batches end up (``"cpu"``, ``"cuda"``, ``"cuda:1"``); ``"cuda"`` means
            this rank's GPU, ``cuda:LOCAL_RANK`` under torchrun (:func:`resolve_device`).
        dtype: Image dtype (``torch.float32``, ``torch.float16``, ``torch.bfloat16``).
        channels_last: Images in channels-last memory format (still indexed ``(B, 3, S, S)``).
        drop_last: Drop the last partial batch. Default: True when training, False otherwise.
        augment: Crop/flip/normalization settings; default :class:`Augment()`.
        train: Training augmentation; default: ``split == "train"``.
        num_workers: torch DataLoader workers / DALI threads; default: the CPUs this process
            may use divided by the ranks on this node (``LOCAL_WORLD_SIZE``), in ``[1, 16]``
            (:func:`default_workers`).
        prefetch: Batches prefetched per worker (torch) / pipeline queue depth (DALI).
        seed: Base seed; with the epoch and the rank it fixes the order and augmentation.
        rank: This rank; default from torch.distributed when initialized, else ``RANK``, else 0.
        world_size: Ranks; default from torch.distributed, else ``WORLD_SIZE``, else 1.
        shuffle: Reshuffle each epoch; default: the same as ``train``.
        gpu_decode: torch backend on CUDA: workers read each JPEG's header and send the
            JPEGs nvJPEG can decode, with their crop; the main process decodes each batch with
            ``torchvision.io.decode_jpeg(device=…)`` on a side stream and crops/resizes it
            batch-wise. CMYK/YCCK, EXIF-rotated, unusual-subsampling, 12-bit,
            lossless/arithmetic, truncated and non-JPEG images are decoded in the workers on
            the CPU (``docs/LOADERS.md``).
        multi_label: Labels as ``(B, L)`` int64 padded with -1 (L = most labels in the batch)
            instead of ``(B,)`` holding each record's first label.
        initial_fill: DALI reader shuffle buffer (records); default ``max(1024, 4 * batch)``.
        epochs: Total epochs of the run (the same number for a resumed run). A DALI training
            loader builds epoch ``e + 1``'s pipeline in the background at the end of epoch
            ``e`` only while ``e + 1 < epochs``; None: always (then :meth:`close` the loader
            after the last epoch to free it). The torch backend ignores it.
        remote: For a split on ``s3://``, ``gs://`` or ``http(s)://``: the shard cache and
            how to read (:class:`~recordkit.loaders.streaming.RemoteOptions`; default
            ``RemoteOptions()``: training streams whole shards through the cache in
            ``RECORDKIT_CACHE``, evaluation reads records with range requests; DALI always
            streams through the cache, feeding its pipeline with ``fn.external_source``).
            Ignored for local splits. See ``docs/REMOTE.md``.

    Returns:
        A :class:`Loader`: iterate for ``(images, labels)``; ``len()`` is this rank's batches
        per epoch; ``set_epoch(e)`` selects the epoch's order; ``state_dict()`` /
        ``load_state_dict()`` save and restore the position within an epoch (a mid-epoch
        resume goes on at the next sample of the same order, augmentation included).

    Raises:
        ValueError: Bad argument values (unknown backend, batch_size < 1, …).
        ImportError: ``backend="dali"`` without DALI installed.
        ManifestError: ``path`` is not a finished shard directory.
        KeyError: No such split.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if batch_size < 1 or image_size < 1:
        raise ValueError(f"batch_size and image_size must be >= 1 ({batch_size}, {image_size})")
    if epochs is not None and epochs < 0:
        raise ValueError(f"epochs must be >= 0 or None, got {epochs}")
    dev = resolve_device(device)
    ds = path if isinstance(path, Dataset) else open_dataset(path)
    sp = ds[split]
    train = split == "train" if train is None else train
    drop_last = train if drop_last is None else drop_last
    shuffle = train if shuffle is None else shuffle
    augment = augment or Augment()
    rank, world_size = resolve_rank_world(rank, world_size)
    workers = default_workers() if num_workers is None else num_workers
    if backend == "auto":
        # DALI's win is GPU ("mixed") decoding; on CPU the torch backend measured about as
        # fast (docs/LOADERS.md), and gpu_decode is a torch-backend feature.
        backend = "dali" if dev.type == "cuda" and not gpu_decode and dali_available() else "torch"
        log.debug("make_loader: backend auto -> %s (device %s)", backend, dev)
    log.debug(
        "make_loader: %s split=%s records=%d rank=%d/%d batch=%d train=%s",
        backend,
        split,
        len(sp),
        rank,
        world_size,
        batch_size,
        train,
    )
    feeder = None
    read = "direct"
    if sp.remote:
        from recordkit.loaders.streaming import RemoteOptions

        remote = remote or RemoteOptions()
        read = remote.read
        if read == "auto":
            read = "cache" if backend == "dali" or train else "direct"
        if backend == "dali" and read != "cache":
            raise ValueError("the DALI backend reads remote splits from the cache (read='cache')")
    if backend == "dali":
        from recordkit.loaders.dali import DaliLoader
        from recordkit.loaders.dali_sizing import pack_image_bound

        stream = None
        if sp.remote:
            from recordkit.loaders.streaming import StreamedBatches

            assert remote is not None
            cached, order, budget = _through_cache(
                sp,
                remote,
                rank=rank,
                world_size=world_size,
                shuffle=shuffle,
                seed=seed,
                drop_last=drop_last,
            )
            stream = StreamedBatches(cached, order, batch_size, budget)
        return DaliLoader(
            sp,
            batch_size=batch_size,
            image_size=image_size,
            train=train,
            augment=augment,
            device=dev,
            dtype=dtype,
            channels_last=channels_last,
            drop_last=drop_last,
            shuffle=shuffle,
            seed=seed,
            rank=rank,
            world_size=world_size,
            num_threads=max(1, workers),
            prefetch=prefetch,
            multi_label=multi_label,
            initial_fill=initial_fill,
            epochs=epochs,
            max_image=pack_image_bound(ds.manifest.pack, split),
            stream=stream,
        )

    from recordkit.loaders.decode import EncodedDecode, TrainDecode, ValDecode
    from recordkit.loaders.torch_loader import RecordDataset, TorchLoader

    if gpu_decode:
        decode: object = EncodedDecode(image_size, augment, train=train)
    else:
        # training crops resized by the collate, straight into the batch (TrainDecode.pending)
        decode = (
            TrainDecode(image_size, augment, pending=True)
            if train
            else ValDecode(image_size, augment)
        )
    dataset = RecordDataset(ds, split, decode=decode, multi_label=multi_label)  # type: ignore[arg-type]
    sampling = dict(
        rank=rank,
        world_size=world_size,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
        with_seeds=True,
    )
    sampler: RecordSampler
    if read == "cache":
        from recordkit.loaders.streaming import ShardFeeder

        assert remote is not None
        dataset.split, sampler, budget = _through_cache(sp, remote, **sampling)
        feeder = ShardFeeder(dataset.split, budget)
    else:
        sampler = RecordSampler(len(dataset), **sampling)
    return TorchLoader(
        dataset,
        sampler,
        batch_size=batch_size,
        image_size=image_size,
        train=train,
        augment=augment,
        device=dev,
        dtype=dtype,
        channels_last=channels_last,
        drop_last=drop_last,
        num_workers=workers,
        prefetch=prefetch,
        gpu_decode=gpu_decode,
        multi_label=multi_label,
        feeder=feeder,
    )
