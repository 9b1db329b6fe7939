"""The DALI backend: ``fn.readers.tfrecord`` over a split's shards, decode + augment in DALI.

This is the only module of recordkit that imports DALI. Without it, importing this module
raises ``ImportError`` naming the package to install.

Pipeline (one per rank, ``shard_id=rank``, ``num_shards=world_size``; DALI cuts the split with
the same contiguous formula as :func:`recordkit.partition`):

- training: ``readers.tfrecord(random_shuffle=True, initial_fill=…)`` →
  ``decoders.image_random_crop`` (``"mixed"`` with ``hw_decoder_load`` on a GPU, ``"cpu"``
  otherwise; area ``scale``, aspect ``ratio``) → ``resize`` to ``S x S`` →
  ``crop_mirror_normalize(mirror=random.coin_flip(flip))``;
- validation: ``decoders.image`` → ``resize(resize_shorter=int(S / 0.875))`` →
  ``crop_mirror_normalize(crop=(S, S))`` (a centre crop).

Exactly once: the reader is named and pads its last batch (``pad_last_batch=True``, repeating
the last record), and ``DALIGenericIterator(reader_name=…, last_batch_policy=PARTIAL)`` trims
the padding, so validation yields every record of the rank's range once. Training uses
``DROP`` and stops after ``(N // world) // batch`` batches, the same count on every rank.

Seeds: a fresh pipeline is built for each pass with seed ``f(seed, epoch, rank)``, so an epoch's
order and augmentation depend only on ``(seed, epoch, rank)`` — resuming at epoch *e*
reproduces it — and :meth:`DaliLoader.set_epoch` reshuffles. Building costs well under a second
on CPU. DALI's tfrecord reader shuffles through a buffer of ``initial_fill`` records read in
file order, not a full permutation: records should be packed in shuffled order (``recordkit
list`` shuffles like im2rec), which makes the buffer shuffle plenty.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch

try:
    import nvidia.dali.fn as fn
    import nvidia.dali.tfrecord as tfrec
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def
    from nvidia.dali.pipeline import Pipeline
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
except ImportError as exc:  # pragma: no cover - exercised only without DALI
    raise ImportError(
        "the DALI backend needs NVIDIA DALI: pip install recordkit[dali] "
        "(or pip install nvidia-dali-cuda120)"
    ) from exc

from recordkit.dataset import Split, partition
from recordkit.format.example import KEY_ENCODED, KEY_LABEL
from recordkit.loaders.augment import Augment, val_resize_size
from recordkit.loaders.sampling import batches_per_rank, epoch_seed

__all__ = ["DaliLoader", "build_pipeline"]

log = logging.getLogger(__name__)

READER_NAME = "Reader"
# From DALI's ResNet-50 example: share of JPEG decoding sent to the A100/H100 hardware decoder,
# and host/device buffer preallocation that avoids reallocation during the first iterations.
HW_DECODER_LOAD = 0.65
DEVICE_MEMORY_PADDING = 211025920
HOST_MEMORY_PADDING = 140544512

_DALI_DTYPES = {torch.float16: types.FLOAT16, torch.float32: types.FLOAT}


def default_initial_fill(records: int, batch_size: int) -> int:
    """Shuffle buffer size: ``max(1024, 4 * batch)`` records, capped at the rank's records.

    About 110 MB of encoded ImageNet JPEGs per rank at 1024; larger buffers buy little when the
    shards were packed from a shuffled list.
    """
    return max(1, min(records, max(1024, 4 * batch_size)))


def build_pipeline(
    files: list[str],
    index_files: list[str],
    *,
    batch_size: int,
    image_size: int,
    train: bool,
    augment: Augment,
    shard_id: int,
    num_shards: int,
    shuffle: bool,
    seed: int,
    num_threads: int,
    device_id: int | None,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    prefetch: int = 2,
    initial_fill: int = 1024,
) -> Pipeline:
    """Build (but do not run) the DALI pipeline for one rank; see the module docstring.

    Args:
        files: The split's ``.tfrecord`` files, in order.
        index_files: Their ``.idx`` files.
        batch_size: Samples per batch.
        image_size: Output side ``S``.
        train: Training augmentation (else the validation transform).
        augment: Crop/flip/normalization settings.
        shard_id: This rank.
        num_shards: World size.
        shuffle: Shuffle through a buffer of ``initial_fill`` records.
        seed: Pipeline seed (reader shuffle, crops, flips).
        num_threads: DALI CPU threads.
        device_id: CUDA device, or ``None`` for a CPU-only pipeline.
        dtype: ``torch.float16`` or ``torch.float32`` output.
        channels_last: Produce ``HWC`` per sample (NHWC batches) instead of ``CHW``.
        prefetch: ``prefetch_queue_depth``.
        initial_fill: Reader shuffle buffer size.

    Returns:
        The pipeline, with outputs ``(images, labels)``; labels are int64 ``(B, L)`` padded with
        -1 to the batch's longest label list.
    """
    gpu = device_id is not None
    out_dtype = _DALI_DTYPES.get(dtype, types.FLOAT)

    @pipeline_def
    def _pipe() -> tuple[Any, Any]:
        inputs = fn.readers.tfrecord(
            path=files,
            index_path=index_files,
            features={
                KEY_ENCODED: tfrec.FixedLenFeature((), tfrec.string, ""),
                KEY_LABEL: tfrec.VarLenFeature(tfrec.int64, -1),
            },
            shard_id=shard_id,
            num_shards=num_shards,
            random_shuffle=shuffle,
            initial_fill=initial_fill,
            stick_to_shard=True,
            pad_last_batch=True,
            name=READER_NAME,
        )
        jpegs, labels = inputs[KEY_ENCODED], inputs[KEY_LABEL]
        dec_kw: dict[str, Any] = {"device": "mixed" if gpu else "cpu", "output_type": types.RGB}
        if gpu:
            dec_kw.update(
                hw_decoder_load=HW_DECODER_LOAD,
                device_memory_padding=DEVICE_MEMORY_PADDING,
                host_memory_padding=HOST_MEMORY_PADDING,
            )
        if train:
            images = fn.decoders.image_random_crop(
                jpegs,
                random_area=list(augment.scale),
                random_aspect_ratio=list(augment.ratio),
                num_attempts=100,
                **dec_kw,
            )
            images = fn.resize(
                images,
                resize_x=image_size,
                resize_y=image_size,
                interp_type=types.INTERP_LINEAR,
                antialias=augment.train_antialias,
            )
            mirror = fn.random.coin_flip(probability=augment.flip) if augment.flip > 0 else 0
        else:
            images = fn.decoders.image(jpegs, **dec_kw)
            short = val_resize_size(image_size, augment.val_resize_ratio)
            images = fn.resize(
                images, resize_shorter=short, interp_type=types.INTERP_LINEAR, antialias=True
            )
            mirror = 0
        images = fn.crop_mirror_normalize(
            images,
            dtype=out_dtype,
            output_layout="HWC" if channels_last else "CHW",
            crop=(image_size, image_size),
            mean=list(augment.mean255),
            std=list(augment.std255),
            mirror=mirror,
        )
        labels = fn.pad(labels, fill_value=-1)
        if gpu:
            labels = labels.gpu()
        return images, labels

    pipe = _pipe(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed,
        prefetch_queue_depth=prefetch,
    )
    pipe.build()
    return pipe


class DaliLoader:
    """Batches ``(images, labels)`` from a split with DALI; built by ``make_loader``.

    Images are normalized ``(B, 3, S, S)`` tensors in ``dtype`` (channels-last memory format when
    asked), on the pipeline's device; labels int64 ``(B,)`` (first label) or ``(B, L)`` padded
    with -1 when ``multi_label``.
    """

    backend = "dali"

    def __init__(
        self,
        split: Split,
        *,
        batch_size: int,
        image_size: int,
        train: bool,
        augment: Augment,
        device: torch.device,
        dtype: torch.dtype,
        channels_last: bool,
        drop_last: bool,
        shuffle: bool,
        seed: int,
        rank: int,
        world_size: int,
        num_threads: int,
        prefetch: int,
        multi_label: bool,
        initial_fill: int | None = None,
    ) -> None:
        if len(split) < world_size:
            raise ValueError(
                f"split {split.name!r} has {len(split)} records, fewer than the {world_size} "
                "ranks; DALI's reader needs at least one per rank (use backend='torch')"
            )
        self.split = split
        self.batch_size = batch_size
        self.image_size = image_size
        self.train = train
        self.augment = augment
        self.device = device
        self.dtype = dtype
        self.channels_last = channels_last
        self.drop_last = drop_last
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_threads = num_threads
        self.prefetch = prefetch
        self.multi_label = multi_label
        part = len(partition(len(split), rank, world_size))
        self.initial_fill = initial_fill or default_initial_fill(part, batch_size)
        self.epoch = 0
        if device.type == "cuda":
            self.device_id: int | None = (
                device.index if device.index is not None else torch.cuda.current_device()
            )
        else:
            self.device_id = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; its order and augmentation are a function of (seed, epoch, rank)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return batches_per_rank(
            len(self.split), self.rank, self.world_size, self.batch_size, self.drop_last
        )

    def pipeline(self) -> Pipeline:
        """A freshly built pipeline for the current epoch."""
        return build_pipeline(
            [str(p) for p in self.split.files],
            [str(r.index_path) for r in self.split.readers],
            batch_size=self.batch_size,
            image_size=self.image_size,
            train=self.train,
            augment=self.augment,
            shard_id=self.rank,
            num_shards=self.world_size,
            shuffle=self.shuffle,
            seed=epoch_seed(self.seed, self.epoch, 1 + self.rank),
            num_threads=self.num_threads,
            device_id=self.device_id,
            dtype=self.dtype,
            channels_last=self.channels_last,
            prefetch=self.prefetch,
            initial_fill=self.initial_fill,
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if len(self) == 0:  # drop_last with fewer records than one batch
            return
        pipe = self.pipeline()
        policy = LastBatchPolicy.DROP if self.drop_last else LastBatchPolicy.PARTIAL
        it = DALIGenericIterator(
            pipe,
            ["images", "labels"],
            reader_name=READER_NAME,
            last_batch_policy=policy,
            auto_reset=False,
        )
        todo = len(self)
        try:
            for batch in it:
                if todo == 0:
                    break
                todo -= 1
                images, labels = batch[0]["images"], batch[0]["labels"]
                if self.channels_last:
                    images = images.permute(0, 3, 1, 2)  # NHWC storage = channels_last NCHW
                if images.dtype != self.dtype:
                    images = images.to(self.dtype)
                labels = labels.to(torch.int64)
                if not self.multi_label:
                    labels = labels[:, 0].contiguous()
                yield images, labels
        finally:
            del it, pipe

    def __repr__(self) -> str:
        return (
            f"DaliLoader(split={self.split.name!r}, batches={len(self)}, "
            f"batch_size={self.batch_size}, rank={self.rank}/{self.world_size})"
        )
