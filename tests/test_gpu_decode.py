"""The GPU-decode path's contracts, on CPU: worker routing and collation, the decode fallbacks,
the stream handling and the device context (fakes stand in for CUDA).

The batched geometry is tested in ``tests/test_crops.py``, the header routing in
``tests/test_imageinfo.py``, the loader end to end in ``tests/test_loaders.py``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import imagegen
import pytest
import torch

import recordkit.loaders.gpu_decode as gd
from recordkit import Record
from recordkit.loaders.augment import Augment, CropBox, random_resized_crop_box
from recordkit.loaders.decode import (
    EncodedDecode,
    EncodedSample,
    TrainDecode,
    ValDecode,
)

AUG = Augment()


def _record(path: Path, **kw: Any) -> Record:
    return Record(path.read_bytes(), (0,), filename=path.name, **kw)


# -- the worker side ----------------------------------------------------------------------------


def test_gpu_bound_crop_comes_from_the_header_size(tmp_path: Path) -> None:
    """The crop is drawn from the JPEG's own size, not the record's (here wrong) fields, with
    the same draws as TrainDecode."""
    path = imagegen.write_image(tmp_path / "a.jpg", imagegen.index_pixels(5, 48, 64), "JPEG")
    rec = _record(path, width=1000, height=900)
    s = EncodedDecode(16, AUG, train=True)(rec, 123)
    rng = random.Random(123)
    assert s.data == rec.image and s.pixels is None and s.name == "a.jpg"
    assert s.box == random_resized_crop_box(64, 48, AUG.scale, AUG.ratio, rng)
    assert s.flip == (rng.random() < AUG.flip)
    val = EncodedDecode(16, AUG, train=False)(rec, 123)
    assert (val.data, val.box, val.flip) == (rec.image, None, False)


@pytest.mark.parametrize("train", [True, False])
def test_cpu_bound_images_are_decoded_in_the_worker_like_the_plain_path(
    tmp_path: Path, train: bool
) -> None:
    for path in (
        imagegen.make_cmyk_jpeg(tmp_path / "cmyk.jpg"),
        imagegen.make_exif_rotated_jpeg(tmp_path / "exif.jpg", 6),
        imagegen.make_palette_png(tmp_path / "p.png"),
    ):
        rec = _record(path)
        s = EncodedDecode(16, AUG, train=train)(rec, 7)
        plain = (TrainDecode if train else ValDecode)(16, AUG)(rec, 7)
        assert s.data is None and s.pixels is not None and torch.equal(s.pixels, plain)


def test_collate_packs_the_jpegs_into_one_tensor_and_the_pixels_into_another() -> None:
    px = [torch.full((3, 4, 4), v, dtype=torch.uint8) for v in (7, 9)]
    samples = [
        EncodedSample(b"abc", CropBox(1, 2, 3, 4), True, name="a"),
        EncodedSample(None, None, False, px[0], name="p0"),
        EncodedSample(b"defgh", None, False, name="b"),
        EncodedSample(None, None, False, px[1], name="p1"),
    ]
    b = gd.EncodedBatch.collate(samples)
    assert b.size == 4 and bytes(b.jpeg.numpy()) == b"abcdefgh" and b.lengths == [3, 5]
    assert b.jpeg_index == [0, 2] and b.boxes == [CropBox(1, 2, 3, 4), None]
    assert b.flips == [True, False] and b.names == ["a", "b"]
    assert b.pixel_index is not None and b.pixel_index.tolist() == [1, 3]
    assert b.pixels is not None and torch.equal(b.pixels, torch.stack(px))
    only_png = gd.EncodedBatch.collate(samples[1:2])
    assert only_png.jpeg.numel() == 0 and only_png.lengths == []


def test_pin_memory_pins_only_the_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    """DataLoader's pin thread calls ``batch.pin_memory()``: pixels pinned, JPEG bytes not."""
    from torch.utils.data._utils.pin_memory import pin_memory

    pinned: list[tuple[int, ...]] = []

    def fake_pin(self: torch.Tensor, *a: object) -> torch.Tensor:
        pinned.append(tuple(self.shape))
        return self

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    b = gd.EncodedBatch.collate(
        [EncodedSample(b"abc", None, False), EncodedSample(None, None, False, torch.zeros(3, 2, 2))]
    )
    batch, labels = pin_memory((b, torch.zeros(2)))
    assert batch is b and pinned == [(1, 3, 2, 2), (1,), (2,)]


# -- decode fallbacks ---------------------------------------------------------------------------


def test_decode_jpegs_retries_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[int]] = []

    def fake(data: list[torch.Tensor], **kw: Any) -> list[torch.Tensor]:
        calls.append([int(d[0]) for d in data])
        if any(int(d[0]) == 2 for d in data):
            raise RuntimeError("Error while decoding JPEG images: Failed to decode batch: 6")
        return [torch.full((3, 2, 2), int(d[0]), dtype=torch.uint8) for d in data]

    monkeypatch.setattr(gd, "decode_jpeg", fake)
    data = [torch.tensor([k], dtype=torch.uint8) for k in range(4)]
    images, errors = gd.decode_jpegs(data, torch.device("cpu"))
    assert calls == [[0, 1, 2, 3], [0], [1], [2], [3]]
    assert [None if im is None else int(im[0, 0, 0]) for im in images] == [0, 1, None, 3]
    assert list(errors) == [2] and "Failed to decode batch" in errors[2]
    calls.clear()
    images, errors = gd.decode_jpegs(data[:2], torch.device("cpu"))
    assert calls == [[0, 1]] and errors == {} and len(images) == 2


# -- streams ----------------------------------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []
        self.current = "consumer"


class _FakeStream:
    def __init__(self, log: _Recorder, name: str) -> None:
        self.log, self.name = log, name

    def wait_stream(self, other: _FakeStream) -> None:
        self.log.events.append(("wait_stream", self.name, other.name))


class _FakeImage:
    def __init__(self, log: _Recorder, k: int) -> None:
        self.log, self.k = log, k

    def record_stream(self, stream: _FakeStream) -> None:
        self.log.events.append(("record_stream", str(self.k), stream.name))


def _fake_stream_context(monkeypatch: pytest.MonkeyPatch, log: _Recorder) -> None:
    class StreamContext:
        def __init__(self, stream: _FakeStream) -> None:
            self.stream = stream

        def __enter__(self) -> None:
            self.prev, log.current = log.current, self.stream.name
            log.events.append(("enter", self.stream.name))

        def __exit__(self, *exc: object) -> None:
            log.current = self.prev
            log.events.append(("exit", self.stream.name))

    monkeypatch.setattr(torch.cuda, "stream", StreamContext)


def test_decode_runs_on_the_side_stream_and_the_consumer_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Decode inside the side stream's context (its outputs come from the side stream's pool),
    then the consumer waits for the side stream, then every output is recorded on the consumer
    (and a failed image, None, is skipped)."""
    log = _Recorder()
    _fake_stream_context(monkeypatch, log)
    side, consumer = _FakeStream(log, "side"), _FakeStream(log, "consumer")

    def decode() -> tuple[list[Any], dict[int, str]]:
        log.events.append(("decode", log.current))
        return [_FakeImage(log, 0), None, _FakeImage(log, 2)], {1: "bad"}

    images, errors = gd.decode_on_side_stream(decode, side, consumer)
    assert errors == {1: "bad"} and images[1] is None
    assert log.events == [
        ("enter", "side"),
        ("decode", "side"),
        ("exit", "side"),
        ("wait_stream", "consumer", "side"),
        ("record_stream", "0", "consumer"),
        ("record_stream", "2", "consumer"),
    ]


def test_batch_decoder_decodes_cuda_batches_through_the_side_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = _Recorder()
    made: list[torch.device] = []

    def fake_stream(device: torch.device) -> _FakeStream:
        made.append(device)
        return _FakeStream(log, "side")

    seen: list[tuple[str, str]] = []

    def fake_side(decode: Any, side: _FakeStream, consumer: _FakeStream) -> Any:
        seen.append((side.name, consumer.name))
        return [torch.full((3, 8, 8), 9, dtype=torch.uint8)], {}

    monkeypatch.setattr(torch.cuda, "Stream", fake_stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda d: _FakeStream(log, "consumer"))
    monkeypatch.setattr(gd, "decode_on_side_stream", fake_side)
    dec = gd.BatchDecoder(torch.device("cuda", 1), 4, AUG, train=False)
    data = [torch.tensor([1], dtype=torch.uint8)]
    for _ in range(2):
        images, _ = dec._decode(data)
        assert images[0] is not None and int(images[0][0, 0, 0]) == 9
    assert seen == [("side", "consumer")] * 2
    assert made == [torch.device("cuda", 1)], "one side stream per loader, on its device"


# -- devices ----------------------------------------------------------------------------------


def test_device_context(monkeypatch: pytest.MonkeyPatch) -> None:
    entered: list[Any] = []
    monkeypatch.setattr(torch.cuda, "device", lambda d: entered.append(d) or "ctx")
    assert gd.on_device(torch.device("cuda", 3)) == "ctx" and entered == [torch.device("cuda", 3)]
    with gd.on_device(torch.device("cpu")):
        pass
    assert entered == [torch.device("cuda", 3)]
