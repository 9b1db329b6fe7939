"""Mixup / CutMix, the soft-target loss, EMA of weights, and the training CLI's augmentation
options, checked by what they do to pixels, targets and weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from recordkit_train import engine
from recordkit_train.checkpoint import load_checkpoint
from recordkit_train.cli import main
from recordkit_train.config import ConfigError, TrainConfig
from recordkit_train.ema import ModelEma
from recordkit_train.engine import train
from recordkit_train.mixup import (
    Mixer,
    MixParams,
    cutmix_box,
    dominant_labels,
    mix_targets,
    soft_target_cross_entropy,
)
from tests.conftest import assert_one_line_error
from tests.tinyrun import colour_shards

C = 5


def _batch(b: int = 6, h: int = 8, w: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Image ``i`` is filled with the value ``i + 1``, so every mixed pixel names its sources."""
    images = torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, h, w)
    return images.clone(), torch.tensor([0, 1, 2, 3, 4, 0][:b])


# -- mixup / cutmix ------------------------------------------------------------------------


def test_mixup_pixels_and_targets_are_lambda_a_plus_one_minus_lambda_b() -> None:
    mixer = Mixer(mixup_alpha=0.2, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=C)
    images, labels = _batch()
    orig = images.clone()
    lam = 0.3
    out, targets = mixer.apply(images, labels, MixParams(lam))
    torch.testing.assert_close(out, lam * orig + (1 - lam) * orig.flip(0))
    off, on = 0.1 / C, 1 - 0.1 + 0.1 / C
    y = torch.full((6, C), off).scatter_(1, labels.view(-1, 1), on)
    torch.testing.assert_close(targets, lam * y + (1 - lam) * y.flip(0))
    torch.testing.assert_close(targets.sum(1), torch.ones(6))
    # image 0 (label 0, share 0.3) is mixed with image 5 (label 0): all on class 0
    assert targets[0, 0] == pytest.approx(on)
    # image 1 (label 1, 0.3) with image 4 (label 4, 0.7): dominant label 4
    assert dominant_labels(targets)[1] == 4


def test_cutmix_box_area_matches_lambda_and_pastes_the_flipped_image() -> None:
    mixer = Mixer(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=C, seed=3)
    seen_cut = 0
    for step in range(40):
        params = mixer.params(16, 20, epoch=0, step=step)
        assert params.box is not None
        top, bottom, left, right = params.box
        area = (bottom - top) * (right - left)
        assert params.lam == pytest.approx(1 - area / (16 * 20))
        images, labels = _batch(h=16, w=20)
        orig = images.clone()
        out, targets = mixer.apply(images, labels, params)
        inside = torch.zeros(16, 20, dtype=torch.bool)
        inside[top:bottom, left:right] = True
        # inside the box: the partner's pixels (i + 1 -> b - i); outside: untouched
        assert torch.equal(out[..., inside], orig.flip(0)[..., inside])
        assert torch.equal(out[..., ~inside], orig[..., ~inside])
        # the targets give the partner exactly the pasted share of the pixels
        y = torch.nn.functional.one_hot(labels, C).float()
        torch.testing.assert_close(targets, params.lam * y + (1 - params.lam) * y.flip(0))
        seen_cut += area > 0
    assert seen_cut > 30


def test_cutmix_box_follows_timm_rand_bbox() -> None:
    rng = np.random.default_rng(0)
    top, bottom, left, right = cutmix_box(32, 32, 0.75, rng)  # sides int(32 * 0.5) = 16
    rng = np.random.default_rng(0)
    cy, cx = int(rng.integers(0, 32)), int(rng.integers(0, 32))
    assert (top, bottom) == (max(cy - 8, 0), min(cy + 8, 32))
    assert (left, right) == (max(cx - 8, 0), min(cx + 8, 32))


def test_mixer_draws_are_reproducible_and_follow_the_probabilities() -> None:
    both = Mixer(mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=0.5, num_classes=C, seed=1)
    draws = [both.params(32, 32, epoch=2, step=s) for s in range(400)]
    assert draws == [both.params(32, 32, epoch=2, step=s) for s in range(400)]
    assert draws != [both.params(32, 32, epoch=3, step=s) for s in range(400)]
    cut = sum(d.box is not None for d in draws) / len(draws)
    assert 0.4 < cut < 0.6
    never = Mixer(mixup_alpha=0.2, cutmix_alpha=0.0, prob=0.0, num_classes=C)
    assert all(never.params(8, 8, 0, s) == MixParams(1.0) for s in range(20))
    # mixup lambdas come from Beta(0.2, 0.2): mostly near 0 or 1, mean 1/2
    lams = np.array([d.lam for d in draws if d.box is None])
    assert abs(lams.mean() - 0.5) < 0.1 and np.mean((lams < 0.1) | (lams > 0.9)) > 0.5


def test_soft_target_loss_equals_cross_entropy_with_label_smoothing() -> None:
    torch.manual_seed(0)
    logits = torch.randn(7, C)
    labels = torch.randint(0, C, (7,))
    soft = mix_targets(labels, C, 1.0, smoothing=0.1)
    expected = nn.CrossEntropyLoss(label_smoothing=0.1)(logits, labels)
    torch.testing.assert_close(soft_target_cross_entropy(logits, soft), expected)
    # and a mixed target is the lambda-weighted sum of the two hard losses (no smoothing)
    lam = 0.35
    mixed = mix_targets(labels, C, lam)
    ce = nn.CrossEntropyLoss()
    expected = lam * ce(logits, labels) + (1 - lam) * ce(logits, labels.flip(0))
    torch.testing.assert_close(soft_target_cross_entropy(logits, mixed), expected)


# -- EMA -----------------------------------------------------------------------------------


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.bn = nn.BatchNorm1d(1)


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_after_k_steps_equals_the_closed_form(warmup: bool) -> None:
    model = _Toy()
    d = 0.9
    ema = ModelEma(model, d, warmup=warmup)
    values = [float(v) for v in range(1, 8)]  # the weight after step k is k
    expect = 0.0
    for k, v in enumerate(values, start=1):
        with torch.no_grad():
            model.lin.weight.fill_(v)
            model.bn.running_mean.fill_(10 * v)
            model.bn.num_batches_tracked.fill_(k)
        ema.update(model, step=k)
        dk = 0.0 if k == 1 else (min(d, 1 - k ** (-2 / 3)) if warmup else d)
        assert ema.decay_at(k) == pytest.approx(dk)
        expect = dk * expect + (1 - dk) * v
        assert ema.module.lin.weight[0, 0].item() == pytest.approx(expect, rel=1e-6)
        assert ema.module.bn.running_mean.item() == pytest.approx(10 * expect, rel=1e-6)
        assert int(ema.module.bn.num_batches_tracked) == k
    if not warmup:  # closed form: ema_k = sum_j (1 - d) d^(k - j) v_j, with v_1's weight d^(k-1)
        k = len(values)
        closed = values[0] * d ** (k - 1) + sum(
            (1 - d) * d ** (k - j) * values[j - 1] for j in range(2, k + 1)
        )
        assert ema.module.lin.weight[0, 0].item() == pytest.approx(closed, rel=1e-6)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


def test_ema_copy_buffers_copies_bn_statistics() -> None:
    model = _Toy()
    ema = ModelEma(model, 0.5, copy_buffers=True)
    ema.update(model, 1)  # decay 0: a copy
    w0 = model.lin.weight.detach().clone()
    with torch.no_grad():
        model.bn.running_mean.fill_(4.0)
        model.lin.weight.fill_(4.0)
    ema.update(model, 2)
    assert ema.module.bn.running_mean.item() == 4.0  # copied, not averaged
    torch.testing.assert_close(ema.module.lin.weight, 0.5 * w0 + 0.5 * 4.0)


# -- configuration and CLI -----------------------------------------------------------------


def test_config_builds_the_loader_augment() -> None:
    cfg = TrainConfig(data="x", aug="pad-crop", pad=2, hflip=0.25, auto_augment="randaugment")
    aug = cfg.augment()
    assert (aug.mode, aug.pad, aug.flip, aug.auto_augment) == ("pad-crop", 2, 0.25, "randaugment")
    assert aug.val_resize_ratio == 1.0  # pad-crop: train and validation at the same scale
    assert TrainConfig(data="x").augment().val_resize_ratio == 0.875
    assert TrainConfig(data="x", aug="none", val_resize_ratio=0.5).augment().val_resize_ratio == 0.5
    cfg = TrainConfig(data="x", rrc_scale=(0.35, 1), rrc_ratio=(0.5, 2))
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.augment().scale == (0.35, 1.0) and cfg.augment().ratio == (0.5, 2.0)
    for bad in ({"rrc_scale": (0.5, 0.1)}, {"aug": "big"}, {"mixup": -1}, {"ema_decay": 1.0}):
        with pytest.raises(ConfigError):
            TrainConfig(data="x", **bad)  # type: ignore[arg-type]


def test_cli_parses_ranges_and_rejects_bad_ones_in_one_line(tmp_path: Path) -> None:
    seen: dict[str, TrainConfig] = {}

    def fake_train(config: TrainConfig, **kw: object) -> dict:
        seen["cfg"] = config
        return {}

    mp = pytest.MonkeyPatch()
    mp.setattr(engine, "train", fake_train)
    try:
        args = ["run", "--data", str(tmp_path), "--rrc-scale", "0.35,1", "--rrc-ratio", "3/4,4/3"]
        args += ["--aug", "pad-crop", "--pad", "2", "--auto-augment", "trivialaugment"]
        args += ["--mixup", "0.2", "--cutmix", "1.0", "--ema-decay", "0.999", "--ema-warmup"]
        result = CliRunner().invoke(main, args)
    finally:
        mp.undo()
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert cfg.rrc_scale == (0.35, 1.0) and cfg.rrc_ratio == pytest.approx((0.75, 4 / 3))
    assert (cfg.aug, cfg.pad, cfg.auto_augment) == ("pad-crop", 2, "trivialaugment")
    assert (cfg.mixup, cfg.cutmix, cfg.ema_decay, cfg.ema_warmup) == (0.2, 1.0, 0.999, True)
    result = CliRunner().invoke(main, ["run", "--data", str(tmp_path), "--rrc-scale", "0.5"])
    assert result.exit_code == 2 and "MIN,MAX" in result.output
    result = CliRunner().invoke(main, ["run", "--data", str(tmp_path), "--rrc-scale", "0.9,0.1"])
    assert_one_line_error(result, "scale")


# -- a real run ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("aug_shards")
    return colour_shards(root, ["a", "b", "c"], n_train=24, n_val=7)


def _config(data: Path, out: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "data": str(data), "out": str(out), "arch": "resnet18", "epochs": 2, "batch_size": 8,
        "image_size": 32, "small_input": False, "precision": "fp32", "lr": 0.05,
        "warmup_epochs": 0.5, "backend": "torch", "workers": 0, "print_freq": 1,
        "aug": "pad-crop", "auto_augment": "randaugment", "mixup": 0.2, "cutmix": 1.0,
        "ema_decay": 0.9, "ema_warmup": True,
    }  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ema_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ema_run")
    train(_config(data, out), device="cpu")
    return out


def test_run_reports_and_saves_both_accuracies(ema_run: Path, data: Path) -> None:
    rows = [json.loads(x) for x in (ema_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    for row in rows:
        assert 0 <= row["val_top1"] <= 100 and 0 <= row["ema_val_top1"] <= 100
        assert math.isfinite(row["train_loss"])
    last = load_checkpoint(ema_run / "last.pt")
    assert last["ema"].keys() == last["model"].keys()
    assert any(not torch.equal(last["ema"][k], last["model"][k]) for k in last["model"])
    for use_ema, key in ((False, "val_top1"), (True, "ema_val_top1")):
        args = ["eval", "--data", str(data), "--checkpoint", str(ema_run / "last.pt")]
        args += ["--backend", "torch", "--workers", "0", "--device", "cpu", "--json"]
        result = CliRunner().invoke(main, args + (["--use-ema"] if use_ema else []))
        assert result.exit_code == 0, result.output
        got = json.loads(result.output.strip().splitlines()[-1])
        assert got["top1"] == pytest.approx(rows[-1][key], abs=1e-9) and got["ema"] is use_ema


def test_use_ema_on_a_checkpoint_without_ema_is_one_error_line(data: Path, tmp_path: Path) -> None:
    train(_config(data, tmp_path, epochs=1, ema_decay=0.0, mixup=0.0, cutmix=0.0), device="cpu")
    args = ["eval", "--data", str(data), "--checkpoint", str(tmp_path / "last.pt"), "--use-ema"]
    assert_one_line_error(CliRunner().invoke(main, args + ["--device", "cpu"]), "no EMA weights")


class _Crash(Exception):
    pass


def test_resume_restores_the_ema_and_the_mixing(
    ema_run: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = engine.save_checkpoint

    def save_then_crash(path: Path, state: dict) -> Path:
        written = real_save(path, state)
        if Path(path).name == "last.pt":
            raise _Crash
        return written

    monkeypatch.setattr(engine, "save_checkpoint", save_then_crash)
    with pytest.raises(_Crash):
        train(_config(data, tmp_path), device="cpu")
    monkeypatch.undo()
    train(_config(data, tmp_path, resume=str(tmp_path)), device="cpu")
    straight, resumed = load_checkpoint(ema_run / "last.pt"), load_checkpoint(tmp_path / "last.pt")
    for part in ("model", "ema"):
        for key, value in straight[part].items():
            torch.testing.assert_close(resumed[part][key], value, rtol=1e-5, atol=1e-6, msg=key)
