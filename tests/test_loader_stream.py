"""The torch training loader's endless batch stream: the workers go on into the next epoch
while this one's last batches are consumed, and every epoch's batches are exactly those of a
loader without workers (which has no stream)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_loaders import NUM_TRAIN, SIZE, png_record, write_shards

from recordkit.loaders import make_loader


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stream_shards")
    return write_shards(root, {"train": [png_record(i) for i in range(NUM_TRAIN)]}, 7)


def epoch_batches(ld, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    ld.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in ld]


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b, strict=True)
    )


def make(shards: Path, workers: int, **kw: object):
    kw.setdefault("batch_size", 4)
    return make_loader(
        shards, "train", image_size=SIZE, backend="torch", num_workers=workers, seed=3, **kw
    )


@pytest.mark.parametrize("drop_last", [True, False])
def test_epochs_match_a_loader_without_workers(shards: Path, drop_last: bool) -> None:
    plain = make(shards, 0, drop_last=drop_last)
    streamed = make(shards, 2, drop_last=drop_last)
    assert plain._stream is None and streamed._stream is not None
    for epoch in range(3):
        want = epoch_batches(plain, epoch)
        assert len(want) == len(plain) == (7 if drop_last else 8)  # 30 records, batch 4
        assert same(epoch_batches(streamed, epoch), want), f"epoch {epoch}"
    assert streamed._stream_start == 0, "epochs 1 and 2 continued the stream"


def test_next_epoch_is_under_way_before_it_is_asked_for(shards: Path) -> None:
    ld = make(shards, 2, prefetch=2)
    epoch_batches(ld, 0)
    assert ld._stream.handed_out > len(ld), "epoch 1's first batches were already sent"


def test_left_early_repeated_and_jumped_epochs_restart_the_stream(shards: Path) -> None:
    plain = make(shards, 0)
    ld = make(shards, 2)
    ld.set_epoch(0)
    for k, _ in enumerate(ld):  # leave epoch 0 after two batches
        if k == 1:
            break
    assert same(epoch_batches(ld, 1), epoch_batches(plain, 1)), "after an epoch left early"
    assert ld._stream_start == 1
    assert same(epoch_batches(ld, 1), epoch_batches(plain, 1)), "the same epoch again"
    assert same(epoch_batches(ld, 5), epoch_batches(plain, 5)), "a jump (resume)"
    assert same(epoch_batches(ld, 2), epoch_batches(plain, 2)), "back to an earlier epoch"
    assert ld._stream_start == 2


def test_changed_sampler_settings_restart_the_stream(shards: Path) -> None:
    ld = make(shards, 2)
    epoch_batches(ld, 0)
    ld.sampler.seed = 11  # what the next epoch reads must follow the loader's sampler
    plain = make(shards, 0)
    plain.sampler.seed = 11
    assert same(epoch_batches(ld, 1), epoch_batches(plain, 1))


def test_computing_ahead_leaves_the_callers_epoch_alone(shards: Path) -> None:
    ld = make(shards, 2)
    epoch_batches(ld, 4)
    assert ld.sampler.epoch == 4


def test_objects_are_frozen_once_before_workers_fork(shards: Path, monkeypatch) -> None:
    """gc.freeze() before the first fork of workers (not for a loader without workers), and
    only once per process."""
    import gc

    from recordkit.loaders import torch_loader

    calls: list[int] = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append(1))
    monkeypatch.setattr(torch_loader, "_frozen_in", [])
    epoch_batches(make(shards, 0), 0)
    assert calls == []
    ld = make(shards, 2)
    epoch_batches(ld, 0)
    assert calls == [1]
    epoch_batches(make(shards, 2, train=False), 0)  # another fork: nothing more to freeze
    assert calls == [1]
