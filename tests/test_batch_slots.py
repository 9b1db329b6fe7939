"""Reused shared-memory batch blocks (recordkit.loaders.batch_slots) and the loader using them:
a block is refilled only after the main process released it, never while it may be read, and
the batches are those of the loader without workers, value for value."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_shards
from imagegen import photo_array
from PIL import Image

from recordkit import Record
from recordkit.loaders import Augment, batch_slots, make_loader
from recordkit.loaders.batch_slots import HEADER_BYTES, BatchSlots, ReceivedSlots, SlotRelease


def test_a_block_is_reused_only_after_release() -> None:
    slots = BatchSlots(keep=3)
    a, ha = slots.take((2, 4, 4, 3))
    assert a.shape == (2, 4, 4, 3) and a.dtype == torch.uint8 and a.is_contiguous()
    assert a.storage_offset() == HEADER_BYTES and ha.storage[0] == 1  # in use
    a.fill_(7)
    b, hb = slots.take((2, 4, 4, 3))
    assert b.data_ptr() != a.data_ptr()  # a not released: never written again
    assert torch.all(a == 7)
    assert ha.release() and ha.storage[0] == 0
    c, _ = slots.take((2, 4, 4, 3))
    assert c.data_ptr() == a.data_ptr() and ha.storage[0] == 1  # a's block, in use again
    d, _ = slots.take((1, 4, 4, 3))  # another size: another block
    assert d.data_ptr() not in (a.data_ptr(), b.data_ptr())
    assert len(slots) == 3


def test_the_pool_forgets_its_oldest_block_when_none_is_released() -> None:
    slots = BatchSlots(keep=2)
    taken = [slots.take((3,)) for _ in range(5)]  # none released (e.g. dropped by a reset)
    assert len(slots) == 2 and len({t.data_ptr() for t, _ in taken}) == 5
    first_kept = taken[3][0].data_ptr()
    taken[3][1].release()
    taken[0][1].release()  # forgotten by the pool: its memory is never lent again
    assert slots.take((3,))[0].data_ptr() == first_kept


def test_release_refuses_a_block_that_the_output_reads() -> None:
    slots = BatchSlots(keep=2)
    x, handle = slots.take((2, 2))
    assert not handle.release(x[1:])  # a view of the block itself: keep it in use
    assert handle.storage[0] == 1
    assert handle.release(x.float())
    received = ReceivedSlots(keep=2)
    for h in (handle, handle, SlotRelease(slots.take((3, 2))[1].storage)):
        received.add(h)
    assert len(received) == 2  # each block kept once
    received.clear()
    assert len(received) == 0


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def photo_shards(tmp_path: Path) -> Path:
    recs = [
        Record(
            image=_jpeg(photo_array(40 + i, 56 - i, i)), labels=i % 3, width=56 - i, height=40 + i
        )
        for i in range(12)
    ]
    return write_shards(tmp_path / "shards", {"train": recs}, records_per_shard=6)


def _loader(root: Path, workers: int, antialias: bool):
    return make_loader(
        root, "train", 2, 16, backend="torch", num_workers=workers, seed=4, rank=0,
        world_size=1, augment=Augment(train_antialias=antialias),
    )  # fmt: skip


@pytest.mark.parametrize("antialias", [False, True])
def test_workers_reuse_blocks_and_give_the_same_batches(
    photo_shards: Path, antialias: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three epochs of 6 batches with 2 workers: the batches of the loader without workers,
    in at most workers x (prefetch + 2) blocks; an epoch restarted after 2 batches (the
    stream's prefetched batches dropped, never released) still gives the whole epoch."""
    ref = _loader(photo_shards, 0, antialias)
    want = []
    for e in range(3):
        ref.set_epoch(e)
        want.append([(x.clone(), y.clone()) for x, y in ref])
    seen: list[int] = []
    real_add = batch_slots.ReceivedSlots.add

    def add(self: ReceivedSlots, handle: SlotRelease) -> None:
        seen.append(handle.storage.data_ptr())
        real_add(self, handle)

    monkeypatch.setattr(batch_slots.ReceivedSlots, "add", add)
    ld = _loader(photo_shards, 2, antialias)
    try:
        ld.set_epoch(0)
        it = iter(ld)
        first = [next(it), next(it)]
        for (x, y), (wx, wy) in zip(first, want[0][:2], strict=True):
            assert torch.equal(x, wx) and torch.equal(y, wy)
        del it
        for e in range(3):
            ld.set_epoch(e)  # epoch 0 again: the stream restarts
            got = list(ld)
            assert len(got) == len(want[e]) == 6
            for (x, y), (wx, wy) in zip(got, want[e], strict=True):
                assert torch.equal(x, wx) and torch.equal(y, wy)
    finally:
        ld.close()
    assert len(seen) == 20  # every batch came in a block...
    assert len(set(seen)) <= 2 * (2 + 2) + 2 * 2  # ...of a few, reused (+ dropped ones)
