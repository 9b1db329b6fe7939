"""``recordkit-train demo`` (what ``make demo`` runs): list → pack → train → eval → predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import recordkit
from recordkit_train.checkpoint import load_checkpoint
from recordkit_train.demo import DemoSettings, run_demo


def test_demo_plumbing_small_and_a_model_that_misses_the_bar(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Every step runs and writes its outputs; a top-1 under ``min_top1`` is one error line.

    One small run serves both checks (each demo run starts four Python processes): the bar
    is set above 100 %, so the run goes through every step, then fails on the bar.
    """
    settings = DemoSettings(
        per_class=8, size=48, epochs=1, batch_size=16, image_size=32, workers=0,
        device="cpu", min_top1=100.1,
    )  # fmt: skip
    with pytest.raises(SystemExit, match=r"^Error: the demo model did not learn the task \("):
        run_demo(tmp_path / "work", settings)
    out = capfd.readouterr().out
    for step in ("$ recordkit list", "$ recordkit pack", "$ recordkit-train run",
                 "$ recordkit-train eval", "$ recordkit-train predict"):  # fmt: skip
        assert step in out
    run = tmp_path / "work" / "run"
    state = load_checkpoint(run / "best.pt")
    assert state["classes"] == sorted(
        ["circle", "square", "triangle", "diamond", "cross", "ring", "star", "hbar", "vbar",
         "hexagon"]
    )  # fmt: skip
    logged = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    evaluated = json.loads((run / "eval.json").read_text().splitlines()[-1])
    assert evaluated["top1"] == pytest.approx(logged["val_top1"])  # eval == logged
    n_val = len(recordkit.open(tmp_path / "work" / "shards")["val"])
    assert evaluated["samples"] == n_val > 0
    # predict printed three "path probability class" lines for one validation image.
    lines = [ln for ln in out.splitlines() if ln.startswith(str(tmp_path / "work" / "images"))]
    assert len(lines) == 3 and all(ln.split("\t")[2] in state["classes"] for ln in lines)
    assert f"reaches {evaluated['top1']:.1f} % top-1" in out  # the summary came before the bar


@pytest.mark.slow
def test_demo_defaults_learn_the_task(tmp_path: Path) -> None:
    """The documented demo, unchanged: ≥ 90 % validation top-1 on CPU."""
    result = run_demo(tmp_path / "work", DemoSettings(device="cpu"))
    assert result["val_top1"] >= 90.0
