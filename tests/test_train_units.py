"""Training building blocks on CPU with tiny models: models, precision, optim, checkpoints, metrics.

Values are checked, not just "it ran": learning rates at named epochs, parameters unchanged by a
skipped fp16 step, loss-scale arithmetic, exact tensor and RNG round trips, hand-counted top-k.
"""

from __future__ import annotations

import math
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from recordkit.errors import RecordkitError
from recordkit_train import precision as precision_mod
from recordkit_train.checkpoint import (
    CheckpointError,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    unwrap,
)
from recordkit_train.config import ConfigError, TrainConfig
from recordkit_train.metrics import AccuracyMeter, LossMeter, topk_correct
from recordkit_train.models import ARCHS, build_model
from recordkit_train.optim import LRSchedule, build_optimizer, scaled_lr
from recordkit_train.precision import (
    PRECISIONS,
    LossScaler,
    Precision,
    autocast,
    resolve_precision,
)

# --------------------------------------------------------------------------------------- models


def test_archs_listed() -> None:
    import torchvision

    torchvision_archs = set(torchvision.models.list_models(module=torchvision.models))
    assert set(ARCHS) == torchvision_archs | {"convnet2", "lenet", "mlp"}
    assert {"resnet18", "resnext50_32x4d", "regnet_y_400mf", "vit_b_16"} <= set(ARCHS)


def test_resnet50_is_v1_5_with_requested_classes() -> None:
    model = build_model("resnet50", 7)
    assert model.fc.out_features == 7
    block = model.layer2[0]
    assert block.conv1.stride == (1, 1)  # v1.5: the 1x1 does not downsample...
    assert block.conv2.stride == (2, 2)  # ...the 3x3 does
    assert block.downsample[0].stride == (2, 2)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_zero_init_residual_zeroes_last_bn_of_each_block() -> None:
    plain = build_model("resnet18", 3)
    assert all(block.bn2.weight.abs().sum() > 0 for block in plain.layer1)
    model = build_model("resnet18", 3, zero_init_residual=True)
    blocks = [
        b for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for b in layer
    ]
    assert len(blocks) == 8
    for block in blocks:
        assert torch.count_nonzero(block.bn2.weight) == 0
        assert torch.count_nonzero(block.bn1.weight) == block.bn1.weight.numel()


def test_channels_last_parameters() -> None:
    model = build_model("resnet18", 3, channels_last=True)
    weight = model.conv1.weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert not weight.is_contiguous()
    assert not build_model("resnet18", 3).conv1.weight.is_contiguous(
        memory_format=torch.channels_last
    )


def test_unknown_arch_suggests_close_names() -> None:
    with pytest.raises(ValueError, match="did you mean resnet50"):
        build_model("resnt50", 10)
    with pytest.raises(ValueError, match="--arch list"):
        build_model("transformer9000", 10)


# ------------------------------------------------------------------------------------ precision


def test_resolve_precision_defaults_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    assert PRECISIONS == ("fp16", "bf16", "fp32")
    assert resolve_precision(None, torch.device("cuda")) == "fp16"
    monkeypatch.setattr(precision_mod, "cpu_bf16_support", lambda: "avx512_bf16")
    assert resolve_precision(None, torch.device("cpu")) == "bf16"
    monkeypatch.setattr(precision_mod, "cpu_bf16_support", lambda: None)
    assert resolve_precision(None, torch.device("cpu")) == "fp32"
    assert resolve_precision(None, "mps") == "fp32"
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision(Precision.BF16, "cpu") == "bf16"
    with pytest.raises(ValueError, match="fp16, bf16, fp32"):
        resolve_precision("fp8", "cpu")


def test_autocast_dtypes() -> None:
    layer = nn.Linear(4, 2)
    x = torch.randn(3, 4)
    with autocast("bf16", "cpu"):
        assert layer(x).dtype == torch.bfloat16
    with autocast("fp32", torch.device("cpu")):
        assert layer(x).dtype == torch.float32


def _linear_sgd(lr: float = 1.0) -> tuple[nn.Linear, torch.optim.SGD]:
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    return layer, torch.optim.SGD(layer.parameters(), lr=lr)


def _params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_loss_scaler_skips_overflow_then_steps() -> None:
    layer, opt = _linear_sgd()
    scaler = LossScaler("fp16", "cpu", init_scale=1024.0, growth_interval=2)
    assert scaler.enabled and scaler.scale == 1024.0
    before = _params(layer)

    opt.zero_grad()
    loss = layer(torch.full((2, 4), math.inf)).sum()
    scaler.step(loss, opt)  # skipped: the scale halves, the weights stay
    assert all(torch.equal(a, b) for a, b in zip(before, _params(layer), strict=True))
    assert scaler.scale == 512.0

    opt.zero_grad()
    scaler.step(layer(torch.ones(2, 4)).sum(), opt)
    after = _params(layer)
    assert not torch.equal(before[0], after[0])
    # SGD lr=1: the update is exactly the unscaled gradient (d sum(Wx+b)/dW = 2 per entry).
    torch.testing.assert_close(before[0] - after[0], torch.full((3, 4), 2.0))
    assert scaler.scale == 512.0
    state = scaler.state_dict()
    assert state["scale"] == 512.0 and state["_growth_tracker"] == 1

    fresh = LossScaler("fp16", "cpu", init_scale=1024.0, growth_interval=2)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state
    assert fresh.scale == 512.0
    # The restored growth tracker counts: one more finite step reaches the interval of 2.
    opt.zero_grad()
    fresh.step(layer(torch.ones(2, 4)).sum(), opt)
    assert fresh.scale == 1024.0


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_loss_scaler_clips_unscaled_grad_norm(precision: str) -> None:
    layer, opt = _linear_sgd()
    scaler = LossScaler(precision, "cpu")
    before = _params(layer)
    opt.zero_grad()
    loss = (layer(torch.randn(8, 4) * 10) ** 2).sum()
    scaler.step(loss, opt, clip_grad=0.5)
    grad_norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in layer.parameters()]))
    assert grad_norm <= 0.5 + 1e-4
    step = torch.cat([(b - a).flatten() for a, b in zip(_params(layer), before, strict=True)])
    torch.testing.assert_close(torch.linalg.vector_norm(step), grad_norm)


def test_loss_scaler_disabled_for_bf16_and_fp32() -> None:
    for precision in ("bf16", "fp32"):
        layer, opt = _linear_sgd()
        scaler = LossScaler(precision, "cpu")
        assert not scaler.enabled and scaler.scale == 1.0 and scaler.state_dict() == {}
        scaler.load_state_dict({"scale": 8.0, "_growth_tracker": 3})  # ignored
        assert scaler.scale == 1.0
        before = _params(layer)
        scaler.step(layer(torch.ones(1, 4)).sum(), opt)
        assert not torch.equal(before[0], _params(layer)[0])


# ---------------------------------------------------------------------------------------- optim


def test_optimizer_param_groups_exclude_1d_from_weight_decay() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2)
    )
    opt = build_optimizer(model, lr=0.1, weight_decay=1e-4, nesterov=True)
    decay, no_decay = ({id(p) for p in g["params"]} for g in opt.param_groups)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]
    named = dict(model.named_parameters())
    assert decay == {id(named["0.weight"]), id(named["3.weight"])}
    assert no_decay == {id(named[n]) for n in ("0.bias", "1.weight", "1.bias", "3.bias")}
    assert all(g["momentum"] == 0.875 and g["nesterov"] for g in opt.param_groups)


def test_optimizer_resnet_defaults() -> None:
    model = build_model("resnet18", 5)
    opt = build_optimizer(model, lr=0.2)
    assert opt.param_groups[0]["weight_decay"] == 3.0517578125e-05
    assert all(p.ndim > 1 for p in opt.param_groups[0]["params"])
    assert all(p.ndim == 1 for p in opt.param_groups[1]["params"])
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_scaled_lr() -> None:
    assert scaled_lr(batch_size=256) == 0.256
    assert scaled_lr(0.256, batch_size=256, world_size=8) == pytest.approx(2.048)
    assert scaled_lr(0.1, batch_size=32, world_size=2) == pytest.approx(0.025)
    with pytest.raises(ValueError):
        scaled_lr(batch_size=0)


def test_cosine_schedule_with_warmup() -> None:
    s = LRSchedule("cosine", base_lr=1.0, epochs=10, iters_per_epoch=100, warmup_epochs=2,
                   final_lr=0.01)  # fmt: skip
    assert s.lr_at(0, 0) == pytest.approx(1 / 200)
    assert s.lr_at(1, 0) == pytest.approx(101 / 200)
    assert s.lr_at(1, 99) == pytest.approx(1.0)
    assert s.lr_at(2, 0) == pytest.approx(1.0)
    assert s.lr_at(6, 0) == pytest.approx(0.505)  # half way through the cosine
    assert 0.01 < s.lr_at(9, 99) < 0.0101
    assert s.lr_at(10, 0) == pytest.approx(0.01)
    values = [s.lr_at(e, i) for e in range(2, 10) for i in range(100)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_step_schedule_mxnet() -> None:
    s = LRSchedule("step", base_lr=0.1, epochs=90, iters_per_epoch=10)
    expected = {0: 0.1, 29: 0.1, 30: 0.01, 59: 0.01, 60: 0.001, 89: 0.001}
    for epoch, lr in expected.items():
        assert s.lr_at(epoch, 5) == pytest.approx(lr), epoch
    warm = LRSchedule("step", base_lr=0.1, epochs=90, iters_per_epoch=10, warmup_epochs=5)
    assert warm.lr_at(0, 0) == pytest.approx(0.1 / 50)
    assert warm.lr_at(4, 9) == pytest.approx(0.1)
    assert warm.lr_at(30, 0) == pytest.approx(0.01)


def test_schedule_apply_and_state_round_trip(tmp_path: Path) -> None:
    s = LRSchedule("step", 0.4, 20, 3, warmup_epochs=1, step_epochs=[15, 5], step_factor=0.5)
    assert s.step_epochs == (5, 15)
    layer, opt = _linear_sgd()
    opt.add_param_group({"params": [nn.Parameter(torch.zeros(1))]})
    assert s.apply(opt, 6, 1) == pytest.approx(0.2)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.2)] * 2

    saved = load_checkpoint(save_checkpoint(tmp_path / "s.pt", {"schedule": s.state_dict()}))
    other = LRSchedule("cosine", 1.0, 1, 1)
    other.load_state_dict(saved["schedule"])
    assert other == s
    assert [other.lr_at(e, 1) for e in range(20)] == [s.lr_at(e, 1) for e in range(20)]


def test_schedule_validation() -> None:
    with pytest.raises(ValueError, match="cosine, step, linear, onecycle"):
        LRSchedule("exponential", 0.1, 10, 10)
    with pytest.raises(ValueError, match="warmup_epochs"):
        LRSchedule("cosine", 0.1, 10, 10, warmup_epochs=11)
    with pytest.raises(ValueError, match="iters_per_epoch"):
        LRSchedule("cosine", 0.1, 10, 0)


# ----------------------------------------------------------------------------------- checkpoint


def _write_marker(path: str) -> None:
    Path(path).write_text("the checkpoint ran code")


class _Evil:
    """Unpickling this calls ``_write_marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_write_marker, (self.marker,))


def _trained_state() -> dict[str, object]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    opt = build_optimizer(model, lr=0.1)
    scaler = LossScaler("fp16", "cpu")
    opt.zero_grad()
    scaler.step(model(torch.randn(5, 4)).square().mean(), opt)
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict(),
        "schedule": LRSchedule("cosine", 0.1, 3, 2).state_dict(),
        "epoch": 2,
        "best_metric": 12.5,
        "config": {"arch": "resnet18", "batch_size": 8, "precision": "fp16", "crop": None},
        "classes": ["cat", "dog", "émeu"],
        "rng": capture_rng(),
    }


def test_checkpoint_round_trip_and_atomic(tmp_path: Path) -> None:
    state = _trained_state()
    path = save_checkpoint(tmp_path / "runs" / "last.pt", state)
    assert path == tmp_path / "runs" / "last.pt"
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp file left
    loaded = load_checkpoint(path)
    for key, value in state["model"].items():  # type: ignore[union-attr]
        assert torch.equal(loaded["model"][key], value), key
    momentum = state["optimizer"]["state"]  # type: ignore[index]
    assert all(
        torch.equal(loaded["optimizer"]["state"][k]["momentum_buffer"], v["momentum_buffer"])
        for k, v in momentum.items()
    )
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]  # type: ignore[index]
    for key in ("scaler", "schedule", "epoch", "best_metric", "config", "classes"):
        assert loaded[key] == state[key], key


def test_failed_save_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", {"epoch": 1})
    with pytest.raises(Exception):  # noqa: B017 - whatever pickling raises for a lambda
        save_checkpoint(path, {"epoch": 2, "bad": lambda: None})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    assert load_checkpoint(path) == {"epoch": 1}


def test_rng_capture_restore_repeats_draws(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.randn()
    rng = capture_rng()
    first = (torch.rand(4), random.random(), random.gauss(0, 1), np.random.rand(3))
    saved = load_checkpoint(save_checkpoint(tmp_path / "rng.pt", {"rng": rng}))
    torch.rand(10), random.random(), np.random.rand(5)  # move every generator on
    restore_rng(saved["rng"])
    again = (torch.rand(4), random.random(), random.gauss(0, 1), np.random.rand(3))
    assert torch.equal(first[0], again[0])
    assert first[1:3] == again[1:3]
    np.testing.assert_array_equal(first[3], again[3])


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_arbitrary_objects_refused_without_running(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "ran.txt"
    path = tmp_path / "evil.pt"
    payload = {"model": {"w": torch.zeros(2)}, "evil": _Evil(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match="not a safe recordkit checkpoint") as info:
        load_checkpoint(path)
    assert not marker.exists()
    message = str(info.value)
    assert message.startswith(f"{path} is not a safe recordkit checkpoint (refused to unpickle")
    assert "\n" not in message
    if how == "torch.save":  # a plain pickle is refused earlier, at its first unknown opcode
        assert "Unsupported global" in message and "_write_marker" in message
    assert isinstance(info.value, RecordkitError)
    # The payload really does run code when unpickled unsafely: the refusal is what saved us.
    pickle.loads(pickle.dumps(_Evil(marker)))
    assert marker.exists()


def test_missing_garbage_and_non_dict_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nope.pt does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    # Garbage is refused either as unreadable or, when it parses as pickle opcodes, as unsafe.
    for name, data in (("garbage.pt", b"hello garbage"), ("opcodes.pt", b"not a checkpoint")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match="not a (readable|safe recordkit) checkpoint"):
            load_checkpoint(tmp_path / name)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "empty.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(tmp_path / "list.pt")


def test_unwrap() -> None:
    inner = nn.Linear(2, 2)

    class Compiled(nn.Module):  # stands in for torch.compile's OptimizedModule
        def __init__(self, mod: nn.Module) -> None:
            super().__init__()
            self._orig_mod = mod

    assert unwrap(inner) is inner
    assert unwrap(nn.DataParallel(inner)) is inner
    assert unwrap(Compiled(nn.DataParallel(inner))) is inner
    holder = nn.Module()
    holder.module = inner  # a submodule merely named "module" is not a wrapper
    assert unwrap(holder) is holder


# -------------------------------------------------------------------------------------- metrics

LOGITS = torch.tensor(
    [
        [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],  # ranks: 0,1,(2..5 ties)
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # ranks: 5,4,3,2,1,0
        [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # ranks: 0,1,2,3,4,5
        [0.0, 0.1, 1.0, -1.0, 0.2, 0.3],  # ranks: 2,5,4,1,0,3
    ]
)
TARGETS = torch.tensor([0, 1, 5, 3])  # 1st place, 5th place, 6th place, 6th place


def test_topk_correct_by_hand() -> None:
    counts = topk_correct(LOGITS, TARGETS, ks=(1, 5))
    assert counts.dtype == torch.int64
    assert counts.tolist() == [1, 2]
    assert topk_correct(LOGITS, TARGETS, ks=(1, 2, 6, 10)).tolist() == [1, 1, 4, 4]  # 10 -> 6


def test_topk_uses_first_label_of_padded_targets() -> None:
    multi = torch.tensor([[0, -1], [3, 1], [5, 0], [2, 3]])
    # first labels 0, 3, 5, 2: hits at rank 1, 3rd place, 6th place, rank 1
    assert topk_correct(LOGITS, multi, ks=(1, 3, 5)).tolist() == [2, 3, 3]
    meter = AccuracyMeter(ks=(1,))
    meter.update(LOGITS, multi)
    assert meter.compute() == {"top1": 50.0, "samples": 4}


def test_accuracy_meter_over_uneven_batches_matches_whole() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 10, generator=gen)
    targets = torch.randint(0, 10, (16,), generator=gen)
    meter = AccuracyMeter()
    assert meter.compute()["samples"] == 0
    for lo, hi in ((0, 5), (5, 7), (7, 16)):
        meter.update(logits[lo:hi], targets[lo:hi])
    whole = topk_correct(logits, targets).tolist()
    result = meter.compute()
    assert result == {
        "top1": pytest.approx(100 * whole[0] / 16),
        "top5": pytest.approx(100 * whole[1] / 16),
        "samples": 16,
    }
    meter.all_reduce()  # not distributed: unchanged
    assert meter.compute() == result
    meter.reset()
    assert math.isnan(meter.compute()["top1"])


def test_loss_meter_weighted_mean() -> None:
    meter = LossMeter()
    meter.update(torch.tensor(2.0), 3)
    meter.update(torch.tensor(6.0), 1)
    assert meter.compute() == {"loss": pytest.approx(3.0), "samples": 4}


def test_meters_all_reduce_under_torch_distributed(tmp_path: Path) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        acc, loss = AccuracyMeter(), LossMeter()
        acc.all_reduce()  # a rank that saw no batch still takes part
        assert acc.compute()["samples"] == 0
        acc.update(LOGITS, TARGETS)
        loss.update(torch.tensor(1.5), 4)
        acc.all_reduce()
        loss.all_reduce()
        assert acc.compute() == {"top1": 25.0, "top5": 50.0, "samples": 4}
        assert loss.compute() == {"loss": 1.5, "samples": 4}
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------- schedules that fit the run


def test_warmup_capped_so_a_short_run_peaks_and_decays() -> None:
    # 5 epochs with the default 5 warm-up epochs: capped at 20 % of 5 x 10 steps = 10 steps.
    s = LRSchedule("cosine", base_lr=0.5, epochs=5, iters_per_epoch=10, warmup_epochs=5)
    assert s.requested_warmup_iters == 50 and s.warmup_iters == 10
    assert s.lr_at(0, 0) == pytest.approx(0.05)
    assert s.lr_at(0, 9) == pytest.approx(0.5)  # the peak, at the last warm-up step
    assert s.lr_at(1, 0) == pytest.approx(0.5)
    assert s.lr_at(3, 0) == pytest.approx(0.25)  # half way through the 40-step cosine
    assert s.lr_at(4, 9) < 0.001
    assert "10 warm-up steps (capped at 20% of the run; 5 warm-up epochs would be 50)" in (
        s.describe()
    )
    # under the cap: untouched, and no note
    short = LRSchedule("cosine", base_lr=0.5, epochs=10, iters_per_epoch=10, warmup_epochs=1)
    assert short.warmup_iters == 10 and "capped" not in short.describe()


def test_linear_schedule_values() -> None:
    s = LRSchedule("linear", base_lr=1.0, epochs=10, iters_per_epoch=10, warmup_epochs=1,
                   final_lr=0.1)  # fmt: skip
    assert s.lr_at(0, 4) == pytest.approx(0.5)
    assert s.lr_at(1, 0) == pytest.approx(1.0)
    assert s.lr_at(5, 5) == pytest.approx(0.1 + 0.9 * (1 - 45 / 90))
    assert s.lr_at(10, 0) == pytest.approx(0.1)
    assert "peak 1, 100 steps, 10 warm-up steps; down to 0.1 at step 100" in s.describe()


def test_onecycle_matches_torch_one_cycle_lr() -> None:
    epochs, ipe, peak = 3, 10, 0.4  # the peak at step 0.3 x 30 - 1 = 8
    s = LRSchedule("onecycle", base_lr=peak, epochs=epochs, iters_per_epoch=ipe)
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=peak)
    ref = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=peak, total_steps=epochs * ipe, cycle_momentum=False
    )
    expected = []
    for _ in range(epochs * ipe):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    ours = [s.lr_at(e, i) for e in range(epochs) for i in range(ipe)]
    assert ours == pytest.approx(expected, rel=1e-9)
    assert ours[0] == pytest.approx(peak / 25) and max(ours) == pytest.approx(peak)
    with pytest.raises(ValueError, match="own warm-up"):
        LRSchedule("onecycle", 0.1, 10, 10, warmup_epochs=1)


def test_step_schedule_describes_its_milestones() -> None:
    s = LRSchedule("step", base_lr=0.1, epochs=40, iters_per_epoch=5, step_epochs=(30, 60))
    assert "x0.1 at epoch 30 (step 150)" in s.describe()
    assert "no epoch inside the run" in LRSchedule("step", 0.1, 5, 5).describe()


def test_schedule_from_an_old_checkpoint_keeps_its_uncapped_warmup() -> None:
    state = LRSchedule("cosine", 1.0, 4, 10, warmup_epochs=2).state_dict()
    del state["max_warmup_fraction"]
    s = LRSchedule("cosine", 1.0, 1, 1)
    s.load_state_dict(state)
    assert s.warmup_iters == 20


def test_config_warmup_defaults_per_schedule() -> None:
    resolved = {
        kind: TrainConfig(data="x", lr_schedule=kind).resolved("cpu").warmup_epochs
        for kind in ("cosine", "linear", "step", "onecycle")
    }
    assert resolved == {"cosine": 5, "linear": 5, "step": 0, "onecycle": 0}
    with pytest.raises(ConfigError, match="own warm-up"):
        TrainConfig(data="x", lr_schedule="onecycle", warmup_epochs=1)
