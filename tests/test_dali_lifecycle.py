"""The loader's GPU/node contracts, on CPU: workers per rank, device per rank, DALI memory and
pipeline lifecycle, DALI version floor.

- Threads/workers per rank follow ``sched_getaffinity`` / ``LOCAL_WORLD_SIZE`` (contract 12).
- ``device="cuda"`` resolves to this rank's GPU (``LOCAL_RANK``) for both backends.
- Only the training decoder preallocates GPU/pinned memory, sized from the manifest.
- DALI pipelines: the epoch's last batch never waits for the next epoch's build (done on a
  background thread whose errors reach the consumer), no pipeline past ``epochs``, and one
  pipeline for every pass of a validation loader, giving identical, exactly-once batches.

DALI cases carry the ``dali`` marker and run DALI's CPU pipeline (``device_id=None``).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import write_shards
from test_loaders import identify, png_record

from recordkit import Manifest, read_manifest, write_manifest
from recordkit.dataset import partition
from recordkit.loaders import factory
from recordkit.loaders.dali_sizing import decoder_memory, pack_image_bound, reader_batches
from recordkit.loaders.factory import default_workers, make_loader, resolve_device
from recordkit.loaders.sampling import epoch_seed

NUM_TRAIN = 30
NUM_VAL = 23
SIZE = 16
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lifecycle_shards")
    write_shards(
        root,
        {
            "train": [png_record(i) for i in range(NUM_TRAIN)],
            "val": [png_record(i) for i in range(NUM_VAL)],
        },
        records_per_shard=7,
    )
    # As `recordkit pack --resize 40` records it (per split), and val packed with a centre crop.
    m = read_manifest(root)
    pack = {"splits": {"train": {"resize": 40}, "val": {"resize": 24, "center_crop": True}}}
    write_manifest(Manifest(classes=m.classes, splits=m.splits, pack=pack), root)
    return root


def dali_loader(path: Path, split: str = "val", **kw: Any) -> Any:
    pytest.importorskip("nvidia.dali")
    kw.setdefault("batch_size", 4)
    kw.setdefault("image_size", SIZE)
    kw.setdefault("num_workers", 1)
    return make_loader(path, split, backend="dali", **kw)


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[dict[str, Any]]]:
    """``builds(delay=0.0, fail_on=None)``: count DALI pipeline builds (optionally slowed down
    or failing on the n-th, 1-based), returning the list the calls are recorded in."""

    def install(delay: float = 0.0, fail_on: int | None = None) -> list[dict[str, Any]]:
        dali = pytest.importorskip("recordkit.loaders.dali")
        real = dali.build_pipeline
        calls: list[dict[str, Any]] = []

        def counting(*args: Any, **kw: Any) -> Any:
            calls.append(kw)
            n = len(calls)
            if delay and n > 1:
                time.sleep(delay)
            if fail_on == n:
                raise RuntimeError(f"boom in build {n}")
            return real(*args, **kw)

        monkeypatch.setattr(dali, "build_pipeline", counting)
        return calls

    return install


def take(ld: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in ld]


# -- threads / workers per rank (defect: 16 per rank whatever the ranks per node) -----------


@pytest.mark.parametrize(
    ("cpus", "local_world", "expected"),
    [(96, "8", 12), (96, None, 16), (20, "4", 5), (8, "8", 1), (4, "8", 1), (2, None, 2)],
)
def test_default_workers_share_the_cpus_among_the_local_ranks(
    monkeypatch: pytest.MonkeyPatch, cpus: int, local_world: str | None, expected: int
) -> None:
    monkeypatch.setattr(factory.os, "sched_getaffinity", lambda pid: set(range(cpus)))
    if local_world is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world)
    assert default_workers() == expected


@pytest.mark.parametrize("value", ["0", "-2", "eight"])
def test_a_bad_local_world_size_is_named(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", value)
    with pytest.raises(ValueError, match="LOCAL_WORLD_SIZE"):
        default_workers()


class _Recorder:
    """Stands in for TorchLoader: records the keyword arguments make_loader passes."""

    seen: dict[str, Any] = {}

    def __init__(self, *args: Any, **kw: Any) -> None:
        type(self).seen = kw


@pytest.mark.dali
def test_make_loader_sizes_both_backends_per_rank(
    shards: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import recordkit.loaders.torch_loader as torch_loader

    monkeypatch.setattr(factory.os, "sched_getaffinity", lambda pid: set(range(96)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    ld = dali_loader(shards, num_workers=None)
    assert ld.num_threads == 12
    monkeypatch.setattr(torch_loader, "TorchLoader", _Recorder)
    make_loader(shards, "val", 4, image_size=SIZE, backend="torch")
    assert _Recorder.seen["num_workers"] == 12


# -- device per rank (defect: "cuda" put every rank on GPU 0) -------------------------------


@pytest.mark.parametrize(
    ("device", "local_rank", "count", "expected"),
    [
        ("cuda", "3", 8, "cuda:3"),
        ("cuda", "3", 0, "cuda:3"),  # no GPU visible here: the index is LOCAL_RANK itself
        ("cuda", "3", 2, "cuda:1"),  # fewer visible GPUs than local ranks: modulo, as setup()
        ("cuda", "3", 1, "cuda:0"),  # one GPU per rank via CUDA_VISIBLE_DEVICES
        ("cuda:5", "3", 8, "cuda:5"),  # an explicit index wins
        ("cpu", "3", 8, "cpu"),
        ("cuda", None, 8, "cuda:0"),  # no torchrun, CUDA not initialised
    ],
)
def test_resolve_device(
    monkeypatch: pytest.MonkeyPatch,
    device: str,
    local_rank: str | None,
    count: int,
    expected: str,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert resolve_device(device, device_count=count) == torch.device(expected)


def test_resolve_device_without_torchrun_keeps_the_current_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    assert resolve_device("cuda") == torch.device("cuda", 2)
    monkeypatch.setenv("LOCAL_RANK", "x")
    with pytest.raises(ValueError, match="LOCAL_RANK"):
        resolve_device("cuda")


@pytest.mark.dali
def test_make_loader_puts_each_rank_on_its_gpu(
    shards: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing touches CUDA until iteration, so the device choice is checked on CPU."""
    import recordkit.loaders.torch_loader as torch_loader

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    ld = dali_loader(shards, device="cuda")
    assert ld.device == torch.device("cuda", 1) and ld.device_id == 1
    monkeypatch.setattr(torch_loader, "TorchLoader", _Recorder)
    make_loader(shards, "val", 4, image_size=SIZE, backend="torch", device="cuda")
    assert _Recorder.seen["device"] == torch.device("cuda", 1)


# -- DALI decoder memory (defect: ImageNet paddings on the validation decoder too) ----------


def test_decoder_memory_pads_only_the_training_decoder() -> None:
    assert decoder_memory(train=True, gpu=False, max_image=(960, 480)) == {}
    assert decoder_memory(train=False, gpu=False) == {}
    assert decoder_memory(train=False, gpu=True, max_image=(960, 480)) == {
        "hw_decoder_load": 0.65,
        "device_memory_padding": 0,
        "host_memory_padding": 0,
    }
    # pack --resize 480: at most 960 x 480 px -> 9 and 6 bytes per pixel, hints = long side.
    assert decoder_memory(train=True, gpu=True, max_image=(960, 480)) == {
        "hw_decoder_load": 0.65,
        "device_memory_padding": 9 * 960 * 480,
        "host_memory_padding": 6 * 960 * 480,
        "preallocate_width_hint": 960,
        "preallocate_height_hint": 960,
    }
    # Sizes round up to 16-px MCUs.
    kw = decoder_memory(train=True, gpu=True, max_image=(100, 50))
    assert kw["device_memory_padding"] == 9 * 112 * 64 and kw["host_memory_padding"] == 6 * 112 * 64
    # Unknown size: DALI's ResNet-50 example values (ImageNet's largest image).
    kw = decoder_memory(train=True, gpu=True)
    assert kw["device_memory_padding"] == 211025920 and kw["host_memory_padding"] == 140544512
    assert (kw["preallocate_width_hint"], kw["preallocate_height_hint"]) == (5980, 6430)


@pytest.mark.dali
def test_decoder_kwargs_add_the_device_and_rgb_output() -> None:
    dali = pytest.importorskip("recordkit.loaders.dali")
    rgb = dali.types.RGB
    assert dali.decoder_kwargs(train=True, gpu=False, max_image=(960, 480)) == {
        "device": "cpu",
        "output_type": rgb,
    }
    assert dali.decoder_kwargs(train=False, gpu=True) == {
        "device": "mixed",
        "output_type": rgb,
        **decoder_memory(train=False, gpu=True),
    }
    assert dali.decoder_kwargs(train=True, gpu=True, max_image=(960, 480)) == {
        "device": "mixed",
        "output_type": rgb,
        **decoder_memory(train=True, gpu=True, max_image=(960, 480)),
    }


@pytest.mark.parametrize(
    ("pack", "split", "expected"),
    [
        ({"splits": {"train": {"resize": 480}}}, "train", (960, 480)),
        ({"splits": {"train": {"resize": 480, "center_crop": True}}}, "train", (480, 480)),
        ({"splits": {"train": {"resize": 0}}}, "train", None),
        ({"splits": {"train": {"resize": 480, "pass_through": True}}}, "train", None),
        ({"splits": {"train": {"converted_from": "mxnet-rec"}}}, "train", None),
        ({"resize": 480, "splits": {"val": {"resize": 480}}}, "train", None),  # per split
        ({"resize": 320}, "train", (640, 320)),  # a manifest without per-split parameters
        ({}, "train", None),
    ],
)
def test_pack_image_bound(pack: dict[str, Any], split: str, expected: Any) -> None:
    assert pack_image_bound(pack, split) == expected


@pytest.mark.dali
def test_the_manifest_bound_reaches_the_decoder(
    shards: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dali = pytest.importorskip("recordkit.loaders.dali")
    seen: list[dict[str, Any]] = []
    real = dali.decoder_kwargs

    def spy(**kw: Any) -> dict[str, Any]:
        seen.append(kw)
        return real(**kw)

    monkeypatch.setattr(dali, "decoder_kwargs", spy)
    train = dali_loader(shards, "train")
    val = dali_loader(shards, "val")
    assert train.max_image == (80, 40) and val.max_image == (24, 24)
    next(iter(train))
    next(iter(val))
    assert seen == [
        {"train": True, "gpu": False, "max_image": (80, 40)},
        {"train": False, "gpu": False, "max_image": (24, 24)},
    ]


# -- DALI pipeline lifecycle (defect: builds on the critical path, rebuilt validation) -----


@pytest.mark.dali
def test_the_last_batch_does_not_wait_for_the_next_epochs_build(
    shards: Path, builds: Callable[..., list[dict[str, Any]]]
) -> None:
    calls = builds(delay=1.0)  # every build after the first takes 1 s more
    ld = dali_loader(shards, "train", seed=3)
    it = iter(ld)
    waits = []
    for _ in range(len(ld)):
        t = time.perf_counter()
        next(it)
        waits.append(time.perf_counter() - t)
    assert max(waits) < 0.5, waits  # the 1-s build of epoch 1 runs on the builder thread
    assert ld._ahead is not None and ld._ahead.epoch == 1  # started by the end of epoch 0
    with pytest.raises(StopIteration):
        next(it)
    ld.set_epoch(1)
    t = time.perf_counter()
    first = next(iter(ld))  # joins the build: whatever of the 1 s is left
    assert time.perf_counter() - t > 0.2
    assert len(calls) == 2  # ... and builds nothing itself
    fresh = dali_loader(shards, "train", seed=3)
    fresh.set_epoch(1)
    x, y = next(iter(fresh))
    assert torch.equal(first[0], x) and torch.equal(first[1], y)
    ld.close()
    fresh.close()


@pytest.mark.dali
@pytest.mark.parametrize(("epochs", "expected"), [(2, 2), (None, 3)])
def test_no_pipeline_is_built_past_the_last_epoch(
    shards: Path, builds: Callable[..., list[dict[str, Any]]], epochs: int | None, expected: int
) -> None:
    calls = builds()
    ld = dali_loader(shards, "train", epochs=epochs, seed=1)
    seqs = []
    for e in range(2):
        ld.set_epoch(e)
        seqs.append(collect_ids(ld))
    ld.close()
    assert len(calls) == expected
    assert [c["seed"] for c in calls] == [epoch_seed(1, e, 1) for e in range(expected)]
    assert seqs[0] != seqs[1] and all(len(s) == len(ld) * 4 for s in seqs)
    assert ld._ahead is None


@pytest.mark.dali
def test_a_resumed_run_prepares_only_the_epochs_left(
    shards: Path, builds: Callable[..., list[dict[str, Any]]]
) -> None:
    calls = builds()
    ld = dali_loader(shards, "train", epochs=3)
    ld.set_epoch(2)  # resumed at the last epoch
    take(ld)
    assert len(calls) == 1 and ld._ahead is None


@pytest.mark.dali
def test_a_failed_background_build_is_raised_by_the_next_epoch(
    shards: Path, builds: Callable[..., list[dict[str, Any]]]
) -> None:
    builds(fail_on=2)
    ld = dali_loader(shards, "train")
    assert len(take(ld)) == len(ld)  # epoch 0 is whole; epoch 1's build failed meanwhile
    ld.set_epoch(1)
    with pytest.raises(RuntimeError, match="boom in build 2"):
        next(iter(ld))
    assert len(take(ld)) == len(ld)  # raised once; the next pass builds again
    ld.close()


@pytest.mark.dali
def test_close_joins_the_builder_and_logs_a_failure(
    shards: Path, builds: Callable[..., list[dict[str, Any]]], caplog: pytest.LogCaptureFixture
) -> None:
    builds(delay=0.3, fail_on=2)
    ld = dali_loader(shards, "train")
    take(ld)
    executor = ld._executor
    assert ld._ahead is not None and not ld._ahead.future.done()
    with caplog.at_level(logging.WARNING, logger="recordkit.loaders.dali"):
        ld.close()
    assert ld._ahead is None and ld._executor is None
    assert not any(t.is_alive() for t in executor._threads)
    assert "epoch 1 failed to build" in caplog.text and "boom in build 2" in caplog.text


def collect_ids(ld: Any) -> list[int]:
    return [i for x, _ in ld for i in identify(x)]


@pytest.mark.dali
@pytest.mark.parametrize(
    ("world", "batch", "drop_last"),
    [(1, 4, False), (3, 5, False), (5, 2, False), (4, 7, False), (3, 5, True)],
)
def test_validation_keeps_one_pipeline_and_repeats_its_batches(
    shards: Path,
    builds: Callable[..., list[dict[str, Any]]],
    world: int,
    batch: int,
    drop_last: bool,
) -> None:
    """(5, 2): ranks with 4 of the 23 records get a whole batch of reader padding per pass."""
    calls = builds()
    for rank in range(world):
        del calls[:]
        ld = dali_loader(shards, batch_size=batch, rank=rank, world_size=world, drop_last=drop_last)
        part = list(partition(NUM_VAL, rank, world))
        want = part[: len(ld) * batch] if drop_last else part
        passes = []
        for p in range(3):
            ld.set_epoch(p)  # no randomness: the epoch changes nothing
            passes.append(take(ld))
        assert len(calls) == 1
        assert ld._kept_lead == reader_batches(NUM_VAL, world, batch) - len(ld)
        for got in passes:
            assert len(got) == len(ld)
            assert [i for x, _ in got for i in identify(x)] == want  # each record once, in order
            assert [lab for _, y in got for lab in y.tolist()] == [i % 3 for i in want]
            for (x, y), (x0, y0) in zip(got, passes[0], strict=True):
                assert torch.equal(x, x0) and torch.equal(y, y0)
        ld.close()
        assert ld._kept is None


@pytest.mark.dali
def test_an_abandoned_validation_pass_does_not_shift_the_next(
    shards: Path, builds: Callable[..., list[dict[str, Any]]]
) -> None:
    calls = builds()
    ld = dali_loader(shards, batch_size=5)
    it = iter(ld)
    next(it)
    it.close()  # broke out after one batch: the kept pipeline's reader is mid-shard
    assert collect_ids(ld) == list(range(NUM_VAL))
    assert collect_ids(ld) == list(range(NUM_VAL))
    assert len(calls) == 2


@pytest.mark.dali
def test_shuffled_or_augmented_loaders_still_build_per_pass(
    shards: Path, builds: Callable[..., list[dict[str, Any]]]
) -> None:
    calls = builds()
    ld = dali_loader(shards, "val", shuffle=True, seed=4)
    first, second = collect_ids(ld), collect_ids(ld)
    assert first == second and sorted(first) == list(range(NUM_VAL))
    assert len(calls) == 2 and not ld.reuse


def test_make_loader_rejects_negative_epochs(shards: Path) -> None:
    with pytest.raises(ValueError, match="epochs"):
        make_loader(shards, "val", 4, backend="torch", epochs=-1)


# -- DALI version floor -----------------------------------------------------------------------


@pytest.mark.dali
def test_an_old_dali_is_refused_with_the_version_needed() -> None:
    dali = pytest.importorskip("recordkit.loaders.dali")
    for ok in ("1.44.0", "1.45.0.dev20241120", "2.4.0"):
        dali.check_dali_version(ok)
    for old in ("1.43.0", "1.40.1", "0.31.0", "unknown"):
        with pytest.raises(ImportError, match=r"DALI >= 1\.44.*nvidia-dali-cuda120>=1\.44"):
            dali.check_dali_version(old)
    with pytest.raises(ImportError, match="1.44"):
        dali.check_dali_version("1.50.0", has_dlpack=False)
    with pytest.raises(ImportError, match="1.44"):
        dali.check_dali_version("1.50.0", has_exec_dynamic=False)


@pytest.mark.dali
def test_the_dali_extra_pins_the_same_floor() -> None:
    dali = pytest.importorskip("recordkit.loaders.dali")
    text = (ROOT / "pyproject.toml").read_text()  # tomllib is 3.11+, the project 3.10+
    floors = re.findall(r"nvidia-dali-cuda120>=([\d.]+)", text)
    assert [tuple(int(v) for v in f.split(".")) for f in floors] == [dali.MIN_DALI]
