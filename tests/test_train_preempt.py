"""Preemption: a run stopped by SIGTERM / SIGUSR1 mid-epoch and resumed equals an uninterrupted one.

For both loader backends, at world size 1 (in this process) and 2 (torchrun, gloo): the resumed
run's per-step loss trace (``steps.jsonl``) and final weights are bitwise those of the run that
was never stopped (fp32, ``--deterministic``). The model is mobilenet_v3_small, whose classifier
has dropout, so the RNG states must come back too. The step at which the signal arrives is
random (printed on failure; ``RECORDKIT_PREEMPT_STEP`` fixes it).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
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


def _options(backend: str) -> dict[str, Any]:
    return {
        "arch": "mobilenet_v3_small", "epochs": EPOCHS, "batch_size": BATCH, "image_size": 16,
        "precision": "fp32", "lr": 0.05, "warmup_epochs": 0.0, "backend": backend,
        "workers": 1, "print_freq": 2, "deterministic": True, "progress": False,
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


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "signum"),
    [
        pytest.param("torch", signal.SIGTERM, id="torch-SIGTERM"),
        pytest.param("dali", signal.SIGUSR1, id="dali-SIGUSR1", marks=pytest.mark.dali),
    ],
)
def test_stopped_and_resumed_equals_uninterrupted(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str, signum: int
) -> None:
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    opts = _options(backend)
    train(TrainConfig(data=str(data), out=str(tmp_path / "full"), **opts), device="cpu")
    total = EPOCHS * N_TRAIN // BATCH
    step = _kill_step(total)
    note = f"signal during step {step} of {total}"
    with monkeypatch.context() as m:
        _signal_at(m, step, signum)
        with pytest.raises(Preempted) as info:
            train(TrainConfig(data=str(data), out=str(tmp_path / "run"), **opts), device="cpu")
    assert (info.value.epoch, info.value.batch) == divmod(step, N_TRAIN // BATCH), note
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] * (N_TRAIN // BATCH) + state["batch"] == step, note
    assert len(_trace(tmp_path / "run")) == step, note
    resumed = TrainConfig(
        data=str(data), out=str(tmp_path / "run"), resume=str(tmp_path / "run"), **opts
    )
    train(resumed, device="cpu")
    _assert_same_run(tmp_path / "full", tmp_path / "run", note)


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


@pytest.mark.slow
def test_checkpoint_every_survives_a_hard_kill(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--checkpoint-every: a run that dies without warning (no signal, no checkpoint of its own)
    resumes from the last periodic checkpoint and still equals the uninterrupted run."""
    opts = {**_options("torch"), "workers": 0}
    train(TrainConfig(data=str(data), out=str(tmp_path / "full"), **opts), device="cpu")
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
    _assert_same_run(tmp_path / "full", run, "died at step 10, checkpoint at 8")


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
    data: Path, tmp_path: Path, backend: str
) -> None:
    """Two ranks get the signal at different steps (rank 1 one step later, or not at all for
    DALI: only rank 0 sees it); they agree to stop after the same step."""
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    full, run = tmp_path / "full", tmp_path / "run"
    proc = subprocess.run(
        _torchrun("-m", "recordkit_train", *_args(data, full, backend)),
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    per_epoch = N_TRAIN // 2 // BATCH
    total = EPOCHS * per_epoch
    step = _kill_step(total - 1)
    steps = f"0:{step},1:{step + 1}" if backend == "torch" else f"0:{step}"
    note = f"signals {steps} of {total} steps"
    proc = subprocess.run(
        _torchrun(HARNESS, *_args(data, run, backend)),
        env=_env(SIGNAL_STEPS=steps), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0, note
    assert f"exitcode  : {PREEMPTED_EXIT_CODE}" in proc.stderr, proc.stderr[-3000:]
    state = load_checkpoint(run / "last.pt")
    stopped = state["epoch"] * per_epoch + state["batch"]
    # The stop comes after the step during which the first signal arrived.
    assert stopped == step and state["world_size"] == 2 and len(state["ranks"]) == 2, note
    proc = subprocess.run(
        _torchrun("-m", "recordkit_train", *_args(data, run, backend, "--resume", str(run))),
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {run / 'last.pt'} at epoch {state['epoch']}" in proc.stderr
    _assert_same_run(full, run, note)


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_both_ranks_with_a_checkpoint(data: Path, tmp_path: Path) -> None:
    """What a scheduler does: SIGTERM to the launcher, which forwards it to every rank."""
    run = tmp_path / "run"
    args = _args(data, run, "torch", "--epochs", "40", "--print-freq", "1", "--workers", "0")
    launcher = subprocess.Popen(
        _torchrun("-m", "recordkit_train", *args), env=_env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not ((run / "steps.jsonl").is_file() and len(_trace(run)) >= 3):
            assert launcher.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        launcher.send_signal(signal.SIGTERM)
        _, err = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    # Both ranks stopped on the signal torchrun forwarded (no rank was killed before that).
    assert err.count("recordkit-train: stopped on SIGTERM after epoch") == 2, err[-3000:]
    state = load_checkpoint(run / "last.pt")
    trace = _trace(run)
    assert state["epoch"] * 3 + state["batch"] == len(trace) >= 3


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
