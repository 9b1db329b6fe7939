"""Preemption: a run stopped by SIGTERM / SIGUSR1 mid-epoch and resumed equals an uninterrupted one.

For both loader backends, at world size 1 (in this process) and 2 (torchrun, gloo): the resumed
run's per-step loss trace (``steps.jsonl``) and final weights are bitwise those of the run that
was never stopped (fp32, ``--deterministic``). The model is mobilenet_v3_small, whose classifier
has dropout, so the RNG states must come back too. The step at which the signal arrives is
random (printed on failure; ``RECORDKIT_PREEMPT_STEP`` fixes it). With two ranks, the torch
case signals torchrun (which forwards SIGTERM to both ranks, as a scheduler's notice does) and
the DALI case only rank 0 (rank 1 stops on the ranks' agreement alone). The same holds for a
dataset served over http:// (nginx) and streamed through a shard cache smaller than the split,
run through the CLI.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from recordkit_train import engine
from recordkit_train.checkpoint import load_checkpoint
from recordkit_train.cli import main
from recordkit_train.config import ConfigError, TrainConfig
from recordkit_train.distributed import DistEnv
from recordkit_train.engine import train
from recordkit_train.preemption import PREEMPTED_EXIT_CODE, Preempted, StopRequest, trim_trace
from tests.tinyrun import colour_shards

ROOT = Path(__file__).resolve().parent.parent
HARNESS = str(ROOT / "tests" / "helpers" / "signal_rank.py")
N_TRAIN, BATCH, EPOCHS = 24, 4, 2


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """One intra-op thread: on a busy 2-core machine two spin-waiting OpenMP threads per step
    made these runs 8x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_shards(tmp_path_factory.mktemp("preempt_shards"), ["a", "b", "c"], N_TRAIN, 5)


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``reference(backend, world)``: the run directory of an uninterrupted run, made once.

    The loader's worker count does not change a single batch (per-sample seeds), so one
    reference serves runs with 0 or 1 workers.
    """
    runs: dict[tuple[str, int], Path] = {}

    def get(backend: str, world: int) -> Path:
        if (backend, world) not in runs:
            out = tmp_path_factory.mktemp(f"full-{backend}-{world}")
            if world == 1:
                train(TrainConfig(data=str(data), out=str(out), **_options(backend)), device="cpu")
            else:
                proc = subprocess.run(
                    _torchrun("-m", "recordkit_train", *_args(data, out, backend)),
                    env=_env(), capture_output=True, text=True, timeout=300,
                )  # fmt: skip
                assert proc.returncode == 0, proc.stderr[-3000:]
            runs[backend, world] = out
        return runs[backend, world]

    return get


def _options(backend: str) -> dict[str, Any]:
    return {
        "arch": "mobilenet_v3_small", "epochs": EPOCHS, "batch_size": BATCH, "image_size": 16,
        "precision": "fp32", "lr": 0.05, "warmup_epochs": 0.0, "backend": backend,
        "workers": 1, "print_freq": 2, "deterministic": True, "progress": False,
        # the same intra-op threads in every run, whatever --workers: by default a CPU run
        # gives the model the cores the workers leave, and another thread count sums in
        # another order (not bitwise)
        "threads": 1,
    }  # fmt: skip


def _args(data: Path, out: Path, backend: str, *extra: str) -> list[str]:
    args = ["run", "--data", str(data), "--out", str(out), "--device", "cpu"]
    for key, value in _options(backend).items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not False:
            args += [flag, str(value)]
    return [a for a in args if a != "--progress"] + ["--no-progress", *extra]


def _kill_step(total: int) -> int:
    """A random step in [1, total - 1] (the signal arrives while that step runs)."""
    fixed = os.environ.get("RECORDKIT_PREEMPT_STEP")
    return int(fixed) if fixed else random.Random().randint(1, total - 1)


def _trace(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]


def _assert_same_run(full: Path, resumed: Path, note: str) -> None:
    a, b = _trace(full), _trace(resumed)
    assert [r["step"] for r in a] == list(range(1, len(a) + 1)), note
    assert a == b, note  # every step's loss and LR, bit for bit (JSON keeps float64 exactly)
    wa, wb = (
        load_checkpoint(full / "last.pt")["model"],
        load_checkpoint(resumed / "last.pt")["model"],
    )
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), note
    rows_a = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows_b] == list(range(EPOCHS)), note
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-12), note
        assert rb["val_top1"] == ra["val_top1"], note


# --- world size 1, in this process ----------------------------------------------------------


def _signal_at(monkeypatch: pytest.MonkeyPatch, step: int, signum: int) -> None:
    real, calls = engine._train_step, [0]

    def _step(**kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == step:
            os.kill(os.getpid(), signum)  # arrives while the step runs, as a real notice would
        return real(**kwargs)

    monkeypatch.setattr(engine, "_train_step", _step)


@pytest.mark.parametrize(
    ("backend", "signum"),
    [
        pytest.param("torch", signal.SIGTERM, id="torch-SIGTERM"),
        pytest.param("dali", signal.SIGUSR1, id="dali-SIGUSR1", marks=pytest.mark.dali),
    ],
)
def test_stopped_and_resumed_equals_uninterrupted(
    data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    reference: Any,
    backend: str,
    signum: int,
) -> None:
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    opts = _options(backend)
    full = reference(backend, 1)
    total = EPOCHS * N_TRAIN // BATCH
    step = _kill_step(total)
    note = f"signal during step {step} of {total}"
    with monkeypatch.context() as m:
        _signal_at(m, step, signum)
        with pytest.raises(Preempted) as info:
            train(TrainConfig(data=str(data), out=str(tmp_path / "run"), **opts), device="cpu")
    # a stop seen after an epoch's last step is that epoch's last batch, not the next epoch's
    # first: validation of the epoch has not run yet
    assert info.value.epoch * (N_TRAIN // BATCH) + info.value.batch == step, note
    assert 0 < info.value.batch <= N_TRAIN // BATCH, note
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] * (N_TRAIN // BATCH) + state["batch"] == step, note
    assert len(_trace(tmp_path / "run")) == step, note
    resumed = TrainConfig(
        data=str(data), out=str(tmp_path / "run"), resume=str(tmp_path / "run"), **opts
    )
    train(resumed, device="cpu")
    _assert_same_run(full, tmp_path / "run", note)


def test_cli_exits_75_with_one_line(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _signal_at(monkeypatch, 2, signal.SIGUSR1)
    args = _args(data, tmp_path / "run", "torch") + ["--epochs", "1", "--workers", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == PREEMPTED_EXIT_CODE == 75, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("recordkit-train: stopped on SIGUSR1 after epoch 0, batch 2; wrote ")
    assert "Traceback" not in result.output


def test_checkpoint_every_survives_a_hard_kill(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: Any
) -> None:
    """--checkpoint-every: a run that dies without warning (no signal, no checkpoint of its own)
    resumes from the last periodic checkpoint and still equals the uninterrupted run."""
    opts = {**_options("torch"), "workers": 0}
    real, calls = engine._train_step, [0]

    def _dies_at_10(**kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 10:
            raise RuntimeError("killed")
        return real(**kwargs)

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(engine, "_train_step", _dies_at_10)
        with pytest.raises(RuntimeError, match="killed"):
            train(
                TrainConfig(data=str(data), out=str(run), checkpoint_every=4, **opts), device="cpu"
            )
    state = load_checkpoint(run / "last.pt")
    # Steps 4 (epoch 0, batch 4), 6 (the end of epoch 0), 8 (epoch 1, batch 2); died in 10.
    assert (state["epoch"], state["batch"]) == (1, 2)
    train(TrainConfig(data=str(data), out=str(run), resume=str(run), **opts), device="cpu")
    _assert_same_run(reference("torch", 1), run, "died at step 10, checkpoint at 8")


def test_mid_epoch_checkpoint_needs_the_same_world_and_batch(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opts = {**_options("torch"), "workers": 0, "epochs": 1}
    _signal_at(monkeypatch, 2, signal.SIGTERM)
    with pytest.raises(Preempted):
        train(TrainConfig(data=str(data), out=str(tmp_path), **opts), device="cpu")
    monkeypatch.undo()
    other = {**opts, "batch_size": 2}
    with pytest.raises(ConfigError, match="written mid-epoch by 1 ranks x 4 images"):
        train(
            TrainConfig(data=str(data), out=str(tmp_path), resume=str(tmp_path), **other),
            device="cpu",
        )


# --- a remote dataset (nginx), through the CLI ---------------------------------------------


@pytest.fixture(scope="module")
def remote_data(nginx: Any) -> Any:
    """The training data as six shards of four served over http://, and a cache limit with
    room for three of them (the smallest the streaming allows: one-shard shuffle windows)."""
    root = colour_shards(nginx.root / "preempt", ["a", "b", "c"], N_TRAIN, 5, records_per_shard=4)
    shards = list(root.glob("train-*.tfrecord"))
    limit = 3 * max(p.stat().st_size for p in shards) + 64
    assert len(shards) == 6 and limit < sum(p.stat().st_size for p in shards)
    yield f"{nginx.url}/preempt/", limit
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=pytest.mark.dali)])
def test_remote_run_stopped_and_resumed_equals_uninterrupted(
    remote_data: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """``recordkit-train run --data http://…`` stopped by SIGTERM at a random step (exit 75),
    then ``--resume``: the same steps.jsonl, metrics and final weights as the run that was
    never stopped, each run with its own empty cache."""
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    url, limit = remote_data

    def run(out: Path, *extra: str) -> Any:
        cache = ["--cache-dir", str(out.parent / f"cache-{out.name}"), "--cache-limit", str(limit)]
        return CliRunner().invoke(main, _args(url, out, backend, *cache, *extra))  # type: ignore[arg-type]

    full, stopped = tmp_path / "full", tmp_path / "run"
    res = run(full)
    assert res.exit_code == 0, res.output
    total = EPOCHS * N_TRAIN // BATCH
    step = _kill_step(total)
    note = f"{backend}: SIGTERM during step {step} of {total}"
    with monkeypatch.context() as m:
        _signal_at(m, step, signal.SIGTERM)
        res = run(stopped)
    assert res.exit_code == PREEMPTED_EXIT_CODE, res.output
    state = load_checkpoint(stopped / "last.pt")
    assert state["epoch"] * (N_TRAIN // BATCH) + state["batch"] == step, note
    assert len(_trace(stopped)) == step, note
    res = run(stopped, "--resume", str(stopped))
    assert res.exit_code == 0, res.output
    _assert_same_run(full, stopped, note)


# --- world size 2, torchrun (gloo) ----------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return env


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            *args]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=pytest.mark.dali)])
def test_two_ranks_stopped_and_resumed_equal_uninterrupted(
    data: Path, tmp_path: Path, reference: Any, backend: str
) -> None:
    """torch: rank 0 sends SIGTERM to torchrun, which forwards it to both ranks (what a
    scheduler does). DALI: only rank 0 gets SIGUSR1. Either way both ranks stop after the
    same step, each with exit code 75, and the resumed run equals the uninterrupted one."""
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    full, run = reference(backend, 2), tmp_path / "run"
    per_epoch = N_TRAIN // 2 // BATCH
    total = EPOCHS * per_epoch
    step = _kill_step(total - 1)
    if backend == "torch":
        signals = {"SIGNAL_STEPS": f"0:{step}", "SIGNAL_TARGET": "launcher"}
    else:
        signals = {"SIGNAL_STEPS": f"0:{step}", "SIGNAL": "SIGUSR1"}
    note = f"{signals} of {total} steps"
    proc = subprocess.run(
        _torchrun(HARNESS, *_args(data, run, backend)),
        env=_env(**signals), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0, note
    name = "SIGTERM" if backend == "torch" else "SIGUSR1"
    # Under DALI rank 1 saw no signal of its own: it stopped on rank 0's.
    assert proc.stderr.count("recordkit-train: stopped on ") == 2, proc.stderr[-3000:]
    assert f"recordkit-train: stopped on {name} after epoch" in proc.stderr, note
    state = load_checkpoint(run / "last.pt")
    stopped = state["epoch"] * per_epoch + state["batch"]
    # After the step during which the signal came (DALI: exactly; torch: torchrun forwards it
    # within milliseconds, but a loaded machine may delay that by a step or more).
    assert step <= stopped <= total and len(_trace(run)) == stopped, note
    if backend == "dali":
        assert stopped == step, note
    assert state["world_size"] == 2 and len(state["ranks"]) == 2, note
    proc = subprocess.run(
        _torchrun("-m", "recordkit_train", *_args(data, run, backend, "--resume", str(run))),
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {run / 'last.pt'} at epoch {state['epoch']}" in proc.stderr
    _assert_same_run(full, run, note)


# --- units ----------------------------------------------------------------------------------


def test_first_sigterm_asks_to_stop_the_second_does_what_sigterm_did_before() -> None:
    env = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    seen: list[int] = []

    def before(signum: int, frame: object) -> None:
        seen.append(signum)

    previous = signal.signal(signal.SIGTERM, before)
    try:
        with StopRequest(env) as stop:
            assert not stop.poll()
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.poll() and stop.signal_name == "SIGUSR1" and seen == []
            os.kill(os.getpid(), signal.SIGTERM)  # the second SIGTERM
            assert seen == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is before
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_trace_trim_keeps_the_steps_before_the_resume_point(tmp_path: Path) -> None:
    path = tmp_path / "steps.jsonl"
    rows = [{"step": s, "epoch": 0, "iter": s, "loss": 1.0 / s, "lr": 0.1} for s in (1, 2, 3, 4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "lo')
    trim_trace(path, 3)
    assert _trace(tmp_path) == rows[:2]


def test_pipelined_poll_decides_from_the_launch_one_interval_earlier() -> None:
    """The CUDA pattern (here on a one-process gloo group standing in for two ranks): every
    k-th poll reads the reduction launched k polls before and launches the next, so a request
    made at step 4 with k = 3 rides the launch at step 6 and stops the ranks after step 9."""
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        env = DistEnv(rank=0, local_rank=0, world_size=2, device=torch.device("cpu"))
        stop = StopRequest(env, poll_every=3, pipelined=True)
        decisions = []
        for step in range(1, 10):
            if step == 4:
                stop.request()
            decisions.append(stop.poll())
        assert decisions == [False] * 8 + [True]
        assert StopRequest(env, pipelined=True).poll_now() is False
        late = StopRequest(env, poll_every=3, pipelined=True)
        for _ in range(3):
            late.poll()  # launches (nothing requested)
        late.request()
        assert late.poll_now() is True  # the pending launch said no; the fresh one says yes
    finally:
        dist.destroy_process_group()
