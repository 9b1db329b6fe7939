"""recordkit's own small networks (``convnet2``, ``lenet``, ``mlp``): layers, counts, CLI.

The published parameter counts are those of the single-channel 28x28 networks (TensorFlow's
tutorial CNN: 3,274,634; MXNet's LeNet: 431,080; MXNet's MLP: 109,386), computed by hand
below from the layer sizes. Then each network goes through ``recordkit-train run`` (one CPU
step), eval, predict and ONNX export from its checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import recordkit
from recordkit_train.checkpoint import load_checkpoint
from recordkit_train.cli import main
from recordkit_train.config import ConfigError, TrainConfig
from recordkit_train.models import ARCHS, TORCHVISION_ARCHS, build_model, is_own, min_image_size
from recordkit_train.small_models import SMALL_ARCHS, build_small_model
from tests.conftest import write_shards
from tests.tinyrun import colour_image, colour_shards, encode


def _conv(k: int, cin: int, cout: int) -> int:
    return k * k * cin * cout + cout


def _dense(fan_in: int, fan_out: int) -> int:
    return fan_in * fan_out + fan_out


PUBLISHED = {
    # conv5x5-32 (same), pool, conv5x5-64 (same), pool -> 7x7x64, dense 1024, dense 10
    "convnet2": _conv(5, 1, 32) + _conv(5, 32, 64) + _dense(7 * 7 * 64, 1024) + _dense(1024, 10),
    # conv5x5-20 (valid) 24, pool 12, conv5x5-50 8, pool 4 -> 4x4x50, dense 500, dense 10
    "lenet": _conv(5, 1, 20) + _conv(5, 20, 50) + _dense(4 * 4 * 50, 500) + _dense(500, 10),
    "mlp": _dense(28 * 28, 128) + _dense(128, 64) + _dense(64, 10),
}


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_published_parameter_counts() -> None:
    assert PUBLISHED == {"convnet2": 3_274_634, "lenet": 431_080, "mlp": 109_386}
    for arch, count in PUBLISHED.items():
        assert _count(build_small_model(arch, 10, 28, in_channels=1)) == count, arch
    # The loader's 3-channel input adds only first-layer weights.
    assert _count(build_model("convnet2", 10, image_size=28)) == 3_274_634 + 5 * 5 * 2 * 32
    assert _count(build_model("mlp", 10, image_size=28)) == 109_386 + 2 * 28 * 28 * 128


def test_convnet2_layers_match_the_tensorflow_tutorial() -> None:
    model = build_model("convnet2", 10, image_size=28)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (32, (5, 5), (2, 2)),
        (64, (5, 5), (2, 2)),
    ]
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride) for p in pools] == [(2, 2), (2, 2)]
    dense = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(d.in_features, d.out_features) for d in dense] == [(3136, 1024), (1024, 10)]
    (dropout,) = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert dropout.p == 0.4
    assert all(torch.count_nonzero(m.bias) == 0 for m in convs + dense)  # TF: zero biases
    # Glorot-uniform: every weight within +-sqrt(6 / (fan_in + fan_out)).
    first = dense[0].weight
    assert first.abs().max() <= (6 / (3136 + 1024)) ** 0.5


@pytest.mark.parametrize(
    ("arch", "image_size", "features"),
    [
        ("convnet2", 28, 7 * 7 * 64),
        ("convnet2", 32, 8 * 8 * 64),
        ("lenet", 28, 4 * 4 * 50),
        ("lenet", 32, 5 * 5 * 50),
        ("mlp", 32, 3 * 32 * 32),
    ],
)
def test_built_for_the_image_size(arch: str, image_size: int, features: int) -> None:
    model = build_model(arch, 7, image_size=image_size).eval()
    flat: list[int] = []
    for module in model.modules():
        if isinstance(module, nn.Flatten):
            module.register_forward_hook(lambda _m, _i, out: flat.append(out.shape[1]))
    out = model(torch.randn(3, 3, image_size, image_size))
    assert out.shape == (3, 7) and flat == [features]


def test_listed_next_to_torchvision_and_checked() -> None:
    assert set(ARCHS) == set(TORCHVISION_ARCHS) | set(SMALL_ARCHS)
    assert not set(TORCHVISION_ARCHS) & set(SMALL_ARCHS)
    assert all(is_own(a) for a in SMALL_ARCHS) and not is_own("resnet18")
    assert (min_image_size("lenet"), min_image_size("convnet2")) == (16, 4)
    with pytest.raises(ConfigError, match="lenet needs an image size of at least 16 px, got 15"):
        TrainConfig(data="x", arch="lenet", image_size=15)
    with pytest.raises(ConfigError, match="small-input stem exists for the ResNet"):
        TrainConfig(data="x", arch="convnet2", image_size=28, small_input=True)
    assert not TrainConfig(data="x", arch="convnet2", image_size=28).resolved("cpu").small_input
    listed = CliRunner().invoke(main, ["run", "--arch", "list"])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert "convnet2\tmin 4 px, recordkit's own (recordkit_train.small_models)" in lines
    assert "mlp\tmin 1 px, recordkit's own (recordkit_train.small_models)" in lines


CLASSES = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_shards(tmp_path_factory.mktemp("shards"), CLASSES, n_train=8, n_val=4)


def _run(shards: Path, out: Path, arch: str, *extra: str) -> Path:
    args = ["run", "--data", str(shards), "--out", str(out), "--arch", arch,
            "--image-size", "28", "--epochs", "1", "--batch-size", "8", "--lr", "0.05",
            "--warmup-epochs", "0", "--precision", "fp32", "--backend", "torch",
            "--workers", "0", "--device", "cpu", "--no-progress", *extra]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("arch", sorted(SMALL_ARCHS))
def test_cli_step_eval_predict_export(
    shards: Path, tmp_path: Path, arch: str, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    initial = build_model(arch, 3, image_size=28)
    with caplog.at_level("INFO", logger="recordkit_train"):
        out = _run(shards, tmp_path / "run", arch, "--zero-init-residual")
    assert f"model: {arch} (recordkit's own) built for 28 px" in caplog.text
    assert f"{arch} has no residual BatchNorm to zero-initialise" in caplog.text
    state = load_checkpoint(out / "last.pt")
    assert state["config"]["arch"] == arch and state["config"]["image_size"] == 28
    assert state["model"].keys() == initial.state_dict().keys()
    # One SGD step moved the classifier (the last Linear).
    head = [k for k in state["model"] if k.endswith(".weight")][-1]
    assert state["model"][head].shape[0] == 3
    assert not torch.equal(state["model"][head], initial.state_dict()[head])

    args = ["eval", "--data", str(shards), "--checkpoint", str(out / "last.pt"), "--json",
            "--device", "cpu", "--workers", "0"]  # fmt: skip
    evaluated = CliRunner().invoke(main, args)
    assert evaluated.exit_code == 0, evaluated.output
    result = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert result["arch"] == arch and result["samples"] == 4

    # predict: the CLI's probabilities equal the rebuilt model on the validation loader.
    photos = tmp_path / "photos"
    photos.mkdir()
    paths = []
    for i in range(3):
        path = photos / f"{i}.png"
        path.write_bytes(encode(colour_image(i, 40 + i), "PNG"))
        paths.append(path)
    args = ["predict", "--checkpoint", str(out / "last.pt"), str(photos), "--json",
            "--device", "cpu"]  # fmt: skip
    predicted = CliRunner().invoke(main, args)
    assert predicted.exit_code == 0, predicted.output
    objects = [json.loads(line) for line in predicted.stdout.splitlines()]
    records = [
        recordkit.Record(image=p.read_bytes(), labels=(0,), filename=p.name, index=i)
        for i, p in enumerate(paths)
    ]
    val = write_shards(tmp_path / "val", {"val": records}, classes=CLASSES)
    loader = recordkit.make_loader(
        val, "val", batch_size=3, image_size=28, backend="torch", num_workers=0
    )
    model = build_model(arch, 3, image_size=28)
    model.load_state_dict(state["model"])
    model.eval()
    with torch.no_grad():
        probs = torch.cat([torch.softmax(model(x), 1) for x, _ in loader])
    for obj, row in zip(objects, probs, strict=True):
        assert obj["topk"][0]["index"] == int(row.argmax())
        assert obj["prob"] == pytest.approx(float(row.max()), abs=1e-6)

    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    onnx_path = tmp_path / "model.onnx"
    args = ["export", "--checkpoint", str(out / "last.pt"), "--onnx", str(onnx_path), "--check"]
    exported = CliRunner().invoke(main, args)
    assert exported.exit_code == 0, exported.output
    assert "input images uint8 (batch, 3, 28, 28), output logits float32 (batch, 3)" in (
        exported.output
    )
    assert "top-1 agrees 4/4, ok" in exported.output
    assert exported.output.strip().splitlines()[-1].startswith("check passed")


def test_resume_rebuilds_and_continues_convnet2(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped by SIGTERM after step 3 of 4 and resumed equals 2 epochs straight (dropout too)."""
    from recordkit_train import engine

    opts = ("--epochs", "2", "--batch-size", "4", "--threads", "1")
    full = _run(shards, tmp_path / "full", "convnet2", *opts)
    real, calls = engine._train_step, [0]

    def _step(**kwargs: object) -> object:
        calls[0] += 1
        if calls[0] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(**kwargs)

    with monkeypatch.context() as m:
        m.setattr(engine, "_train_step", _step)
        args = ["run", "--data", str(shards), "--out", str(tmp_path / "part"), "--arch",
                "convnet2", "--image-size", "28", "--lr", "0.05", "--warmup-epochs", "0",
                "--precision", "fp32", "--backend", "torch", "--workers", "0", "--device",
                "cpu", "--no-progress", *opts]  # fmt: skip
        stopped = CliRunner().invoke(main, args)
    assert stopped.exit_code == 75, stopped.output
    assert load_checkpoint(tmp_path / "part" / "last.pt")["batch"] == 1  # epoch 1, batch 1
    part = _run(shards, tmp_path / "part", "convnet2", *opts, "--resume", str(tmp_path / "part"))
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(part / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
