"""Benchmark modes (``engine.benchmark``) and ``tools/bench_train.py``'s JSON, on tiny inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recordkit_train.config import ConfigError, TrainConfig
from recordkit_train.engine import benchmark
from tests.test_train_engine import _config, data  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("mode", ["synthetic", "io", "real"])
def test_benchmark_modes(data: Path, tmp_path: Path, mode: str) -> None:  # noqa: F811
    # LeNet: the modes and their bookkeeping are under test, not a model (resnet18: 3x the time)
    result = benchmark(_config(data, tmp_path / "run", iters=6, arch="lenet"), mode, device="cpu")
    assert result["iters"] == 6
    assert result["samples_per_s"] > 0
    assert not (tmp_path / "run" / "last.pt").exists()  # a benchmark writes no checkpoint


def test_benchmark_refuses_bad_requests(tmp_path: Path) -> None:
    cfg = TrainConfig(synthetic=True, out=str(tmp_path), arch="resnet18", iters=2)
    with pytest.raises(ConfigError, match="unknown benchmark mode 'fast'"):
        benchmark(cfg, "fast", device="cpu")
    with pytest.raises(ConfigError, match="the real benchmark needs data"):
        benchmark(cfg, "real", device="cpu")


def test_bench_train_tool_json(tmp_path: Path) -> None:
    cmd = [
        sys.executable, str(ROOT / "tools" / "bench_train.py"), "--arch", "lenet",
        "--image-size", "32", "--batch-size", "4", "--iters", "5", "--count", "12",
        "--workers", "0", "--device", "cpu", "--precision", "fp32",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    rates = {m: out[m]["images_per_sec"] for m in ("synthetic", "io", "real")}
    assert all(v > 0 for v in rates.values())
    assert out["real_vs_synthetic"] == pytest.approx(rates["real"] / rates["synthetic"], abs=1e-3)
    assert out["loader_cost"] == pytest.approx(1 - out["real_vs_synthetic"], abs=1e-3)
    assert out["precision"] == "fp32" and out["data"] == "12 generated JPEGs"
