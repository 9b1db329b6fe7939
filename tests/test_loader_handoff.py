"""The torch backend's CPU work per image and its uint8 hand-off to the device, on the CPU.

- workers: window (ROI) JPEG decode gives the full decode's pixels; the OpenCV bilinear resize
  agrees with torchvision's; samples stay in HWC memory and are collated as NHWC;
- hand-off: with a CUDA device the uint8 batch is copied (non-blocking, pinned DataLoader) and
  normalized where it lands, in the requested dtype / memory format. No GPU here: CUDA is
  stood in for by a ``Tensor.to`` that records the copy and keeps the tensor on the CPU, so the
  device-side arithmetic runs on the CPU and is compared with the CPU-only path.
"""

from __future__ import annotations

import contextlib
import io
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import write_shards
from imagegen import photo_array
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from recordkit import Record
from recordkit.loaders import Augment, make_loader, roi_decode, torch_loader
from recordkit.loaders.augment import CropBox
from recordkit.loaders.decode import TrainDecode, crop_resize, decode_rgb_bytes
from recordkit.loaders.torch_loader import (
    batch_to_device,
    normalize_device,
    normalize_host,
    stack_samples,
)

MEAN = torch.tensor(Augment().mean255, dtype=torch.float64).view(1, 3, 1, 1)
STD = torch.tensor(Augment().std255, dtype=torch.float64).view(1, 3, 1, 1)


def _jpeg(arr: np.ndarray, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", **kwargs)
    return buf.getvalue()


JPEG_KINDS = {
    "4:2:0 q95": ("RGB", {"quality": 95}),
    "4:4:4": ("RGB", {"quality": 90, "subsampling": 0}),
    "4:2:2": ("RGB", {"quality": 90, "subsampling": 1}),
    "progressive": ("RGB", {"quality": 85, "progressive": True}),
    "grayscale": ("L", {"quality": 90}),
}


@pytest.mark.parametrize("kind", list(JPEG_KINDS))
def test_window_decode_gives_the_full_decodes_pixels(kind: str) -> None:
    if not roi_decode.roi_available():
        pytest.skip("nvImageCodec (installed with DALI) is not available")
    mode, kwargs = JPEG_KINDS[kind]
    rng = random.Random(kind)
    for k in range(4):
        h, w = rng.randint(37, 160), rng.randint(37, 160)
        data = _jpeg(np.asarray(Image.fromarray(photo_array(h, w, k)).convert(mode)), **kwargs)
        header = roi_decode.window_header(data)
        assert header is not None and (header.width, header.height) == (w, h)
        full = decode_rgb_bytes(data).permute(1, 2, 0).numpy()
        for _ in range(6):
            top, left = rng.randrange(h), rng.randrange(w)
            box = CropBox(left, top, rng.randint(1, w - left), rng.randint(1, h - top))
            window = roi_decode.decode_window(data, box)
            assert window is not None and window.shape == (box.height, box.width, 3)
            assert np.array_equal(window, full[top : top + box.height, left : left + box.width])
        rec = Record(image=data, labels=0, width=w, height=h)
        for seed in range(5):
            for aa in (True, False):
                aug = Augment(train_antialias=aa)
                roi = TrainDecode(24, aug, roi_decode=True)(rec, seed)
                plain = TrainDecode(24, aug, roi_decode=False)(rec, seed)
                assert torch.equal(roi, plain), (kind, seed, aa)


def test_images_that_need_opencv_are_not_window_decoded(tmp_path: Path) -> None:
    import imagegen

    cmyk = imagegen.make_cmyk_jpeg(tmp_path / "cmyk.jpg").read_bytes()
    rotated = imagegen.make_exif_rotated_jpeg(tmp_path / "rot.jpg", orientation=6).read_bytes()
    png = imagegen.make_png_rgba(tmp_path / "a.png").read_bytes()
    truncated = imagegen.make_truncated_jpeg(tmp_path / "t.jpg").read_bytes()
    for data in (cmyk, rotated, png, truncated, b"not an image"):
        assert roi_decode.window_header(data) is None
    # ...and they still decode (or fail) exactly as before: same crop for the same seed.
    rec = Record(image=rotated, labels=0)
    a = TrainDecode(16, roi_decode=True)(rec, 3)
    assert torch.equal(a, TrainDecode(16, roi_decode=False)(rec, 3))


def test_bilinear_crop_resize_is_torchvisions_within_one_level_in_hwc_memory() -> None:
    arr = photo_array(180, 240, 1)
    img = torch.from_numpy(arr).permute(2, 0, 1)  # what decode_rgb returns: CHW view of HWC
    rng = random.Random(0)
    for _ in range(12):
        top, left = rng.randrange(120), rng.randrange(160)
        box = CropBox(left, top, rng.randint(8, 240 - left), rng.randint(8, 180 - top))
        for flip in (False, True):
            out = crop_resize(img, box, 64, flip, antialias=False)
            ref = TF.resized_crop(
                img.contiguous(), top, left, box.height, box.width, [64, 64], antialias=False
            )
            ref = ref.flip(-1) if flip else ref
            assert out.shape == (3, 64, 64) and out.permute(1, 2, 0).is_contiguous()
            assert (out.int() - ref.int()).abs().max() <= 1
    # antialiased: torchvision's kernel, unchanged (contiguous CHW out)
    box = CropBox(10, 5, 200, 150)
    out = crop_resize(img, box, 64, False, antialias=True)
    ref = TF.resized_crop(img.contiguous(), 5, 10, 150, 200, [64, 64], antialias=True)
    assert torch.equal(out, ref)


def test_samples_are_collated_in_their_own_layout() -> None:
    hwc = [torch.from_numpy(photo_array(8, 8, k)).permute(2, 0, 1) for k in range(3)]
    batch, layout = stack_samples(hwc)
    assert layout == "NHWC" and batch.shape == (3, 8, 8, 3) and batch.is_contiguous()
    assert torch.equal(batch_to_device(batch, layout, torch.device("cpu")), torch.stack(hwc))
    chw = [s.contiguous() for s in hwc]
    batch, layout = stack_samples(chw)
    assert layout == "NCHW" and batch.shape == (3, 3, 8, 8) and torch.equal(batch, torch.stack(hwc))


def _u8_batch(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    nhwc = torch.randint(0, 256, (4, 12, 10, 3), dtype=torch.uint8, generator=g)
    return nhwc.permute(0, 3, 1, 2)  # NCHW view, NHWC memory: what arrives on the device


def test_host_normalize_is_the_reference_formula() -> None:
    x = _u8_batch()
    scale, shift = (1 / STD).float(), (-MEAN / STD).float()
    for channels_last in (False, True):
        out = normalize_host(x, scale, shift, torch.float32, channels_last)
        ref = (x.double() - MEAN) / STD
        assert out.dtype == torch.float32 and out.shape == x.shape
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        assert out.is_contiguous(memory_format=fmt)
        assert torch.allclose(out.double(), ref, atol=1e-5, rtol=0)


def test_device_normalize_in_fp16_matches_the_float32_path_within_fp16_rounding() -> None:
    """The CUDA path (fp16 scale/shift kept on the device, cast + mul_ + add_ there) against
    the CPU-only float32 path: within a few fp16 ulps of values up to ~2.7 (ulp 2**-9)."""
    x = _u8_batch(1)
    ref = normalize_host(x, (1 / STD).float(), (-MEAN / STD).float(), torch.float32, False)
    half = normalize_device(
        x, (1 / STD).half(), (-MEAN / STD).half(), torch.float16, channels_last=True
    )
    assert half.dtype == torch.float16 and half.is_contiguous(memory_format=torch.channels_last)
    err = (half.float() - ref).abs().max().item()
    assert err <= 4 * 2**-9, err
    fp32 = normalize_device(x, (1 / STD).float(), (-MEAN / STD).float(), torch.float32, False)
    assert torch.allclose(fp32, ref, atol=1e-5, rtol=0)


@pytest.fixture
def photo_shards(tmp_path: Path) -> Path:
    recs = []
    for i in range(12):
        arr = photo_array(40 + i, 56 - i, i)
        recs.append(Record(image=_jpeg(arr, quality=90), labels=i % 3, width=56 - i, height=40 + i))
    return write_shards(tmp_path / "shards", {"train": recs}, records_per_shard=6)


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")
def test_cuda_loader_hands_over_uint8_and_normalizes_on_the_device(
    photo_shards: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """device="cuda": DataLoader pins, each batch crosses as uint8 NHWC with
    ``non_blocking=True``, and arrives fp16 channels-last — the same values as the CPU-only
    float32 loader, within fp16 rounding."""
    copies: list[tuple[torch.dtype, tuple[int, ...], bool]] = []
    real_to = torch.Tensor.to

    def fake_to(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        dev = kwargs.pop("device", None)
        rest = []
        for a in args:
            if isinstance(a, (str, torch.device)):
                dev = a
            else:
                rest.append(a)
        if dev is not None and torch.device(dev).type == "cuda":  # stays on the CPU
            copies.append((self.dtype, tuple(self.shape), bool(kwargs.pop("non_blocking", 0))))
            return real_to(self, *rest, **kwargs) if rest or kwargs else self
        if dev is not None:
            kwargs["device"] = dev
        return real_to(self, *rest, **kwargs)

    def batches(device: str, dtype: torch.dtype, channels_last: bool) -> list[torch.Tensor]:
        loader = make_loader(
            photo_shards, "train", 4, 16, backend="torch", device=device, dtype=dtype,
            channels_last=channels_last, num_workers=0, seed=5, rank=0, world_size=1,
        )  # fmt: skip
        if device == "cuda":
            assert loader.loader.pin_memory is True
        return [x for x, _ in loader]

    cpu = batches("cpu", torch.float32, False)
    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    monkeypatch.setattr(torch_loader, "on_device", lambda device: contextlib.nullcontext())
    gpu = batches("cuda", torch.float16, True)
    monkeypatch.undo()
    assert len(gpu) == len(cpu) == 3
    images = [c for c in copies if c[0] == torch.uint8]
    assert images == [(torch.uint8, (4, 16, 16, 3), True)] * 3, copies
    labels = [c for c in copies if c[0] == torch.int64]
    assert len(labels) == 3 and all(nb for *_, nb in labels)
    for g, c in zip(gpu, cpu, strict=True):
        assert g.dtype == torch.float16 and g.is_contiguous(memory_format=torch.channels_last)
        assert c.dtype == torch.float32 and c.is_contiguous()
        assert (g.float() - c).abs().max().item() <= 4 * 2**-9


def test_cv2_is_what_decodes_without_nvimgcodec(monkeypatch: pytest.MonkeyPatch) -> None:
    """With nvImageCodec unusable, TrainDecode takes the OpenCV path (same output)."""
    data = _jpeg(photo_array(50, 70, 2), quality=90)
    rec = Record(image=data, labels=0)
    want = TrainDecode(16, roi_decode=False)(rec, 1)
    monkeypatch.setattr(roi_decode, "_state", {"pid": __import__("os").getpid(), "decoder": None})
    assert roi_decode.window_header(data) is None
    assert torch.equal(TrainDecode(16)(rec, 1), want)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_host_normalize_every_layout_and_dtype(layout: str, dtype: torch.dtype) -> None:
    x = _u8_batch(2)
    if layout == "NCHW":
        x = x.contiguous()
    ref = (x.double() - MEAN) / STD
    for channels_last in (False, True):
        out = normalize_host(x, (1 / STD).float(), (-MEAN / STD).float(), dtype, channels_last)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        assert out.dtype == dtype and out.is_contiguous(memory_format=fmt)
        tol = {torch.float32: 1e-5, torch.float16: 2**-9, torch.bfloat16: 2**-6}[dtype]
        assert (out.double() - ref).abs().max().item() <= tol


def test_host_buffers_are_reused_only_when_nothing_can_read_them() -> None:
    pool = torch_loader.HostBuffers()
    shape = (2, 3, 4, 5)
    a = pool.get(shape, torch.float32, False)
    first = a.data_ptr()
    assert pool.get(shape, torch.float32, False).data_ptr() != first  # `a` still held
    view = a[1]
    del a
    assert pool.get(shape, torch.float32, False).data_ptr() != first  # a view holds it
    del view
    b = pool.get(shape, torch.float32, False)
    assert b.data_ptr() == first  # free again: lent once more
    w = torch.ones(5, requires_grad=True)
    loss = (b * w).sum()  # autograd saves b for the backward pass
    del b
    assert pool.get(shape, torch.float32, False).data_ptr() != first
    loss.backward()
    del loss
    assert pool.get(shape, torch.float32, False).data_ptr() == first
    cl = pool.get(shape, torch.float32, True)
    assert cl.shape == shape and cl.is_contiguous(memory_format=torch.channels_last)


def test_cpu_loader_batches_survive_the_next_ones(photo_shards: Path) -> None:
    """Batches kept by the caller are never overwritten by later ones (reused buffers)."""
    loader = make_loader(photo_shards, "train", 4, 16, backend="torch", num_workers=0, seed=1)
    kept = [x for x, _ in loader]
    copies = [x.clone() for x, _ in loader]
    assert len({x.data_ptr() for x in kept}) == len(kept) == 3
    assert all(torch.equal(a, b) for a, b in zip(kept, copies, strict=True))


def test_pending_crops_are_finished_into_the_batch_with_the_same_pixels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TrainDecode(pending=True): plain-bilinear crops come back unresized (PendingCrop) and
    the collate resizes and mirrors each straight into its place in the batch; the pixels are
    TrainDecode's. Antialiased or auto-augmented crops stay tensors."""
    from recordkit.loaders import decode as decode_module
    from recordkit.loaders.decode import PendingCrop
    from recordkit.loaders.torch_loader import _Collate

    if not roi_decode.roi_available():
        pytest.skip("nvImageCodec (installed with DALI) is not available")

    recs = [
        Record(image=_jpeg(photo_array(60 + 7 * k, 90 - 5 * k, k), quality=92), labels=k)
        for k in range(6)
    ]
    aug = Augment(train_antialias=False)
    want = [TrainDecode(20, aug, roi_decode=False)(r, 10 + k) for k, r in enumerate(recs)]
    defer = TrainDecode(20, aug, pending=True)
    pending = [defer(r, 10 + k) for k, r in enumerate(recs)]
    assert all(isinstance(p, PendingCrop) for p in pending)
    assert {p.flip for p in pending} == {False, True}
    for p, w in zip(pending, want, strict=True):
        assert torch.equal(p.tensor(), w)
        out = np.zeros((20, 20, 3), np.uint8)
        assert np.shares_memory(p.finish(out), out)  # written in place
        assert torch.equal(torch.from_numpy(out).permute(2, 0, 1), w)
    images, labels, layout, handle = _Collate(False, False, keep=4)(
        [(p, k) for k, p in enumerate(pending)]
    )
    assert layout == "NHWC" and handle is None  # not in a worker: fresh memory
    assert torch.equal(images.permute(0, 3, 1, 2), torch.stack(want))
    assert labels.tolist() == list(range(6))
    mixed = _Collate(False, False)([(pending[0], 0), (want[1], 1)])
    assert torch.equal(mixed[0].permute(0, 3, 1, 2), torch.stack(want[:2]))
    for other in (Augment(), Augment(train_antialias=False, auto_augment="randaugment")):
        assert isinstance(TrainDecode(20, other, pending=True)(recs[0], 1), torch.Tensor)
    # whole images decoded by OpenCV are never held for the collate; nor are huge windows
    assert isinstance(
        TrainDecode(20, aug, roi_decode=False, pending=True)(recs[0], 1), torch.Tensor
    )
    monkeypatch.setattr(decode_module, "PENDING_MAX_BYTES", 10)
    assert torch.equal(TrainDecode(20, aug, pending=True)(recs[0], 10), want[0])


def test_dataset_items_are_finished_and_only_the_batch_path_stays_pending(
    photo_shards: Path,
) -> None:
    """``loader.dataset[i]`` gives the finished sample tensor, as before pending crops; the
    fetcher's ``__getitems__`` leaves plain-bilinear crops pending for the collate, with the
    same pixels."""
    from recordkit.loaders.decode import PendingCrop

    if not roi_decode.roi_available():
        pytest.skip("nvImageCodec (installed with DALI) is not available")
    aug = Augment(train_antialias=False)
    loader = make_loader(
        photo_shards, "train", 4, 16, backend="torch", num_workers=0, seed=1, augment=aug
    )
    ds = loader.dataset
    for key in [(i, 100 + i) for i in range(len(ds))]:  # (index, per-sample seed)
        sample, label = ds[key]
        assert isinstance(sample, torch.Tensor) and sample.shape == (3, 16, 16)
        [(pending, same_label)] = ds.__getitems__([key])
        assert isinstance(pending, PendingCrop) and same_label == label
        assert torch.equal(pending.tensor(), sample)
