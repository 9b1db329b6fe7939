"""The progress bar and TensorBoard scalars of a training run (CPU, tiny shards)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from recordkit_train import reporting
from recordkit_train.config import ConfigError
from recordkit_train.engine import train
from tests.test_train_engine import N_TRAIN, _config, data  # noqa: F401  (fixture)

ITERS = N_TRAIN // 8  # batch 8, drop_last
ARCH = "lenet"  # the reports are under test, not a model: a LeNet step takes milliseconds


def _scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_progress_only_on_rank0_and_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    assert reporting.progress_enabled(True, is_main=False) is False
    assert reporting.progress_enabled(False, is_main=True) is False
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    assert reporting.progress_enabled(None, is_main=True) is False
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert reporting.progress_enabled(None, is_main=True) is True


def test_progress_bar_and_log_lines_share_stderr(
    data: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    engine_log = logging.getLogger("recordkit_train.engine")
    handler = logging.StreamHandler()  # bound to the captured sys.stderr
    handler.setFormatter(logging.Formatter("%(message)s"))
    engine_log.addHandler(handler)
    old_level = engine_log.level
    engine_log.setLevel(logging.INFO)
    try:
        train(_config(data, tmp_path / "run", epochs=1, progress=True, arch=ARCH), device="cpu")
    finally:
        engine_log.removeHandler(handler)
        engine_log.setLevel(old_level)
    err = capsys.readouterr().err
    assert "epoch 0: 100%|" in err or f"{ITERS}/{ITERS}" in err  # the bar reached the end
    # The MXNet-style lines come through whole, each on its own line.
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("train: ")]
    assert [ln.split(",")[1] for ln in lines] == [" iter 2", " iter 4"]
    assert any(ln.startswith("validation: epoch 0, top_1: ") for ln in err.splitlines())


def test_tensorboard_scalars_match_metrics(data: Path, tmp_path: Path) -> None:  # noqa: F811
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    train(_config(data, out, tensorboard=True, arch=ARCH), device="cpu")
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    tb = _scalars(out / "tensorboard")
    assert [s for s, _ in tb["train/loss"]] == [2, 4, 6, 8]  # print_freq 2, 4 iters/epoch
    assert [s for s, _ in tb["val/top1"]] == [ITERS, 2 * ITERS]
    assert [v for _, v in tb["val/top1"]] == pytest.approx([r["val_top1"] for r in rows])
    assert [v for _, v in tb["epoch/train_loss"]] == pytest.approx([r["train_loss"] for r in rows])
    assert len(tb["lr"]) == 4 and all(v > 0 for _, v in tb["lr"])


def test_tensorboard_resume_drops_the_redone_steps(data: Path, tmp_path: Path) -> None:  # noqa: F811
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    train(_config(data, out, epochs=2, tensorboard=True, arch=ARCH), device="cpu")
    # Resume from epoch 1 as if epoch 1 had to be redone: its old events must not double up.
    from recordkit_train.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(out / "last.pt")
    state["epoch"] = 1
    save_checkpoint(tmp_path / "epoch1.pt", state)
    train(
        _config(
            data, out, epochs=2, tensorboard=True, resume=str(tmp_path / "epoch1.pt"), arch=ARCH
        ),
        device="cpu",
    )
    tb = _scalars(out / "tensorboard")
    assert [s for s, _ in tb["val/top1"]] == [ITERS, 2 * ITERS]
    assert [s for s, _ in tb["train/loss"]] == [2, 4, 6, 8]


def test_tensorboard_missing_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name: str, *args: object, **kwargs: object):
        if name == "torch.utils.tensorboard":
            raise ImportError("no tensorboard")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ConfigError, match=r"pip install 'recordkit\[tensorboard\]'"):
        reporting.Reporter(tmp_path, progress=False, tensorboard=True)
