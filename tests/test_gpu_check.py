"""tools/gpu_check.py end to end on the CPU (``--dry-run``): data steps run, CUDA steps skip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CUDA_STEPS = ("resume", "preempt", "sync_debug", "throughput", "nccl")


@pytest.mark.slow
def test_dry_run_reports_every_step(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = report["steps"]
    assert list(steps) == [
        "environment", "pytest_gpu", "data", "resume", "preempt", "sync_debug", "throughput",
        "decode", "nccl",
    ]  # fmt: skip
    assert report["dry_run"] is True
    env = steps["environment"]["result"]
    assert env["torch"] and "cuda_problem" in env and "cpus" in env
    data = steps["data"]["result"]
    assert data["images"] == 64 and data["train"] + data["val"] == 64
    assert "cmyk.jpg" in data["tricky"] and "exif6.jpg" in data["tricky"]
    for name in CUDA_STEPS:
        assert steps[name] == {"status": "skipped", "reason": "dry run", "seconds": 0.0}
    assert steps["pytest_gpu"]["status"] == "skipped"
    # The GPU-decode code path, run on the CPU, agrees with the CPU workers image by image
    # (an EXIF-rotated JPEG used to come out sideways there).
    decode = steps["decode"]
    assert decode["status"] == "ok", decode
    diffs = decode["result"]["mean_abs_diff_vs_cpu_path"]
    assert len(diffs) == 8 and max(diffs.values()) <= 0.1
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| decode | ok |" in table and "| throughput | skipped |" in table
    assert table.strip().splitlines()[-1] in done.stdout


def test_missing_package_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "tools"))
    monkeypatch.setattr(gpu_check, "REQUIRED", (*gpu_check.REQUIRED, "no_such_module_xyz"))
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: gpu_check needs no_such_module_xyz")
    assert not (tmp_path / "gpu_check.json").exists()
