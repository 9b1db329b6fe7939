"""A crashed, killed or hung rank ends a 2-process gloo job with clear messages, not a hang.

tests/helpers/crash_rank.py runs ``recordkit-train run`` with rank 1 failing at its 2nd step.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_train_engine import data  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
HARNESS = str(ROOT / "tests" / "helpers" / "crash_rank.py")


def _args(data: Path, out: Path, *extra: str) -> list[str]:  # noqa: F811
    return [
        "run", "--data", str(data), "--out", str(out), "--arch", "resnet18", "--epochs", "1",
        "--batch-size", "4", "--image-size", "32", "--precision", "fp32", "--backend", "torch",
        "--workers", "0", "--device", "cpu", "--print-freq", "1", "--no-small-input", *extra,
    ]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_reports_the_failed_rank_as_root_cause(data: Path, tmp_path: Path) -> None:  # noqa: F811
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        HARNESS, "raise", "--", *_args(data, tmp_path / "run"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    err = proc.stderr
    assert "rank 1 of 2 failed: RuntimeError: injected failure on this rank" in err
    # The survivor says why it stopped, in one line and without a traceback of its own.
    assert "Error: rank 0 of 2 stopped" in err
    assert "[rank0]: Traceback" not in err
    # torchrun's summary names rank 1's exception as the root cause (recorded error file).
    root = err[err.index("Root Cause") :]
    assert "rank      : 1" in root and "injected failure on this rank" in root


def _launch_by_hand(
    data: Path,  # noqa: F811
    out: Path,
    mode: str,
    *extra: str,
) -> tuple[subprocess.CompletedProcess[str], subprocess.Popen[str]]:
    """Start both ranks without torchrun's agent (as a batch system would): no one kills rank 0."""
    env = _env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2")
    cmd = [sys.executable, HARNESS, mode, "--", *_args(data, out, *extra)]
    rank1 = subprocess.Popen(
        cmd,
        env={**env, "RANK": "1", "LOCAL_RANK": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        rank0 = subprocess.run(
            cmd,
            env={**env, "RANK": "0", "LOCAL_RANK": "0"},
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        rank1.kill()
        rank1.communicate()
    return rank0, rank1


def test_killed_rank_ends_the_survivor_with_one_line(data: Path, tmp_path: Path) -> None:  # noqa: F811
    rank0, _ = _launch_by_hand(data, tmp_path / "run", "exit")
    assert rank0.returncode == 1
    errors = [ln for ln in rank0.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, rank0.stderr[-3000:]
    assert errors[0].startswith("Error: rank 0 of 2 stopped: lost contact with another rank (")
    assert "Traceback" not in rank0.stderr


def test_hung_rank_times_out_instead_of_hanging(data: Path, tmp_path: Path) -> None:  # noqa: F811
    rank0, _ = _launch_by_hand(data, tmp_path / "run", "hang", "--dist-timeout", "5")
    assert rank0.returncode == 1
    assert "Error: rank 0 of 2 stopped: lost contact with another rank" in rank0.stderr
    assert "Timed out" in rank0.stderr or "timed out" in rank0.stderr
