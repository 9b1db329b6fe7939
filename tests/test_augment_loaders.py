"""Training augmentation on both loader backends, checked on pixels: pad-crop is a shifted copy
with zero borders (the same geometry on DALI and torch for a fixed shift), ``none`` is the
validation transform, auto-augment changes pixels and keeps shape and dtype."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_shards
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from recordkit import Record
from recordkit.loaders import Augment, make_loader
from recordkit.loaders.augment import pad_crop_offsets
from recordkit.loaders.decode import TrainDecode, ValDecode, pad_crop

S = 16
PAD = 3
MEAN = torch.tensor(Augment().mean255).view(3, 1, 1)
STD = torch.tensor(Augment().std255).view(3, 1, 1)


def _pattern(i: int) -> np.ndarray:
    """An ``S x S`` RGB image whose pixels say where they are: R = 10 + 14 x, G = 10 + 14 y,
    B = 40 + 15 i (i < 14); no pixel is 0, so zero padding is always recognisable."""
    y, x = np.mgrid[0:S, 0:S]
    b = np.full((S, S), 40 + 15 * i)
    return np.stack([10 + 14 * x, 10 + 14 * y, b], axis=-1).astype(np.uint8)


def _record(i: int) -> Record:
    buf = io.BytesIO()
    Image.fromarray(_pattern(i)).save(buf, "PNG")
    return Record(
        image=buf.getvalue(),
        labels=(i % 3,),
        filename=f"c{i % 3}/{i}.png",
        index=i,
        format="png",
        height=S,
        width=S,
        channels=3,
    )


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("aug_loader_shards")
    recs = [_record(i) for i in range(12)]
    return write_shards(root, {"train": recs, "val": recs[:4]}, records_per_shard=6)


def _shifted(img: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """The reference: zero-pad by PAD (torchvision) and crop at (PAD + dy, PAD + dx)."""
    padded = TF.pad(img, [PAD], fill=0)
    return padded[:, PAD + dy : PAD + dy + img.shape[1], PAD + dx : PAD + dx + img.shape[2]]


def _find_shift(out: torch.Tensor, img: torch.Tensor) -> tuple[int, int, bool]:
    """The ``(dx, dy, flipped)`` that makes ``out`` from ``img``; fails if none does."""
    for flipped in (False, True):
        for dy in range(-PAD, PAD + 1):
            for dx in range(-PAD, PAD + 1):
                ref = _shifted(img, dx, dy)
                if torch.equal(out, ref.flip(-1) if flipped else ref):
                    return dx, dy, flipped
    raise AssertionError("the output is no pad-crop of the input")


def test_pad_crop_is_the_padded_image_cropped() -> None:
    img = torch.from_numpy(_pattern(0)).permute(2, 0, 1)
    for dx in range(-PAD, PAD + 1):
        for dy in range(-PAD, PAD + 1):
            out = pad_crop(img, dx, dy)
            assert torch.equal(out, _shifted(img, dx, dy))
    out = pad_crop(img, 2, -1)  # out[y, x] = img[y - 1, x + 2]; row 0 and the last 2 columns 0
    assert (out[:, 0] == 0).all() and (out[:, :, -2:] == 0).all()
    assert torch.equal(out[:, 1:, : S - 2], img[:, : S - 1, 2:])


def test_train_decode_pad_crop_draws_its_shift_and_flip_from_the_seed(shards: Path) -> None:
    rec = _record(5)
    img = torch.from_numpy(_pattern(5)).permute(2, 0, 1)
    aug = Augment(mode="pad-crop", pad=PAD, val_resize_ratio=1.0)
    decode = TrainDecode(S, aug)
    flips = set()
    for seed in range(30):
        rng = random.Random(seed)
        dx, dy = pad_crop_offsets(PAD, rng)
        flip = rng.random() < 0.5
        expected = _shifted(img, dx, dy)
        expected = expected.flip(-1) if flip else expected
        out = decode(rec, seed)
        assert out.dtype == torch.uint8 and torch.equal(out, expected), seed
        flips.add(flip)
    assert flips == {False, True}


def test_mode_none_is_the_validation_transform_without_flip() -> None:
    rec = _record(2)
    aug = Augment(mode="none", val_resize_ratio=1.0)
    expected = ValDecode(S, aug)(rec)
    assert torch.equal(expected, torch.from_numpy(_pattern(2)).permute(2, 0, 1))
    for seed in range(10):
        assert torch.equal(TrainDecode(S, aug)(rec, seed), expected)


@pytest.mark.parametrize("kind", ["autoaugment", "randaugment", "trivialaugment"])
def test_torch_auto_augment_changes_pixels_reproducibly(kind: str) -> None:
    rec = _record(7)
    plain = TrainDecode(S, Augment(mode="none", val_resize_ratio=1.0))(rec, 0)
    aug = Augment(mode="none", val_resize_ratio=1.0, auto_augment=kind, ra_n=2, ra_m=15)
    decode = TrainDecode(S, aug)
    outs = [decode(rec, seed) for seed in range(12)]
    for out in outs:
        assert out.shape == (3, S, S) and out.dtype == torch.uint8
    changed = sum(not torch.equal(o, plain) for o in outs)
    assert changed >= 6, changed  # AutoAugment may pick no-ops for some samples
    assert torch.equal(decode(rec, 3), outs[3])  # the same seed, the same sample
    assert len({o.numpy().tobytes() for o in outs}) > 3


@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=pytest.mark.dali)])
def test_pad_crop_batches_are_shifted_records_with_zero_borders(shards: Path, backend: str) -> None:
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    aug = Augment(mode="pad-crop", pad=PAD, val_resize_ratio=1.0)
    ld = make_loader(
        shards, "train", batch_size=4, image_size=S, backend=backend, augment=aug,
        num_workers=0 if backend == "torch" else 1, drop_last=False, seed=1,
    )  # fmt: skip
    shifts, flips = set(), set()
    for images, labels in ld:
        pix = (images * STD + MEAN).round().clamp(0, 255).to(torch.uint8)
        for out, label in zip(pix, labels, strict=True):
            blue = int(out[2].max())  # names the record: 40 + 15 i
            i = (blue - 40) // 15
            assert i % 3 == int(label)
            img = torch.from_numpy(_pattern(i)).permute(2, 0, 1)
            dx, dy, flipped = _find_shift(out, img)
            shifts.add((dx, dy))
            flips.add(flipped)
    assert len(shifts) > 4 and flips == {False, True}


@pytest.mark.dali
def test_dali_and_torch_pad_crop_agree_for_a_fixed_shift() -> None:
    pytest.importorskip("nvidia.dali")
    import nvidia.dali.fn as fn
    from nvidia.dali import pipeline_def

    from recordkit.loaders.dali import pad_crop_graph

    imgs = [_pattern(i) for i in range(4)]
    shifts = [(-3, 2), (0, 0), (3, -3), (1, -2)]  # (dx, dy)
    offsets = [np.array([dy, dx], dtype=np.int32) for dx, dy in shifts]

    @pipeline_def(batch_size=4, num_threads=1, device_id=None)
    def pipe():  # type: ignore[no-untyped-def]
        x = fn.external_source(source=lambda: imgs, batch=True, layout="HWC")
        o = fn.external_source(source=lambda: offsets, batch=True)
        return pad_crop_graph(x, PAD, S, offsets=o)

    p = pipe()
    p.build()
    (out,) = p.run()
    for k, (dx, dy) in enumerate(shifts):
        got = torch.from_numpy(np.array(out[k])).permute(2, 0, 1)
        ref = pad_crop(torch.from_numpy(imgs[k]).permute(2, 0, 1), dx, dy)
        assert torch.equal(got, ref), (dx, dy)


@pytest.mark.dali
@pytest.mark.parametrize("kind", ["autoaugment", "randaugment", "trivialaugment"])
def test_dali_auto_augment_runs_on_the_cpu_and_changes_pixels(shards: Path, kind: str) -> None:
    pytest.importorskip("nvidia.dali")
    common = {"batch_size": 6, "image_size": S, "backend": "dali", "num_workers": 1, "seed": 4}
    base = Augment(mode="none", val_resize_ratio=1.0)
    plain = next(iter(make_loader(shards, "train", augment=base, **common)))
    aug = Augment(mode="none", val_resize_ratio=1.0, auto_augment=kind, ra_m=15)
    images, labels = next(iter(make_loader(shards, "train", augment=aug, **common)))
    assert images.shape == plain[0].shape and images.dtype == plain[0].dtype
    assert torch.isfinite(images).all()
    # mode none + no shuffle difference: the same records in the same order, other pixels
    assert torch.equal(labels, plain[1])
    changed = sum(not torch.allclose(a, b) for a, b in zip(images, plain[0], strict=True))
    assert changed >= 3, changed


def test_gpu_decode_routes_non_rrc_training_to_the_cpu(shards: Path) -> None:
    from recordkit.loaders.decode import EncodedDecode

    rec = _record(4)
    aug = Augment(mode="pad-crop", pad=PAD, val_resize_ratio=1.0)
    sample = EncodedDecode(S, aug, train=True)(rec, 11)
    assert sample.data is None and torch.equal(sample.pixels, TrainDecode(S, aug)(rec, 11))
