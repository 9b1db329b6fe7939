"""The training engine end to end on tiny generated shards (CPU, resnet18 at 32 px).

Each record is a flat-coloured 32x32 image whose colour depends on its class, so a few steps
already learn something; the train split holds 32 records (4 batches of 8) and the val split
13 (never a multiple of batch x ranks), to check that evaluation counts exactly N records.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from recordkit import Record
from recordkit_train import preemption
from recordkit_train.checkpoint import load_checkpoint
from recordkit_train.cli import main
from recordkit_train.config import ConfigError, TrainConfig
from recordkit_train.engine import train
from recordkit_train.precision import resolve_precision
from tests.conftest import assert_one_line_error, write_shards

N_TRAIN, N_VAL = 32, 13
COLOURS = [(220, 30, 30), (30, 220, 30), (30, 30, 220)]


def _record(i: int) -> Record:
    label = i % 3
    jitter = (i * 7) % 25
    colour = tuple(min(255, c + jitter) for c in COLOURS[label])
    buf = io.BytesIO()
    fmt = "PNG" if i % 4 == 0 else "JPEG"
    Image.new("RGB", (32, 32), colour).save(buf, fmt)
    return Record(
        image=buf.getvalue(),
        labels=(label,),
        filename=f"class{label}/{i:03d}.{fmt.lower()}",
        index=i,
        format="png" if fmt == "PNG" else "jpeg",
        height=32,
        width=32,
        channels=3,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train_shards")
    splits = {
        "train": [_record(i) for i in range(N_TRAIN)],
        "val": [_record(i) for i in range(N_TRAIN, N_TRAIN + N_VAL)],
    }
    return write_shards(root, splits, records_per_shard=8)


def _config(data: Path, out: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "data": str(data),
        "out": str(out),
        "arch": "resnet18",
        "epochs": 2,
        "batch_size": 8,
        "image_size": 32,
        "small_input": False,  # the ImageNet stem: 16x less compute at 32 px
        "precision": "fp32",
        "lr": 0.05,
        "warmup_epochs": 0.5,
        "backend": "torch",
        "workers": 0,
        "print_freq": 2,
    }
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run_dir(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(_config(data, out), device="cpu")
    return out


def test_config_resolves_recipe_defaults() -> None:
    cfg = TrainConfig(data="x").resolved("cpu", world_size=4)
    assert cfg.lr == pytest.approx(0.256 * 4)
    cpu_default = resolve_precision(None, "cpu")  # bf16 or fp32, from this CPU
    assert cfg.warmup_epochs == 5 and cfg.precision == cpu_default and cfg.channels_last is False
    assert TrainConfig(data="x", lr_schedule="step").resolved("cpu").warmup_epochs == 0
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="arch"):
        TrainConfig(data="x", arch="vgg")


def test_run_writes_outputs(run_dir: Path, data: Path) -> None:
    config = json.loads((run_dir / "config.json").read_text())
    assert config["arch"] == "resnet18" and config["precision"] == "fp32"
    rows = _rows(run_dir)
    assert [r["epoch"] for r in rows] == [0, 1]
    for row in rows:
        assert row["val_samples"] == N_VAL
        assert row["train_loss"] > 0 and row["samples_per_s"] > 0 and row["lr"] > 0
        assert 0 <= row["val_top1"] <= 100
    last = load_checkpoint(run_dir / "last.pt")
    assert last["epoch"] == 2 and last["classes"] == ["class0", "class1", "class2"]
    assert set(last) >= {"model", "optimizer", "scaler", "schedule", "rng", "config"}
    best = load_checkpoint(run_dir / "best.pt")
    assert best["best_metric"] == max(r["val_top1"] for r in rows)


def test_eval_reproduces_logged_top1(run_dir: Path, data: Path) -> None:
    rows = _rows(run_dir)
    best = load_checkpoint(run_dir / "best.pt")
    logged = next(r for r in rows if r["epoch"] == best["epoch"] - 1)
    result = CliRunner().invoke(
        main,
        [
            "eval",
            "--data",
            str(data),
            "--checkpoint",
            str(run_dir / "best.pt"),
            "--batch-size",
            "5",
            "--backend",
            "torch",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    got = json.loads(result.output.strip().splitlines()[-1])
    assert got["samples"] == N_VAL
    assert got["top1"] == pytest.approx(logged["val_top1"], abs=1e-9)
    assert got["top5"] == pytest.approx(logged["val_top5"], abs=1e-9)


class _Crash(Exception):
    pass


def test_resume_matches_straight_run(
    run_dir: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "resumed"
    real_save = preemption.save_checkpoint  # the Checkpointer writes last.pt / best.pt

    def save_then_crash(path: Path, state: dict) -> Path:
        written = real_save(path, state)
        if Path(path).name == "last.pt":
            raise _Crash  # the job dies right after epoch 0's checkpoint
        return written

    out.mkdir()
    (out / "metrics.jsonl").write_text('{"epoch": 7}\n')  # a stale run: a fresh one drops it
    monkeypatch.setattr(preemption, "save_checkpoint", save_then_crash)
    with pytest.raises(_Crash):
        train(_config(data, out), device="cpu")
    monkeypatch.undo()
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    train(_config(data, out, resume=str(out)), device="cpu")
    straight = load_checkpoint(run_dir / "last.pt")["model"]
    resumed = load_checkpoint(out / "last.pt")["model"]
    assert straight.keys() == resumed.keys()
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert [r["epoch"] for r in _rows(out)] == [0, 1]
    assert _rows(out)[1]["val_top1"] == pytest.approx(_rows(run_dir)[1]["val_top1"])


def test_bad_data_is_one_error_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["run", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]
    )
    assert_one_line_error(result)


def test_missing_checkpoint_is_one_error_line(data: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["eval", "--data", str(data), "--checkpoint", str(tmp_path / "nope.pt")]
    )
    assert_one_line_error(result, "nope.pt", "does not exist")


def test_synthetic_and_test_io(data: Path, tmp_path: Path) -> None:
    cfg = _config(data, tmp_path, synthetic=True, iters=3)
    assert train(cfg, device="cpu")["samples_per_s"] > 0
    cfg = _config(data, tmp_path, test_io=True, iters=6)
    assert train(cfg, device="cpu")["iters"] == 6


def test_torchrun_two_processes_gloo(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "recordkit_train", "run", "--data", str(data), "--out", str(out),
        "--arch", "resnet18", "--epochs", "1", "--batch-size", "4", "--image-size", "32",
        "--precision", "fp32", "--backend", "torch", "--workers", "0", "--device", "cpu",
        "--print-freq", "2",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = _rows(out)
    assert len(rows) == 1 and rows[0]["val_samples"] == N_VAL
    assert "train: epoch 0, iter 2," in proc.stderr
    assert proc.stderr.count("validation: epoch 0") == 1  # rank 0 only
    assert load_checkpoint(out / "last.pt")["epoch"] == 1 and (out / "best.pt").is_file()
    # Rank 0's BatchNorm statistics were shared before validating: eval reproduces top-1.
    result = CliRunner().invoke(
        main,
        ["eval", "--data", str(data), "--checkpoint", str(out / "best.pt"), "--backend",
         "torch", "--workers", "0", "--device", "cpu", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    got = json.loads(result.output.strip().splitlines()[-1])
    assert got["samples"] == N_VAL
    assert got["top1"] == pytest.approx(rows[0]["val_top1"], abs=1e-9)
