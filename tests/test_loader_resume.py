"""A training loader resumed mid-epoch yields exactly the rest of the epoch (issue 15).

Both backends: the batches after ``load_state_dict(state_dict())`` (taken after ``k`` batches)
equal, bit for bit, batches ``k..`` of an uninterrupted pass — the same records in the same
order with the same random crops and flips — and the next epoch follows as usual. DALI cases
run its CPU pipeline; with the saved pipeline state DALI skips the consumed records in its
reader, without it the loader decodes and drops them (also exact).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import write_shards
from test_loaders import png_record

from recordkit.loaders.factory import make_loader

NUM_TRAIN = 30


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume_shards")
    write_shards(root, {"train": [png_record(i) for i in range(NUM_TRAIN)]}, records_per_shard=7)
    return root


def _loader(path: Path, backend: str, **kw: Any) -> Any:
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    kw.setdefault("num_workers", 1)
    return make_loader(
        path, "train", backend=backend, batch_size=4, image_size=12, train=True,
        drop_last=True, seed=5, device="cpu", epochs=2, **kw,
    )  # fmt: skip


def _epoch(loader: Any, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a: list[Any], b: list[Any]) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


BACKENDS = [
    pytest.param("torch", {"num_workers": 0}, id="torch-0-workers"),
    pytest.param("torch", {"num_workers": 1}, id="torch-stream"),
    pytest.param("dali", {}, id="dali", marks=pytest.mark.dali),
]


@pytest.mark.parametrize(("backend", "kw"), BACKENDS)
def test_resume_mid_epoch_yields_exactly_the_rest(shards: Path, backend: str, kw: dict) -> None:
    whole = _loader(shards, backend, **kw)
    try:
        full = _epoch(whole, 0)
        nxt = _epoch(whole, 1)
    finally:
        getattr(whole, "close", lambda: None)()
    assert len(full) == NUM_TRAIN // 4
    k = 3
    first = _loader(shards, backend, **kw)
    try:
        first.set_epoch(0)
        it = iter(first)
        head = [next(it) for _ in range(k)]
        state = first.state_dict()
        assert state["epoch"] == 0 and state["batch"] == k
        assert ("dali" in state) == (backend == "dali")
        del it
    finally:
        getattr(first, "close", lambda: None)()
    _same(head, full[:k])
    second = _loader(shards, backend, **kw)
    try:
        second.load_state_dict(state)
        rest = [(x.clone(), y.clone()) for x, y in second]
        assert second.state_dict()["batch"] == len(full)
        after = _epoch(second, 1)
    finally:
        getattr(second, "close", lambda: None)()
    _same(rest, full[k:])
    _same(after, nxt)


@pytest.mark.dali
def test_dali_without_pipeline_state_drops_the_consumed_batches(shards: Path) -> None:
    whole = _loader(shards, "dali")
    try:
        full = _epoch(whole, 0)
    finally:
        whole.close()
    loader = _loader(shards, "dali")
    try:
        loader.load_state_dict({"epoch": 0, "batch": 5})
        rest = [(x.clone(), y.clone()) for x, y in loader]
    finally:
        loader.close()
    _same(rest, full[5:])


def test_resume_after_the_last_batch_yields_nothing(shards: Path) -> None:
    loader = _loader(shards, "torch", num_workers=0)
    loader.load_state_dict({"epoch": 0, "batch": len(loader)})
    assert list(loader) == []
    with pytest.raises(ValueError, match="start_batch"):
        loader.set_epoch(0, len(loader) + 1)


def test_torch_workers_survive_a_signal_to_the_process_group(shards: Path) -> None:
    """Schedulers signal every process of a job; the workers leave the decision to the
    training process (torch's own workers would die of a SIGTERM not sent by their parent)."""
    import multiprocessing
    import os
    import signal

    loader = _loader(shards, "torch", num_workers=1)
    loader.set_epoch(0)
    it = iter(loader)
    first = next(it)
    workers = multiprocessing.active_children()
    assert workers
    for child in workers:
        os.kill(child.pid, signal.SIGTERM)
        os.kill(child.pid, signal.SIGUSR1)
    rest = list(it)
    assert len(rest) == len(loader) - 1 and first[0].shape[0] == 4


@pytest.mark.parametrize("close", [False, True], ids=["left-open", "closed"])
def test_a_process_with_open_loader_workers_exits(shards: Path, close: bool) -> None:
    """The workers ignore SIGTERM (above), which is also what ``multiprocessing`` sends its
    daemonic children at exit before joining them: a process leaving a loader open (a
    preempted run, an exception) must still end, and ``close()`` stops the workers at once."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import multiprocessing
        from recordkit.loaders import make_loader
        loader = make_loader(
            {str(shards)!r}, "train", backend="torch", batch_size=4, image_size=12,
            train=True, drop_last=True, seed=5, device="cpu", epochs=2, num_workers=1,
        )
        loader.set_epoch(0)
        it = iter(loader)
        next(it)
        assert multiprocessing.active_children()
        if {close!r}:
            loader.close()
            assert not multiprocessing.active_children()
        print("done", flush=True)
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "done"
    # the workers killed at exit are not reported as failed workers (a traceback at exit)
    assert "Traceback" not in res.stderr and "killed by signal" not in res.stderr, res.stderr
