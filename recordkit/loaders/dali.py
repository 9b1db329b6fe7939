"""The DALI backend: ``fn.readers.tfrecord`` over a split's shards, decode + augment in DALI.

This is the only module of recordkit that imports DALI (>= 1.44, :data:`MIN_DALI`). Without it,
importing this module raises ``ImportError`` naming the package to install; with an older DALI,
one naming the version needed.

Pipeline (one per rank, ``shard_id=rank``, ``num_shards=world_size``; DALI cuts the split with
the same contiguous formula as :func:`recordkit.partition`):

- training: ``readers.tfrecord(random_shuffle=True, initial_fill=…)`` →
  ``decoders.image_random_crop`` (``"mixed"`` with ``hw_decoder_load`` on a GPU, ``"cpu"``
  otherwise; area ``scale``, aspect ``ratio``) → ``resize`` to ``S x S`` (bilinear with
  antialiasing: DALI's ResNet-50 recipe, whose deprecated ``INTERP_TRIANGULAR`` is exactly
  that; ``Augment(train_antialias=False)`` for plain bilinear) →
  ``crop_mirror_normalize(mirror=random.coin_flip(flip))``;
- validation: ``decoders.image`` → ``resize(resize_shorter=int(S / 0.875))`` →
  ``crop_mirror_normalize(crop=(S, S))`` (a centre crop).

Decoder memory (:func:`decoder_kwargs`): only the training decoder preallocates nvJPEG buffers
(``device_memory_padding``: one device buffer per thread; ``host_memory_padding``: two pinned
host buffers per thread) and the hardware decoder's (``preallocate_width_hint`` / ``_height_``),
sized for the largest image the manifest's pack parameters allow
(:func:`~recordkit.loaders.dali_sizing.pack_image_bound`:
``recordkit pack --resize R`` stores images whose shorter side is at most R; the longer side is
assumed at most ``2 R``) or, when they do not tell, for ImageNet's largest as in DALI's example.
The validation decoder sets both paddings to 0: its buffers grow to what its images need.

Exactly once: the reader pads its last batch (``pad_last_batch=True``, repeating the last
record) and :class:`DaliLoader` drives the pipeline itself (``schedule_run`` /
``share_outputs``, DLPack into torch as ``DALIGenericIterator`` does): it schedules exactly
``len(loader)`` batches per epoch — none past the end, nothing decoded and thrown away — and
trims the padding from the last one, so validation yields every record of the rank's range
once. Training stops after ``(N // world) // batch`` batches, the same count on every rank.

Lifecycle:

- A loader with no randomness (``train=False`` and ``shuffle=False``: validation) keeps one
  pipeline for all its passes. Its reader restarts at the shard's first record after
  :func:`~recordkit.loaders.dali_sizing.reader_batches` batches (the rank's range, padded to the
  largest rank's batch count); a pass that yields fewer batches than that (a rank with fewer
  records, or ``drop_last``) runs and discards the rest at the start of the next pass, so every
  pass yields the same batches.
- A loader with randomness runs one pipeline per epoch, seeded with ``f(seed, epoch, rank)``,
  so an epoch's order and augmentation depend only on ``(seed, epoch, rank)`` — resuming at
  epoch *e* reproduces it — and :meth:`DaliLoader.set_epoch` reshuffles. (One pipeline kept
  across epochs cannot do that: its reader's RNG carries on and cannot be reseeded.) A
  training loader builds and starts epoch *e + 1*'s pipeline on a background thread once the
  last batch of epoch *e* has been taken from its pipeline (the last batch is yielded without
  waiting), unless ``epochs`` says *e + 1* is past the end; the next epoch joins that thread
  (an exception raised there is raised here), and ``set_epoch`` to any other epoch discards it.
  Only the consuming thread reads outputs. :meth:`DaliLoader.close` joins and drops it all.
  With an auto-augment policy (whose graph takes seconds to define) the first pipeline is kept
  serialized and later ones are deserialized with their epoch's seed (:meth:`DaliLoader.
  pipeline`).

DALI's tfrecord reader shuffles through a buffer of ``initial_fill`` records read in file
order, not a full permutation: records should be packed in shuffled order (``recordkit list``
shuffles like im2rec), which makes the buffer shuffle plenty.

A remote split (``s3://``, ``gs://``, ``http(s)://``) is streamed through the bounded shard
cache instead (``docs/REMOTE.md``): the reader is replaced by ``fn.external_source`` (batch
mode) fed by :class:`~recordkit.loaders.streaming.StreamedBatches` in
:class:`~recordkit.loaders.streaming.ShardWindowSampler` order, the rest of the graph is the
same. Such a loader builds one pipeline per pass (validation included), builds epoch *e + 1*'s
ahead but starts it only when epoch *e + 1* begins (so it pins no shards during validation),
and defines an auto-augment graph afresh each time (a serialized graph does not carry the
source). The source's one argument is DALI's iteration number, which DALI checkpoints: a
pipeline restored from :meth:`DaliLoader.state_dict`'s checkpoint asks for the next batch.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import torch

try:
    import nvidia.dali as dali
    import nvidia.dali.fn as fn
    import nvidia.dali.tfrecord as tfrec
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def
    from nvidia.dali.backend import TensorCPU, TensorGPU
    from nvidia.dali.pipeline import Pipeline
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type
except ImportError as exc:  # pragma: no cover - exercised only without DALI
    raise ImportError(
        "the DALI backend needs NVIDIA DALI: pip install recordkit[dali] "
        "(or pip install nvidia-dali-cuda120)"
    ) from exc

from recordkit.dataset import Split, partition
from recordkit.format.example import KEY_ENCODED, KEY_LABEL
from recordkit.loaders.augment import Augment, val_resize_size
from recordkit.loaders.dali_sizing import (
    decoder_memory,
    default_initial_fill,
    pack_image_bound,
    reader_batches,
)
from recordkit.loaders.sampling import batches_per_rank, epoch_seed
from recordkit.safeio import open_regular

if TYPE_CHECKING:
    from recordkit.loaders.streaming import StreamedBatches

__all__ = [
    "MIN_DALI",
    "DaliLoader",
    "build_pipeline",
    "check_dali_version",
    "auto_augment_graph",
    "decode_augment",
    "decoder_kwargs",
    "pad_crop_graph",
    "pack_image_bound",
    "reader_batches",
]

log = logging.getLogger(__name__)

# The first release with everything used here: ``Pipeline(exec_dynamic=…)`` and its property
# (NVIDIA/DALI#5704), ``__dlpack__`` on pipeline outputs for zero-copy ``torch.from_dlpack``
# (#5684, #5699): DALI 1.44.0's release notes. The rest (readers.tfrecord with
# pad_last_batch/stick_to_shard, decoders.image_random_crop with hw_decoder_load and
# preallocate_*_hint, resize(antialias=…) from 1.16, fn.pad, schedule_run/share_outputs/
# release_outputs) is older.
MIN_DALI = (1, 44)


def check_dali_version(
    version: str, *, has_dlpack: bool = True, has_exec_dynamic: bool = True
) -> None:
    """Raise ``ImportError`` unless DALI ``version`` is at least :data:`MIN_DALI`.

    Args:
        version: ``nvidia.dali.__version__`` (``"1.44.0"``, ``"2.4.0"``, ``"1.45.0.dev…"``).
        has_dlpack: Whether DALI tensors implement ``__dlpack__``.
        has_exec_dynamic: Whether ``Pipeline`` has the ``exec_dynamic`` property.

    Raises:
        ImportError: Older, unparsable, or lacking one of those features; the message names
            the version needed and the ``pip install`` that fixes it.
    """
    m = re.match(r"\s*(\d+)\.(\d+)", version)
    found = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    if found < MIN_DALI or not (has_dlpack and has_exec_dynamic):
        need = ".".join(map(str, MIN_DALI))
        raise ImportError(
            f"the DALI backend needs NVIDIA DALI >= {need} (pipeline outputs shared through "
            f"DLPack, exec_dynamic); found {version}: pip install -U 'nvidia-dali-cuda120>={need}'"
        )


check_dali_version(
    getattr(dali, "__version__", "0"),
    has_dlpack=hasattr(TensorCPU, "__dlpack__") and hasattr(TensorGPU, "__dlpack__"),
    has_exec_dynamic=hasattr(Pipeline, "exec_dynamic"),
)

READER_NAME = "Reader"

_DALI_DTYPES = {torch.float16: types.FLOAT16, torch.float32: types.FLOAT}


def decoder_kwargs(
    *, train: bool, gpu: bool, max_image: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Keyword arguments of the pipeline's image decoder: device, RGB output and
    :func:`~recordkit.loaders.dali_sizing.decoder_memory` (padding only the training decoder,
    sized from ``max_image``)."""
    return {
        "device": "mixed" if gpu else "cpu",
        "output_type": types.RGB,
        **decoder_memory(train=train, gpu=gpu, max_image=max_image),
    }


def decode_augment(
    jpegs: Any,
    *,
    train: bool,
    augment: Augment,
    image_size: int,
    gpu: bool,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    max_image: tuple[int, int] | None = None,
) -> Any:
    """The decode + augment part of the pipeline graph (call inside a pipeline definition).

    Shared by :func:`build_pipeline` and ``tools/bench_loader.py``'s ``fn.readers.file``
    pipeline, so that both run exactly the same operators. ``max_image`` sizes the training
    decoder's GPU buffers (:func:`decoder_kwargs`).
    """
    dec_kw = decoder_kwargs(train=train, gpu=gpu, max_image=max_image)
    mirror: Any = 0
    if train and augment.mode != "rrc":
        # pad-crop / none: the validation geometry first (as the torch backend's TrainDecode)
        images = fn.decoders.image(jpegs, **dec_kw)
        short = val_resize_size(image_size, augment.val_resize_ratio)
        images = fn.resize(
            images, resize_shorter=short, interp_type=types.INTERP_LINEAR, antialias=True
        )
        images = fn.crop(images, crop=(image_size, image_size))
        if augment.mode == "pad-crop":
            images = pad_crop_graph(images, augment.pad, image_size)
            mirror = fn.random.coin_flip(probability=augment.flip) if augment.flip > 0 else 0
    elif train:
        images = fn.decoders.image_random_crop(
            jpegs,
            random_area=list(augment.scale),
            random_aspect_ratio=list(augment.ratio),
            num_attempts=100,
            **dec_kw,
        )
        # INTERP_LINEAR + antialias is what DALI's ResNet-50 example's INTERP_TRIANGULAR
        # (deprecated) stands for; antialias=False is the cheaper, aliasing variant.
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
    if train and augment.auto_augment is not None:
        # crop -> flip -> policy, the torch backend's order: mirror before the policy
        if not isinstance(mirror, int):
            images = fn.flip(images, horizontal=mirror)
            mirror = 0
        images = auto_augment_graph(images, augment, image_size)
    return fn.crop_mirror_normalize(
        images,
        dtype=_DALI_DTYPES.get(dtype, types.FLOAT),
        output_layout="HWC" if channels_last else "CHW",
        crop=(image_size, image_size),
        mean=list(augment.mean255),
        std=list(augment.std255),
        mirror=mirror,
    )


def pad_crop_graph(images: Any, pad: int, image_size: int, offsets: Any = None) -> Any:
    """Pad-crop of ``image_size`` square HWC images (call inside a pipeline definition).

    Output pixel ``(y, x)`` is input pixel ``(y + dy, x + dx)``, zero outside the image: a
    ``fn.slice`` starting at ``(dy, dx)`` with ``out_of_bounds_policy="pad"``, i.e. a crop of
    the image zero-padded by ``pad`` at ``(pad + dy, pad + dx)`` -- the torch backend's
    :func:`~recordkit.loaders.decode.pad_crop`.

    Args:
        images: uint8 HWC images of ``image_size`` x ``image_size``.
        pad: Largest shift; ``dx``, ``dy`` are uniform in ``-pad .. pad``.
        image_size: Output side.
        offsets: Per-sample int32 ``(dy, dx)`` to use instead of random ones (tests).

    Returns:
        The shifted images.
    """
    if offsets is None:
        offsets = fn.random.uniform(
            values=[float(v) for v in range(-pad, pad + 1)], shape=(2,), dtype=types.INT32
        )
    return fn.slice(
        images,
        offsets,
        fn.constant(idata=[image_size, image_size], dtype=types.INT32),
        axes=[0, 1],
        out_of_bounds_policy="pad",
        fill_values=0,
    )


def auto_augment_graph(images: Any, augment: Augment, image_size: int) -> Any:
    """``augment.auto_augment`` with ``nvidia.dali.auto_aug`` on uint8 ``image_size`` HWC crops
    (inside a pipeline built with ``enable_conditionals=True``): ``auto_augment`` (ImageNet
    policy), ``rand_augment(n=ra_n, m=ra_m)`` or ``trivial_augment_wide``, translations relative
    to the crop, fill 128. Runs on CPU and GPU (DALI 2.4; checked on the CPU)."""
    from nvidia.dali.auto_aug import auto_augment, rand_augment, trivial_augment

    shape = (image_size, image_size)
    kind = augment.auto_augment
    if kind == "autoaugment":
        return auto_augment.auto_augment(images, shape=shape, fill_value=128)
    if kind == "randaugment":
        return rand_augment.rand_augment(
            images, n=augment.ra_n, m=augment.ra_m, shape=shape, fill_value=128
        )
    return trivial_augment.trivial_augment_wide(images, shape=shape, fill_value=128)


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
    max_image: tuple[int, int] | None = None,
    checkpointing: bool = False,
    checkpoint: bytes | None = None,
    source: Callable[[int], Any] | None = None,
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
        max_image: ``(long, short)`` side of the largest stored image, for the training
            decoder's GPU buffers (:func:`decoder_kwargs`); None: DALI's ImageNet values.
        checkpointing: Track the reader's and the random operators' state so that
            ``Pipeline.checkpoint()`` can save it (DALI's pipeline checkpointing).
        checkpoint: A ``Pipeline.checkpoint()`` of a pipeline built with the same arguments:
            the new pipeline goes on exactly where that one was (implies ``checkpointing``).
        source: Instead of ``fn.readers.tfrecord`` over ``files``: an ``fn.external_source``
            (batch mode) calling ``source(iteration)`` for ``(encoded images, labels)``, lists
            of 1-D uint8 and int64 arrays (a remote split streamed through the shard cache,
            :class:`~recordkit.loaders.streaming.StreamedBatches`); ``files``, ``index_files``,
            ``shard_id``, ``num_shards``, ``shuffle`` and ``initial_fill`` are then unused. DALI
            checkpoints record the iteration, so a restored pipeline asks for the next batch.

    Returns:
        The pipeline, with outputs ``(images, labels)``; labels are int64 ``(B, L)`` padded with
        -1 to the batch's longest label list.
    """
    gpu = device_id is not None

    def _tfrecord_input() -> tuple[Any, Any]:
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
        return inputs[KEY_ENCODED], inputs[KEY_LABEL]

    @pipeline_def
    def _pipe() -> tuple[Any, Any]:
        if source is not None:
            jpegs, labels = fn.external_source(
                source=source,
                num_outputs=2,
                batch=True,
                dtype=[types.UINT8, types.INT64],
                ndim=[1, 1],
            )
        else:
            jpegs, labels = _tfrecord_input()
        images = decode_augment(
            jpegs,
            train=train,
            augment=augment,
            image_size=image_size,
            gpu=gpu,
            dtype=dtype,
            channels_last=channels_last,
            max_image=max_image,
        )
        labels = fn.pad(labels, fill_value=-1)
        if gpu:
            labels = labels.gpu()
        return images, labels

    pipe = _pipe(
        enable_conditionals=train and augment.auto_augment is not None,
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed,
        prefetch_queue_depth=prefetch,
        enable_checkpointing=checkpointing or checkpoint is not None,
        checkpoint=checkpoint,
    )
    pipe.build()
    return pipe


def _outputs_to_torch(pipe: Pipeline, device_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The next batch's ``(images, labels)`` as torch tensors, as DALIGenericIterator does it.

    With DALI's dynamic executor (the default) every iteration gets fresh output buffers, so
    the tensors are shared zero-copy through DLPack; otherwise they are copied out before the
    buffers go back to DALI.
    """
    outs = pipe.share_outputs()
    device = torch.device("cpu") if device_id is None else torch.device("cuda", device_id)
    result = []
    for out in outs:
        t = out.as_tensor()
        gpu = isinstance(t, TensorGPU)
        dev = device if gpu else torch.device("cpu")
        if pipe.exec_dynamic:
            with dev:
                result.append(torch.from_dlpack(t))
            continue
        x = torch.empty(t.shape(), dtype=to_torch_type[t.dtype], device=dev)
        if gpu:
            feed_ndarray(t, x, cuda_stream=torch.cuda.current_stream(device=dev))
        else:
            feed_ndarray(t, x)
        result.append(x)
    del outs
    pipe.release_outputs()
    return result[0], result[1]


class DaliLoader:
    """Batches ``(images, labels)`` from a split with DALI; built by ``make_loader``.

    Images are normalized ``(B, 3, S, S)`` tensors in ``dtype`` (channels-last memory format when
    asked), on the pipeline's device; labels int64 ``(B,)`` (first label) or ``(B, L)`` padded
    with -1 when ``multi_label``. See the module docstring for the pipeline lifecycle; call
    :meth:`close` when done (or use the loader as a context manager).
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
        epochs: int | None = None,
        max_image: tuple[int, int] | None = None,
        stream: StreamedBatches | None = None,
    ) -> None:
        if len(split) < world_size:
            raise ValueError(
                f"split {split.name!r} has {len(split)} records, fewer than the {world_size} "
                "ranks; DALI's reader needs at least one per rank (use backend='torch')"
            )
        if epochs is not None and epochs < 0:
            raise ValueError(f"epochs must be >= 0 or None, got {epochs}")
        # DALI's reader opens the files itself, blocking: a FIFO named as a shard would hang
        # it. Refuse anything but regular files here, in one line (recordkit.safeio).
        if stream is None:
            for path in [*split.files, *(r.index_path for r in split.readers)]:
                os.close(open_regular(path, what="shard file"))
        # A remote split: fn.external_source reads the batches through the shard cache.
        self.stream = stream
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
        self.epochs = epochs
        self.max_image = max_image
        part = len(partition(len(split), rank, world_size))
        self.initial_fill = initial_fill or default_initial_fill(part, batch_size)
        self.epoch = 0
        self._start_batch = 0  # the batch the next pass starts at (set_epoch)
        self._yielded = 0  # batches the current pass has yielded
        self._restore: tuple[int, int, bytes] | None = None  # (epoch, batch, DALI checkpoint)
        self._live: Pipeline | None = None  # the pipeline of the pass in progress
        # No randomness: one pipeline serves every pass (its reader restarts at the shard's
        # start after reader_batches(); see __iter__). A streamed split builds one per pass.
        self.reuse = not train and not shuffle and stream is None
        self._kept: Pipeline | None = None
        self._kept_lead = 0  # padding batches of the previous pass still in the reader
        self._ahead: _Ahead | None = None
        # (serialized graph, Pipeline arguments) of an auto-augment pipeline; see pipeline()
        self._serialized: tuple[str, dict[str, Any]] | None = None
        self._executor: ThreadPoolExecutor | None = None
        if device.type == "cuda":
            if device.index is None:
                from recordkit.loaders.factory import resolve_device

                device = self.device = resolve_device(device)
            self.device_id: int | None = device.index
        else:
            self.device_id = None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch; its order and augmentation are a function of (seed, epoch, rank).

        Args:
            epoch: The epoch.
            start_batch: Begin at this batch of the epoch. Without a pipeline state from
                :meth:`state_dict` (see :meth:`load_state_dict`) the pipeline runs the skipped
                batches and drops them: exact, but it decodes them.

        Raises:
            ValueError: ``start_batch`` is not in ``[0, len(self)]``.
        """
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in [0, {len(self)}], got {start_batch}")
        self.epoch = epoch
        self._start_batch = start_batch
        self._yielded = 0
        self._restore = None

    def state_dict(self) -> dict[str, Any]:
        """Where the current pass is: ``{"epoch", "batch"}`` (batches of the epoch consumed,
        skipped ones included) and, mid-epoch, ``"dali"``: the pipeline's own checkpoint
        (DALI's ``Pipeline.checkpoint()``, reader position and random generators, as a uint8
        tensor) taken after the last batch this loader yielded."""
        state: dict[str, Any] = {"epoch": self.epoch, "batch": self._start_batch + self._yielded}
        if self._live is not None:
            cpt = self._live.checkpoint()
            state["dali"] = torch.frombuffer(bytearray(cpt), dtype=torch.uint8)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a :meth:`state_dict` of a loader built with the same arguments: the next
        pass starts at ``state["batch"]`` of ``state["epoch"]``. With its ``"dali"`` entry the
        pipeline is rebuilt from that checkpoint, so DALI skips the consumed records in its
        reader without reading or decoding them and the random operators go on where they
        were: the rest of the epoch is exactly that of an uninterrupted run."""
        self.set_epoch(int(state["epoch"]), int(state.get("batch", 0)))
        cpt = state.get("dali")
        if cpt is not None and self._start_batch > 0:
            raw = bytes(torch.as_tensor(cpt, dtype=torch.uint8).numpy().tobytes())
            self._restore = (self.epoch, self._start_batch, raw)

    def __len__(self) -> int:
        return batches_per_rank(
            len(self.split), self.rank, self.world_size, self.batch_size, self.drop_last
        )

    def pipeline(
        self, epoch: int | None = None, *, depth: int | None = None, checkpoint: bytes | None = None
    ) -> Pipeline:
        """A freshly built pipeline for ``epoch`` (default: the current epoch).

        Pipelines with randomness track their state (DALI checkpointing, which its docs say
        costs nothing measurable) so that :meth:`state_dict` can save it; ``checkpoint``
        restores one. ``depth``: the prefetch queue depth (default :attr:`_depth`).

        With an auto-augment policy, defining the graph costs seconds (AutoGraph traces the
        policy's conditionals in Python: 11-23 s on a loaded 2-core box), so the first
        pipeline is serialized and later epochs deserialize it with their own seed (~0.4 s):
        the same operators, and the same batches as a fresh build with that seed (tested).
        A restore from a checkpoint or another queue depth always defines the graph afresh.
        """
        epoch = self.epoch if epoch is None else epoch
        seed = epoch_seed(self.seed, epoch, 1 + self.rank)
        # (a streamed split's external_source callable does not survive serialization)
        plain = (
            checkpoint is None and (depth is None or depth == self._depth) and self.stream is None
        )
        cached = self._serialized
        if cached is not None and plain:
            graph, flags = cached
            return Pipeline.deserialize(serialized_pipeline=graph, seed=seed, **flags)
        pipe = self._define(seed, epoch, depth=depth, checkpoint=checkpoint)
        if plain and self.train and self.augment.auto_augment is not None:
            flags = {
                "batch_size": self.batch_size,
                "num_threads": self.num_threads,
                "device_id": self.device_id,
                "prefetch_queue_depth": self._depth,
                "exec_pipelined": pipe.exec_pipelined,
                "exec_async": pipe.exec_async,
                "exec_dynamic": pipe.exec_dynamic,
                "enable_checkpointing": not self.reuse,
            }
            self._serialized = (pipe.serialize(), flags)
        return pipe

    def _define(
        self,
        seed: int,
        epoch: int,
        *,
        depth: int | None = None,
        checkpoint: bytes | None = None,
    ) -> Pipeline:
        """Define and build ``epoch``'s pipeline with ``seed`` (:func:`build_pipeline`)."""
        stream = self.stream
        return build_pipeline(
            [] if stream else [str(p) for p in self.split.files],
            [] if stream else [str(r.index_path) for r in self.split.readers],
            batch_size=self.batch_size,
            image_size=self.image_size,
            train=self.train,
            augment=self.augment,
            shard_id=self.rank,
            num_shards=self.world_size,
            shuffle=self.shuffle,
            seed=seed,
            num_threads=self.num_threads,
            device_id=self.device_id,
            dtype=self.dtype,
            channels_last=self.channels_last,
            prefetch=self._depth if depth is None else depth,
            initial_fill=self.initial_fill,
            max_image=self.max_image,
            checkpointing=not self.reuse,
            checkpoint=checkpoint,
            source=stream.source(epoch) if stream else None,
        )

    @property
    def _depth(self) -> int:
        """Queue depth: ``prefetch``, but no deeper than the epoch (so no batch past its end)."""
        return max(1, min(self.prefetch, len(self)))

    def _start(
        self,
        epoch: int,
        *,
        depth: int | None = None,
        checkpoint: bytes | None = None,
        run: bool = True,
    ) -> Pipeline:
        """Build ``epoch``'s pipeline and (``run``) start its first ``depth`` batches."""
        pipe = self.pipeline(epoch, depth=depth, checkpoint=checkpoint)
        if run:
            pipe.schedule_run()  # the first call runs prefetch_queue_depth iterations
        return pipe

    def _prepare_ahead(self, epoch: int) -> None:
        """Build and start ``epoch``'s pipeline on the background thread, unless past the end.

        A streamed split's pipeline is built but not started: its first batches would
        download the epoch's first window of shards into the cache now, while the validation
        that usually comes between the epochs streams its own shards through the same
        limited cache (:meth:`_acquire` starts it)."""
        if self.epochs is not None and epoch >= self.epochs:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="recordkit-dali-build")
        run = self.stream is None
        self._ahead = _Ahead(epoch, self._executor.submit(self._start, epoch, run=run))

    def _take_ahead(self, epoch: int) -> Pipeline | None:
        """The pipeline started ahead for ``epoch``, else None; joins the builder thread.

        One started for another epoch is waited for and dropped. Raises what the build raised.
        """
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        pipe = ahead.future.result()  # joins; re-raises the builder thread's exception
        if ahead.epoch == epoch:
            return pipe
        del pipe  # set_epoch jumped (or the same epoch again): not the pipeline wanted
        return None

    def close(self) -> None:
        """Join the background build, drop every pipeline and stop the builder thread.

        The loader stays usable (the next pass builds again). A background build that failed is
        logged here, since no epoch will raise it any more.
        """
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            exc = ahead.future.exception()  # waits
            if exc is not None:
                log.warning(
                    "DALI pipeline for epoch %d failed to build in the background",
                    ahead.epoch,
                    exc_info=exc,
                )
        self._kept = None
        self._kept_lead = 0
        self._live = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self.stream is not None:
            self.stream.close()  # the feeder's pins go; the next pass starts it again

    def __enter__(self) -> DaliLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _acquire(self, epoch: int, n: int) -> tuple[Pipeline, int, int]:
        """The pipeline for this pass: ``(pipeline, batches to discard first, scheduled)``.

        ``n``: the batches this pass yields (the epoch's, less ``start_batch``).
        """
        start = self._start_batch
        if start:
            self._take_ahead(-1)  # one built ahead begins at batch 0: not this pass's
            self._kept = None
            restore, self._restore = self._restore, None
            if restore is not None and restore[:2] == (epoch, start):
                depth = max(1, min(self.prefetch, n))
                return self._start(epoch, depth=depth, checkpoint=restore[2]), 0, depth
            log.info(
                "DALI: no pipeline state for epoch %d at batch %d; running and dropping the "
                "%d batches before it",
                epoch,
                start,
                start,
            )
            pipe = self._start(epoch)
            if self.reuse:
                self._kept = pipe
            return pipe, start, self._depth
        pipe = self._take_ahead(epoch)
        if pipe is not None:
            if self.stream is not None:
                pipe.schedule_run()  # built ahead, not started (_prepare_ahead)
            return pipe, 0, self._depth
        if not self.reuse:
            return self._start(epoch), 0, self._depth
        if self._kept is None:
            self._kept = self._start(epoch)
            return self._kept, 0, self._depth
        # Another pass over the kept pipeline: first the padding batches left of the last one.
        lead = self._kept_lead
        scheduled = min(self._depth, lead + n)
        for _ in range(scheduled):
            self._kept.schedule_run()
        return self._kept, lead, scheduled

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._yielded = 0
        n = len(self)
        if n - self._start_batch <= 0:  # drop_last with fewer records than one batch, or
            return  # a resume after the epoch's last batch
        epoch = self.epoch
        pipe, lead, scheduled = self._acquire(epoch, n - self._start_batch)
        kept = pipe is self._kept
        if kept:
            self._kept = None  # given back below only if this pass leaves it at a known place
        total = lead + n - self._start_batch
        # The reader pads the rank's last batch with copies of its last record
        # (pad_last_batch); they are trimmed here, as DALIGenericIterator's PARTIAL policy does.
        part = len(partition(len(self.split), self.rank, self.world_size))
        last = self.batch_size if self.drop_last else part - (n - 1) * self.batch_size
        try:
            for i in range(total):
                images, labels = _outputs_to_torch(pipe, self.device_id)
                if scheduled < total:  # keep the queue full, but run no batch past the pass
                    pipe.schedule_run()
                    scheduled += 1
                if i < lead:  # padding batches the previous pass left in the kept reader
                    continue
                if i == total - 1:
                    if kept:
                        # Nothing in flight; the reader is reader_batches() - n batches short
                        # of the shard's start: the next pass discards those first.
                        self._kept = pipe
                        self._kept_lead = (
                            reader_batches(len(self.split), self.world_size, self.batch_size) - n
                        )
                    pipe = self._live = None  # nothing in flight: it goes without waiting
                    if self.train:
                        # Epoch e + 1 starts building now, on the background thread, seeded
                        # exactly as a later build would be (so the epoch is the same whether
                        # reached sequentially or by resuming); this batch does not wait.
                        self._prepare_ahead(epoch + 1)
                    if last < self.batch_size:
                        images, labels = images[:last], labels[:last]
                if self.channels_last:
                    images = images.permute(0, 3, 1, 2)  # NHWC storage = channels_last NCHW
                if images.dtype != self.dtype:
                    images = images.to(self.dtype)
                if labels.dtype != torch.int64:
                    labels = labels.to(torch.int64)
                if not self.multi_label:
                    labels = labels[:, 0].contiguous()
                self._live = pipe  # state_dict() checkpoints it until the next batch
                self._yielded += 1
                yield images, labels
        finally:
            self._live = None
            del pipe

    def __repr__(self) -> str:
        return (
            f"DaliLoader(split={self.split.name!r}, batches={len(self)}, "
            f"batch_size={self.batch_size}, rank={self.rank}/{self.world_size})"
        )


class _Ahead:
    """A pipeline being built and started for ``epoch`` on the loader's builder thread."""

    __slots__ = ("epoch", "future")

    def __init__(self, epoch: int, future: Future[Pipeline]) -> None:
        self.epoch = epoch
        self.future = future
