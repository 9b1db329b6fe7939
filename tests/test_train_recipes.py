"""``recordkit-train run --recipe``: a recipe's resolved values, explicit options win, listing."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from recordkit_train import engine
from recordkit_train.cli import main
from recordkit_train.config import TrainConfig
from recordkit_train.recipes import RECIPES, RecipeError, get_recipe, resolve_recipe
from tests.conftest import assert_one_line_error


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_is_a_valid_config(name: str) -> None:
    cfg = TrainConfig(data="shards", **resolve_recipe(name, {}))
    for key, value in RECIPES[name].values.items():
        assert getattr(cfg, key) == value, key


def test_nvidia_recipes_values() -> None:
    r90 = resolve_recipe("imagenet-rn50-90", {})
    assert r90["arch"] == "resnet50"
    assert r90["epochs"] == 90
    assert r90["base_lr"] == 0.256
    assert r90["momentum"] == 0.875
    assert r90["weight_decay"] == 1 / 32768
    assert r90["warmup_epochs"] == 8
    assert r90.get("mixup", 0.0) == 0.0
    r250 = resolve_recipe("imagenet-rn50-250-mixup", {})
    assert r250["epochs"] == 250
    assert r250["mixup"] == 0.2
    assert {k: v for k, v in r250.items() if k not in ("epochs", "mixup")} == {
        k: v for k, v in r90.items() if k != "epochs"
    }
    # the learning rate follows the global batch (0.256 per 256) once resolved
    cfg = TrainConfig(data="d", **r90).resolved("cpu", world_size=8)
    assert cfg.lr == pytest.approx(0.256 * 8)


def test_explicit_values_win() -> None:
    merged = resolve_recipe("fashion-mnist-resnet18", {"epochs": 5, "pad": 0})
    assert merged["epochs"] == 5
    assert merged["pad"] == 0
    assert merged["arch"] == "resnet18"
    assert merged["small_input"] is False
    assert merged["aug"] == "pad-crop"


def test_fashion_mnist_convnet2_values() -> None:
    """The TF tutorial CNN for 5 epochs: flips only, cosine after a 0.3-epoch warm-up."""
    cfg = TrainConfig(data="d", **resolve_recipe("fashion-mnist-convnet2", {})).resolved("cpu")
    assert (cfg.arch, cfg.image_size, cfg.small_input) == ("convnet2", 28, False)
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum) == (5, 128, 0.05, 0.9)
    assert (cfg.aug, cfg.pad, cfg.hflip, cfg.label_smoothing) == ("pad-crop", 0, 0.5, 0.0)
    assert (cfg.lr_schedule, cfg.warmup_epochs, cfg.weight_decay) == ("cosine", 0.3, 5e-4)


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipes_md_shows_each_recipes_options(name: str) -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "RECIPES.md").read_text()
    assert f"`{name}`" in doc
    if name.startswith("fashion-mnist"):  # the ImageNet rows abbreviate the 250-epoch one
        assert f"`{RECIPES[name].command()}`" in doc


def test_unknown_recipe() -> None:
    with pytest.raises(RecipeError, match="choose one of: imagenet-rn50-90"):
        get_recipe("imagenet")


def _captured(monkeypatch: pytest.MonkeyPatch) -> list[TrainConfig]:
    seen: list[TrainConfig] = []
    monkeypatch.setattr(engine, "train", lambda cfg, device=None: seen.append(cfg))
    return seen


def test_cli_recipe_then_explicit_options(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _captured(monkeypatch)
    args = ["run", "--recipe", "fashion-mnist-resnet18", "--data", "d", "--epochs", "2"]
    result = CliRunner().invoke(main, [*args, "--lr", "0.01", "--hflip", "0", "--small-input"])
    assert result.exit_code == 0, result.output
    (cfg,) = seen
    assert (cfg.arch, cfg.image_size, cfg.aug, cfg.pad) == ("resnet18", 28, "pad-crop", 2)
    assert (cfg.epochs, cfg.lr, cfg.hflip, cfg.small_input) == (2, 0.01, 0.0, True)
    # an option equal to its default still counts as given
    result = CliRunner().invoke(
        main,
        [
            "run",
            "--recipe",
            "imagenet-rn50-90",
            "--data",
            "d",
            "--warmup-epochs",
            "5",
            "--label-smoothing",
            "0.1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert seen[-1].warmup_epochs == 5
    assert "warmup_epochs=5.0 (given)" in result.output
    assert result.output.rstrip().endswith("epochs=90")


def test_cli_recipe_list_and_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _captured(monkeypatch)
    result = CliRunner().invoke(main, ["run", "--recipe", "list"])
    assert result.exit_code == 0
    for name in RECIPES:
        assert name in result.output
    assert "--mixup 0.2" in result.output
    result = CliRunner().invoke(main, ["run", "--recipe", "nope", "--data", "d"])
    assert_one_line_error(result, "unknown recipe 'nope'")
    assert not seen


def test_cpu_threads_share_the_cores() -> None:
    from recordkit_train.config import ConfigError, cpu_threads

    assert cpu_threads(None, None, cpus=2) == (1, 1)
    assert cpu_threads(None, None, cpus=1) == (1, 1)
    assert cpu_threads(None, None, cpus=16) == (4, 12)
    assert cpu_threads(0, None, cpus=2) == (0, 2)
    assert cpu_threads(None, 3, cpus=2) == (1, 3)
    cfg = TrainConfig(data="d", workers=0).resolved("cpu")
    assert cfg.workers == 0 and cfg.threads is not None and cfg.threads >= 1
    assert TrainConfig(data="d", threads=2, workers=1).resolved("cpu").threads == 2
    with pytest.raises(ConfigError, match="threads"):
        TrainConfig(data="d", threads=0)
