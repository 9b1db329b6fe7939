"""Fine-tuning with ``--pretrained``: what is loaded, what is re-initialised, what is refused.

A tiny 3-class run is the source; fine-tuning happens on 4 classes (so ``fc`` cannot be
loaded) with a frozen backbone, whose weights must come out of training exactly as the source
had them. torchvision state dicts, prefixes, the slower-backbone optimizer groups and the
``--resume`` rule are checked too.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner

from recordkit_train.checkpoint import CheckpointError, load_checkpoint
from recordkit_train.cli import main
from recordkit_train.config import ConfigError
from recordkit_train.models import build_model
from recordkit_train.optim import LRSchedule, build_optimizer
from recordkit_train.pretrained import (
    PretrainedError,
    backbone_lr_scale,
    freeze_backbone,
    load_pretrained,
)
from tests.conftest import assert_one_line_error
from tests.tinyrun import colour_shards, tiny_config, train_tiny

SOURCE_CLASSES = ["red", "green", "blue"]
TARGET_CLASSES = ["red", "green", "blue", "yellow"]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = colour_shards(tmp_path_factory.mktemp("src_shards"), SOURCE_CLASSES)
    return train_tiny(data, tmp_path_factory.mktemp("src_run")) / "last.pt"


@pytest.fixture(scope="module")
def target_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_shards(tmp_path_factory.mktemp("dst_shards"), TARGET_CLASSES, n_train=16)


def _run(data: Path, out: Path, *extra: str):
    args = ["run", "--data", str(data), "--out", str(out), "--arch", "resnet18", "--epochs", "1",
            "--batch-size", "8", "--image-size", "32", "--precision", "fp32", "--lr", "0.05",
            "--warmup-epochs", "0", "--backend", "torch", "--workers", "0", "--device", "cpu",
            "--no-small-input",
            *extra]  # fmt: skip
    return CliRunner().invoke(main, args)


def test_load_checkpoint_with_other_classes(source: Path, caplog) -> None:
    src = load_checkpoint(source)["model"]
    model = build_model("resnet18", len(TARGET_CLASSES))
    fresh_fc = model.fc.weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="recordkit_train.pretrained"):
        report = load_pretrained(model, source, classes=TARGET_CLASSES)
    state = model.state_dict()
    assert report.head_reset and set(report.skipped) == {"fc.weight", "fc.bias"}
    assert "shape (3, 512) != (4, 512)" in report.skipped["fc.weight"]
    assert len(report.loaded) == len(state) - 2 and report.kept == ["fc.weight", "fc.bias"]
    for name in ("conv1.weight", "layer4.1.bn2.running_var", "layer2.0.downsample.0.weight"):
        torch.testing.assert_close(state[name], src[name], rtol=0, atol=0)
    assert state["fc.weight"].shape == (4, 512)
    assert not torch.equal(state["fc.weight"], fresh_fc)  # re-initialised, not left as built
    assert f"loaded {len(state) - 2} of the model's {len(state)} tensors" in caplog.text
    assert "fc.weight (shape (3, 512) != (4, 512))" in caplog.text


def test_same_shape_head_loads_only_for_the_same_classes(source: Path) -> None:
    src = load_checkpoint(source)["model"]
    model = build_model("resnet18", 3)
    report = load_pretrained(model, source, classes=SOURCE_CLASSES)
    assert not report.head_reset and not report.skipped
    torch.testing.assert_close(model.fc.weight, src["fc.weight"], rtol=0, atol=0)
    renamed = build_model("resnet18", 3)
    report = load_pretrained(renamed, source, classes=["cat", "dog", "bird"])
    assert report.head_reset and report.skipped["fc.weight"] == "class names differ"
    assert not torch.equal(renamed.fc.weight, src["fc.weight"])


def test_torchvision_state_dict(tmp_path: Path) -> None:
    tv = torchvision.models.resnet18(num_classes=1000)
    plain = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), plain)
    wrapped = tmp_path / "ddp.pth"  # a DDP run's file: {"state_dict": {"module.…": …}}
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}}, wrapped)
    for path in (plain, wrapped):
        model = build_model("resnet18", 5)
        report = load_pretrained(model, path, classes=[str(i) for i in range(5)])
        assert report.head_reset and len(report.loaded) == len(model.state_dict()) - 2
        torch.testing.assert_close(model.layer3[1].conv2.weight, tv.layer3[1].conv2.weight)
    same = build_model("resnet18", 1000)
    assert not load_pretrained(same, plain).head_reset  # no names on either side: loaded
    torch.testing.assert_close(same.fc.weight, tv.fc.weight)


class Payload:
    """Anything but tensors and plain containers: weights_only refuses to rebuild it."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_bad_files_are_one_error_line(target_data: Path, tmp_path: Path, capfd) -> None:
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"conv1.weight": Payload()}))
    result = _run(target_data, tmp_path / "o", "--pretrained", str(evil))
    assert_one_line_error(result, "evil.pth", "refused")
    assert "this must never run" not in capfd.readouterr().out + result.output
    (tmp_path / "text.pth").write_text("hello")
    result = _run(target_data, tmp_path / "o", "--pretrained", str(tmp_path / "text.pth"))
    assert_one_line_error(result, "text.pth", "not a readable checkpoint")
    torch.save({"fc.weight": torch.zeros(2, 2), "head.bias": torch.zeros(2)}, tmp_path / "o.pt")
    result = _run(target_data, tmp_path / "o", "--pretrained", str(tmp_path / "o.pt"))
    assert_one_line_error(result, "o.pt", "none of its 2 tensors fits this model")
    torch.save({"epoch": 3}, tmp_path / "empty.pt")
    with pytest.raises(PretrainedError, match="holds no model weights"):
        load_pretrained(build_model("resnet18", 2), tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(build_model("resnet18", 2), tmp_path / "missing.pt")


def test_finetune_frozen_backbone_trains_only_fc(
    source: Path, target_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ft"
    result = _run(target_data, out, "--pretrained", str(source), "--freeze-backbone")
    assert result.exit_code == 0, result.output
    src = load_checkpoint(source)["model"]
    state = load_checkpoint(out / "last.pt")
    tuned = state["model"]
    assert state["classes"] == TARGET_CLASSES and tuned["fc.weight"].shape == (4, 512)
    for name, value in tuned.items():
        if name.endswith(("weight", "bias")) and not name.startswith("fc."):
            torch.testing.assert_close(value, src[name], rtol=0, atol=0, msg=name)
    # Only fc's two tensors were optimised (BatchNorm running statistics still adapt).
    assert sum(len(g["params"]) for g in state["optimizer"]["param_groups"]) == 2
    assert state["config"]["pretrained"] == str(source) and state["config"]["freeze_backbone"]

    # --resume wins over --pretrained: the same command line plus --resume continues the run
    # (here nothing is left to do) and does not read the pretrained file, even if it is gone.
    result = _run(target_data, out, "--pretrained", str(tmp_path / "gone.pt"), "--resume",
                  str(out), "--freeze-backbone")  # fmt: skip
    assert result.exit_code == 0, result.output


def test_backbone_lr_scale_groups_and_training(
    source: Path, target_data: Path, tmp_path: Path
) -> None:
    model = build_model("resnet18", 4)
    optimizer = build_optimizer(model, lr=0.1, lr_scale=backbone_lr_scale(0.1))
    scales = [
        (g["lr_scale"], g["weight_decay"] > 0, len(g["params"])) for g in optimizer.param_groups
    ]
    assert scales == [(0.1, True, 20), (0.1, False, 40), (1.0, True, 1), (1.0, False, 1)]
    schedule = LRSchedule("step", base_lr=0.2, epochs=2, iters_per_epoch=1)
    assert schedule.apply(optimizer, 0) == 0.2
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.02, 0.02, 0.2, 0.2])
    assert len(build_optimizer(model, lr=0.1, lr_scale=backbone_lr_scale(1.0)).param_groups) == 2
    assert freeze_backbone(model) == 60
    assert len(build_optimizer(model, lr=0.1).param_groups) == 2  # fc weight, fc bias

    out = tmp_path / "scaled"
    result = _run(target_data, out, "--pretrained", str(source), "--backbone-lr-scale", "0.1")
    assert result.exit_code == 0, result.output
    groups = load_checkpoint(out / "last.pt")["optimizer"]["param_groups"]
    head = [g["lr"] for g in groups if g["lr_scale"] == 1.0]
    body = [g["lr"] for g in groups if g["lr_scale"] == 0.1]
    assert head and body and body[0] == pytest.approx(0.1 * head[0])
    with pytest.raises(ConfigError, match="exclude each other"):
        tiny_config(target_data, out, freeze_backbone=True, backbone_lr_scale=0.5)


def test_resume_with_other_optimizer_groups_is_one_error_line(
    target_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ft"
    result = _run(target_data, out, "--backbone-lr-scale", "0.1")
    assert result.exit_code == 0, result.output
    # Resuming without the backbone scale: a different set of parameter groups.
    result = _run(target_data, out, "--epochs", "2", "--resume", str(out), "--freeze-backbone")
    assert_one_line_error(result, "other optimizer parameter groups")
