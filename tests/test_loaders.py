"""Loaders, end to end on CPU: pixels, labels, exactly-once over ranks, epochs, dtype/layout.

Every test image is one flat colour that names its record (PNG, so lossless; resizing and
cropping a flat image keep its colour), so a batch can be checked sample by sample against the
records it must contain. DALI cases carry the ``dali`` marker and skip without DALI.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import imagegen
import numpy as np
import pytest
import torch
from conftest import write_shards
from imagegen import photo_array as photo
from PIL import Image

from recordkit import Record
from recordkit.errors import RecordkitError
from recordkit.loaders import Augment, RecordDataset, RecordSampler, make_loader
from recordkit.loaders.sampling import batches_per_rank, rank_indices, resolve_rank_world

MEAN = torch.tensor(Augment().mean255).view(3, 1, 1)
STD = torch.tensor(Augment().std255).view(3, 1, 1)
NUM_VAL = 23  # not a multiple of world x batch for any world in 1..4 with batch 4
NUM_TRAIN = 30
SIZE = 16

BACKENDS = [
    pytest.param("torch", id="torch"),
    pytest.param("dali", id="dali", marks=pytest.mark.dali),
]


def colour(i: int) -> tuple[int, int, int]:
    """Record ``i``'s flat colour: greys for every fifth record (stored as 1-channel PNG)."""
    if i % 5 == 4:
        v = 10 + 6 * i  # never a multiple of 40, so no clash with the RGB colours below
        return (v, v, v)
    return (40 * ((i + 1) // 49 % 7), 40 * ((i + 1) // 7 % 7), 40 * ((i + 1) % 7))


def png_record(i: int, labels: tuple[int, ...] | None = None, fmt: str = "PNG") -> Record:
    h, w = 12 + (i * 7) % 29, 12 + (i * 11) % 31
    c = colour(i)
    img = Image.new("L", (w, h), c[0]) if i % 5 == 4 else Image.new("RGB", (w, h), c)
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return Record(
        image=buf.getvalue(),
        labels=labels if labels is not None else (i % 3,),
        filename=f"class{i % 3}/{i:03d}.png",
        index=i,
        format="png" if fmt == "PNG" else "jpeg",
        height=h,
        width=w,
        channels=1 if img.mode == "L" else 3,
    )


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loader_shards")
    return write_shards(
        root,
        {
            "train": [png_record(i) for i in range(NUM_TRAIN)],
            "val": [png_record(i) for i in range(NUM_VAL)],
        },
        records_per_shard=7,
    )


def need(backend: str) -> None:
    if backend == "dali":
        pytest.importorskip("nvidia.dali")


def loader(path: Path, backend: str, split: str = "val", **kw: object):
    kw.setdefault("batch_size", 4)
    kw.setdefault("image_size", SIZE)
    kw.setdefault("num_workers", 0 if backend == "torch" else 1)
    return make_loader(path, split, backend=backend, **kw)  # type: ignore[arg-type]


def identify(images: torch.Tensor, tol: float = 1.5) -> list[int]:
    """Map each normalized image back to its record by its (flat) colour; check flatness."""
    known = np.array([colour(i) for i in range(max(NUM_TRAIN, NUM_VAL))], dtype=np.float64)
    out = []
    for img in images.float():
        pix = (img * STD + MEAN).numpy()  # (3, S, S) in 0..255
        mean = pix.reshape(3, -1).mean(axis=1)
        k = int(np.argmin(((known - mean) ** 2).sum(axis=1)))
        assert np.abs(pix - known[k][:, None, None]).max() < tol, f"sample is not record {k}"
        out.append(k)
    return out


def collect(ld) -> tuple[list[int], list[int], list[int]]:
    ids: list[int] = []
    labels: list[int] = []
    sizes: list[int] = []
    for images, lab in ld:
        ids += identify(images)
        labels += lab.tolist()
        sizes.append(images.shape[0])
    return ids, labels, sizes


# -- pixels and labels ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_val_batches_hold_the_expected_pixels_and_labels(shards: Path, backend: str) -> None:
    need(backend)
    ld = loader(shards, backend, batch_size=5)
    batches = list(ld)
    assert len(ld) == len(batches) == 5
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    assert images.shape == (NUM_VAL, 3, SIZE, SIZE) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    # The exact expected tensor: the normalized flat colour of record i, in record order.
    expected = torch.stack(
        [
            (torch.tensor(colour(i), dtype=torch.float32).view(3, 1, 1) - MEAN) / STD
            for i in range(NUM_VAL)
        ]
    ).expand(-1, -1, SIZE, SIZE)
    assert torch.allclose(images, expected, atol=0.03), (images - expected).abs().max()
    assert labels.tolist() == [i % 3 for i in range(NUM_VAL)]


@pytest.mark.dali
def test_backends_agree_on_validation(shards: Path) -> None:
    need("dali")
    a = list(loader(shards, "torch", batch_size=8))
    b = list(loader(shards, "dali", batch_size=8))
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(ya, yb)
        assert (xa - xb).abs().max() < 0.03


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_crops_are_whole_records(shards: Path, backend: str) -> None:
    need(backend)
    ids, labels, sizes = collect(loader(shards, backend, "train", drop_last=False))
    assert sorted(ids) == list(range(NUM_TRAIN))
    assert [i % 3 for i in ids] == labels


@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_label_is_padded_with_minus_one(tmp_path: Path, backend: str) -> None:
    need(backend)
    recs = [png_record(i, labels=(i % 3,) if i % 2 else (i % 3, 5, 6)) for i in range(6)]
    root = write_shards(tmp_path, {"val": recs}, records_per_shard=4)
    (images, labels), *_ = list(loader(root, backend, batch_size=6, multi_label=True))
    assert labels.dtype == torch.int64
    assert labels.tolist() == [[i % 3, 5, 6] if i % 2 == 0 else [i % 3, -1, -1] for i in range(6)]
    (_, first), *_ = list(loader(root, backend, batch_size=6))
    assert first.tolist() == [i % 3 for i in range(6)]


# -- exactly once (contract 9) -----------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_validation_is_exactly_once_across_ranks(shards: Path, backend: str, world: int) -> None:
    need(backend)
    seen: list[int] = []
    for rank in range(world):
        ld = loader(shards, backend, rank=rank, world_size=world)
        ids, labels, sizes = collect(ld)
        assert len(sizes) == len(ld), "len() must equal the batches yielded"
        assert all(s == 4 for s in sizes[:-1]) and 0 < sizes[-1] <= 4
        assert labels == [i % 3 for i in ids]
        seen += ids
    assert sorted(seen) == list(range(NUM_VAL)), Counter(seen)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_training_epoch_covers_each_record_once(shards: Path, backend: str, world: int) -> None:
    need(backend)
    union: list[int] = []
    counts = set()
    for rank in range(world):
        ids, _, sizes = collect(
            loader(shards, backend, "train", rank=rank, world_size=world, drop_last=False, seed=3)
        )
        union += ids
        dropped = loader(shards, backend, "train", rank=rank, world_size=world, seed=3)
        d_ids, _, d_sizes = collect(dropped)
        assert len(d_sizes) == len(dropped) == (NUM_TRAIN // world) // 4
        assert all(s == 4 for s in d_sizes) and len(set(d_ids)) == len(d_ids)
        counts.add(len(d_sizes))
    assert sorted(union) == list(range(NUM_TRAIN)), Counter(union)
    assert len(counts) == 1, "every rank must yield the same number of training batches"


@pytest.mark.parametrize("backend", BACKENDS)
def test_set_epoch_reshuffles_and_the_seed_reproduces(shards: Path, backend: str) -> None:
    need(backend)
    ld = loader(shards, backend, "train", batch_size=6, seed=7, drop_last=False)
    e0 = collect(ld)[0]
    assert collect(ld)[0] == e0, "the same epoch again gives the same order"
    ld.set_epoch(1)
    e1 = collect(ld)[0]
    assert sorted(e0) == sorted(e1) and e0 != e1
    again = loader(shards, backend, "train", batch_size=6, seed=7, drop_last=False)
    again.set_epoch(1)
    assert collect(again)[0] == e1
    other = loader(shards, backend, "train", batch_size=6, seed=8, drop_last=False)
    assert collect(other)[0] != e0


@pytest.mark.dali
def test_dali_epochs_are_the_same_sequentially_or_resumed(shards: Path) -> None:
    """The DALI loader starts epoch e + 1 ahead of time; it must equal a resumed epoch e + 1."""
    need("dali")
    kw = {"batch_size": 4, "seed": 5}
    ld = loader(shards, "dali", "train", **kw)
    seq = []
    for e in range(3):
        ld.set_epoch(e)
        seq.append([(x.clone(), y.clone()) for x, y in ld])
    for e in (2, 1):  # resumed runs, and a loader whose epoch jumps back (discarding the ahead)
        fresh = loader(shards, "dali", "train", **kw)
        fresh.set_epoch(e)
        for ld_e in (fresh, ld):
            ld_e.set_epoch(e)
            got = list(ld_e)
            assert len(got) == len(seq[e]) == len(ld)
            for (x, y), (x0, y0) in zip(got, seq[e], strict=True):
                assert torch.equal(x, x0) and torch.equal(y, y0)
    assert ld._ahead is not None  # the pipeline for epoch 2 was started after epoch 1
    ld.close()
    assert ld._ahead is None


# -- dtype, layout, len ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("split", ["train", "val"])
def test_dtype_layout_and_len(shards: Path, backend: str, split: str) -> None:
    need(backend)
    ld = loader(shards, backend, split, batch_size=8, dtype=torch.float16, channels_last=True)
    batches = list(ld)
    n = NUM_TRAIN if split == "train" else NUM_VAL
    assert len(ld) == len(batches) == (n // 8 if split == "train" else -(-n // 8))
    for images, labels in batches:
        assert images.dtype == torch.float16 and images.device.type == "cpu"
        assert images.shape[1:] == (3, SIZE, SIZE)
        assert images.is_contiguous(memory_format=torch.channels_last)
        assert labels.dtype == torch.int64 and labels.shape == (images.shape[0],)
    images, _ = batches[0]
    plain = list(loader(shards, backend, split, batch_size=8))[0][0]
    assert plain.is_contiguous() and plain.dtype == torch.float32
    if split == "val":
        assert (images.float() - plain).abs().max() < 0.02


def test_drop_last_false_for_training_keeps_the_partial_batch(shards: Path) -> None:
    ld = loader(shards, "torch", "train", batch_size=8, drop_last=False)
    sizes = [x.shape[0] for x, _ in ld]
    assert sizes == [8, 8, 8, 6] and len(ld) == 4


def test_gpu_decode_path_runs_on_cpu_and_matches(tmp_path: Path) -> None:
    """The batch-decode path (worker sends JPEG bytes) agrees with per-sample decoding."""
    recs = [png_record(i, fmt="JPEG" if i % 2 else "PNG") for i in range(10)]
    root = write_shards(tmp_path, {"val": recs, "train": recs}, records_per_shard=4)
    for split in ("val", "train"):
        a = list(loader(root, "torch", split, drop_last=False, seed=1))
        b = list(loader(root, "torch", split, drop_last=False, seed=1, gpu_decode=True))
        assert len(a) == len(b)
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(ya, yb) and (xa - xb).abs().max() < 0.05


def _file_record(path: Path, i: int) -> Record:
    """A record of an image file as it is on disk (``pack --pass-through``)."""
    with Image.open(path) as im:
        w, h = im.size
        fmt = im.format.lower()
    return Record(path.read_bytes(), (i % 3,), f"class{i % 3}/{path.name}", i, fmt, h, w)


def _tricky_records(root: Path) -> list[Record]:
    """The inputs nvJPEG cannot take (CMYK, EXIF-rotated, PNG) and those it can (gray,
    progressive, 4:4:4 / 4:2:2 / 4:2:0), as one split."""
    paths = [
        imagegen.make_cmyk_jpeg(root / "cmyk.jpg"),
        imagegen.make_exif_rotated_jpeg(root / "exif6.jpg", 6),
        imagegen.make_png_rgba(root / "rgba.png"),
        imagegen.write_image(root / "gray.jpg", photo(40, 56, 1)[..., 0], "JPEG", 95),
        imagegen.write_image(root / "prog.jpg", photo(44, 60, 2), "JPEG", 95, progressive=True),
    ]
    paths += [
        imagegen.write_image(
            root / f"s{k}.jpg", photo(36 + 4 * k, 52, 3 + k), "JPEG", 95, subsampling=k
        )
        for k in (0, 1, 2)
    ]
    return [_file_record(p, i) for i, p in enumerate(paths)]


@pytest.mark.parametrize("split", ["train", "val"])
def test_gpu_decode_tricky_images_match_the_cpu_path(tmp_path: Path, split: str) -> None:
    """Images nvJPEG cannot take are decoded in the worker exactly as the plain torch path does
    them (same seed, same crop: identical samples); the others agree within the filter
    difference of the batched resize (``recordkit/loaders/crops.py``)."""
    recs = _tricky_records(tmp_path / "img")
    root = write_shards(tmp_path / "shards", {split: recs}, records_per_shard=3)
    kw = {"batch_size": 8, "drop_last": False, "seed": 4, "shuffle": False}
    ((plain, ya),) = list(loader(root, "torch", split, **kw))
    ((gpu, yb),) = list(loader(root, "torch", split, gpu_decode=True, **kw))
    assert torch.equal(ya, yb) and plain.shape == gpu.shape == (8, 3, SIZE, SIZE)
    assert torch.equal(plain[:3], gpu[:3]), "CMYK, EXIF-rotated and PNG must take the CPU path"
    pix_a = (plain[3:] * STD + MEAN).numpy()
    pix_b = (gpu[3:] * STD + MEAN).numpy()
    # Box average (roi_align) vs antialiased triangle filter on these 36-60 px photos at 16 px:
    # measured 46.6-52.0 dB per sample for training crops, 43.3-51.0 dB for validation (mean
    # |diff| 0.5-1.1 levels).
    for a, b in zip(pix_a, pix_b, strict=True):
        assert imagegen.psnr(a, b) > 38, imagegen.psnr(a, b)


def test_gpu_decode_batches_cross_worker_processes_unchanged(tmp_path: Path) -> None:
    """The packed batch (one JPEG byte tensor, one pixel tensor) survives the worker queue."""
    recs = _tricky_records(tmp_path / "img")
    root = write_shards(tmp_path / "shards", {"train": recs}, records_per_shard=3)
    kw = {"batch_size": 4, "drop_last": False, "seed": 9, "gpu_decode": True}
    a = list(loader(root, "torch", "train", num_workers=0, **kw))
    b = list(loader(root, "torch", "train", num_workers=1, **kw))
    assert len(a) == len(b) == 2
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_gpu_decode_applies_exif_orientation(tmp_path: Path) -> None:
    """nvJPEG ignores EXIF orientation; the loader must still return the upright picture."""
    path = imagegen.make_exif_rotated_jpeg(tmp_path / "exif6.jpg", 6)
    root = write_shards(tmp_path / "shards", {"val": [_file_record(path, 0)]})
    ((images, _),) = list(loader(root, "torch", gpu_decode=True))
    pix = (images[0] * STD + MEAN).numpy()  # upright: left red, right green top / blue bottom
    for (r, c), want in {
        (3, 3): imagegen.RED,
        (3, 12): imagegen.GREEN,
        (12, 12): imagegen.BLUE,
        (12, 3): imagegen.RED,
    }.items():
        assert np.abs(pix[:, r, c] - np.array(want)).max() < 40, (r, c, pix[:, r, c])


def test_gpu_decode_truncated_jpeg_gives_the_clean_error(tmp_path: Path) -> None:
    path = imagegen.make_truncated_jpeg(tmp_path / "cut.jpg")
    root = write_shards(tmp_path / "shards", {"val": [png_record(0), _file_record(path, 1)]})
    with pytest.raises(RecordkitError, match="cut.jpg: cannot decode image"):
        list(loader(root, "torch", gpu_decode=True))


def test_gpu_decode_failure_falls_back_per_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch the decoder rejects is decoded image by image; the image that still fails is
    decoded on the CPU in the main process, with a warning naming it."""
    import recordkit.loaders.gpu_decode as gd

    recs = [png_record(i, fmt="JPEG") for i in range(5)]
    poison = recs[2].image
    real = gd.decode_jpeg
    calls: list[int] = []

    def flaky(data: list[torch.Tensor], **kw: object) -> list[torch.Tensor]:
        calls.append(len(data))
        if any(bytes(d.numpy()) == poison for d in data):
            raise RuntimeError("Error while decoding JPEG images: fake nvJPEG failure")
        return real(data, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(gd, "decode_jpeg", flaky)
    root = write_shards(tmp_path, {"val": recs}, records_per_shard=5)
    with caplog.at_level("WARNING", logger="recordkit.loaders.gpu_decode"):
        ((images, labels),) = list(loader(root, "torch", batch_size=5, gpu_decode=True))
    assert calls == [5, 1, 1, 1, 1, 1], "one batched call, then one call per image"
    assert identify(images, tol=3) == [0, 1, 2, 3, 4] and labels.tolist() == [0, 1, 2, 0, 1]
    assert "class2/002.png: GPU JPEG decode failed" in caplog.text
    ((plain, _),) = list(loader(root, "torch", batch_size=5))
    assert torch.equal(images[2], plain[2]), "the fallback is the worker path"


def test_validation_workers_are_not_persistent(shards: Path) -> None:
    """Validation workers exist only while validating; training keeps its workers."""
    val = loader(shards, "torch", "val", num_workers=1)
    train = loader(shards, "torch", "train", num_workers=1)
    assert val.loader.persistent_workers is False
    assert train.loader.persistent_workers is True
    assert loader(shards, "torch", "val", num_workers=1, train=True).loader.persistent_workers


def test_dataloader_iterator_is_created_on_the_loader_device(
    shards: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pin-memory thread pins for the device current when the iterator is created: that
    must be the loader's device (cuda:3 here, faked), not GPU 0."""
    current = [0]
    seen: list[tuple[str, int]] = []

    class FakeDevice:  # stands in for torch.cuda.device
        def __init__(self, device: torch.device) -> None:
            self.index = torch.device(device).index

        def __enter__(self) -> None:
            self.prev, current[0] = current[0], self.index

        def __exit__(self, *exc: object) -> None:
            current[0] = self.prev

    class FakeLoader:
        def __iter__(self) -> FakeLoader:
            seen.append(("iter", current[0]))
            return self

        def __next__(self) -> None:
            seen.append(("next", current[0]))
            raise StopIteration

    monkeypatch.setattr(torch.cuda, "device", FakeDevice)
    ld = loader(shards, "torch")
    ld.device = torch.device("cuda", 3)
    ld.loader = FakeLoader()
    assert list(ld) == []
    assert seen == [("iter", 3), ("next", 3)] and current[0] == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["torch", "torch-gpu-decode", "dali"])
def test_cuda_batches(tmp_path: Path, mode: str) -> None:
    if mode == "dali":
        pytest.importorskip("nvidia.dali")
    recs = [png_record(i, fmt="JPEG") for i in range(12)]
    root = write_shards(tmp_path, {"val": recs}, records_per_shard=5)
    ld = loader(
        root,
        mode.split("-")[0],
        batch_size=5,
        device="cuda",
        dtype=torch.float16,
        channels_last=True,
        gpu_decode=mode.endswith("decode"),
    )
    batches = list(ld)
    assert len(batches) == len(ld) == 3
    for images, labels in batches:
        assert images.is_cuda and labels.is_cuda and images.dtype == torch.float16
    ids = identify(torch.cat([b[0] for b in batches]).cpu(), tol=6)
    assert ids == list(range(12))


# -- the map-style dataset and the sampler ------------------------------------------------


def _sizes(batch: list[tuple[Image.Image, int]]) -> list[tuple[int, int]]:
    return [x.size for x, _ in batch]


def _worker_shapes(ds: RecordDataset, context: str) -> list[tuple[int, int]]:
    dl = torch.utils.data.DataLoader(
        ds, batch_size=4, num_workers=1, multiprocessing_context=context, collate_fn=_sizes
    )
    return [s for batch in dl for s in batch]


def _identity(x: object) -> object:
    return x


def test_record_dataset_bring_your_own_transform(shards: Path) -> None:
    ds = RecordDataset(shards, split="val", transform=lambda im: im.resize((5, 5)))
    assert len(ds) == NUM_VAL and ds.classes == ["class0", "class1", "class2"]
    img, label = ds[4]
    assert img.size == (5, 5) and img.mode == "RGB" and label == 1
    assert img.getpixel((2, 2)) == colour(4)
    plain, _ = RecordDataset(shards, split="val")[0]
    assert plain.size == (12, 12)


def test_record_dataset_works_in_spawned_workers(shards: Path) -> None:
    ds = RecordDataset(shards, split="val", transform=_identity)
    ds[0]  # open the files in the parent first: the descriptors must not travel
    sizes = _worker_shapes(ds, "spawn")
    assert len(sizes) == NUM_VAL and sizes[0] == (12, 12)


@pytest.mark.parametrize("n", [0, 1, 5, 23, 64])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_sampler_partitions_exactly(n: int, world: int) -> None:
    for shuffle in (False, True):
        parts = [rank_indices(n, r, world, shuffle=shuffle, seed=1, epoch=2) for r in range(world)]
        assert sorted(np.concatenate(parts).tolist()) == list(range(n))
        dropped = [
            rank_indices(n, r, world, shuffle=shuffle, seed=1, epoch=2, drop_last=True)
            for r in range(world)
        ]
        assert {len(d) for d in dropped} == {n // world}
        for b in (1, 4):
            counts = {batches_per_rank(n, r, world, b, True) for r in range(world)}
            assert counts == {(n // world) // b}


def test_record_sampler_epochs_and_seeds() -> None:
    s = RecordSampler(50, rank=1, world_size=2, shuffle=True, seed=5)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert e0 != e1 and len(e0) == len(s) == 25
    t = RecordSampler(50, rank=1, world_size=2, shuffle=True, seed=5)
    t.set_epoch(1)
    assert list(t) == e1
    v = RecordSampler(50, rank=1, world_size=2, shuffle=False)
    assert list(v) == list(range(25, 50))
    seeded = list(RecordSampler(10, rank=0, world_size=1, with_seeds=True))
    assert len({seed for _, seed in seeded}) == 10


def test_rank_and_world_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert resolve_rank_world() == (2, 4)
    assert resolve_rank_world(rank=0) == (0, 4)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert resolve_rank_world() == (0, 1)
    with pytest.raises(ValueError, match="rank"):
        resolve_rank_world(3, 2)


def test_make_loader_rejects_bad_arguments(shards: Path) -> None:
    with pytest.raises(ValueError, match="backend"):
        make_loader(shards, "val", 4, backend="mxnet")
    with pytest.raises(KeyError, match="test"):
        make_loader(shards, "test", 4, backend="torch")
    with pytest.raises(ValueError, match="scale"):
        Augment(scale=(0.5, 0.1))


# -- imports ----------------------------------------------------------------------------------


def test_recordkit_import_needs_neither_torch_nor_dali() -> None:
    code = (
        "import sys, recordkit, recordkit.format, recordkit.dataset\n"
        "import recordkit.loaders.sampling, recordkit.loaders.augment\n"
        "bad = [m for m in ('torch', 'nvidia.dali') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "import recordkit.loaders\n"
        "assert 'nvidia.dali' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


def test_missing_dali_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    monkeypatch.delitem(sys.modules, "recordkit.loaders.dali", raising=False)
    with pytest.raises(ImportError, match=r"pip install recordkit\[dali\]"):
        import recordkit.loaders.dali  # noqa: F401
    monkeypatch.delitem(sys.modules, "recordkit.loaders.dali", raising=False)


def test_auto_backend_falls_back_to_torch_without_dali(
    shards: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import recordkit.loaders.factory as factory

    monkeypatch.setattr(factory, "dali_available", lambda: False)
    assert make_loader(shards, "val", 4, image_size=SIZE, backend="auto").backend == "torch"


def test_worker_count_does_not_change_the_batches(shards: Path) -> None:
    """Augmentation is seeded per (seed, epoch, index), not per worker process."""
    kw = {"batch_size": 8, "drop_last": False, "seed": 11}
    a = loader(shards, "torch", "train", num_workers=0, **kw)
    b = loader(shards, "torch", "train", num_workers=2, **kw)
    for ld in (a, b):
        ld.set_epoch(3)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("backend", BACKENDS)
def test_more_ranks_than_records(tmp_path: Path, backend: str) -> None:
    need(backend)
    root = write_shards(tmp_path, {"val": [png_record(i) for i in range(2)]}, records_per_shard=1)
    if backend == "dali":
        with pytest.raises(ValueError, match="fewer than the 3 ranks"):
            loader(root, backend, rank=0, world_size=3)
        return
    seen = []
    for rank in range(3):
        ld = loader(root, backend, rank=rank, world_size=3)
        ids, _, sizes = collect(ld)
        assert len(sizes) == len(ld)
        seen += ids
    assert sorted(seen) == [0, 1]
