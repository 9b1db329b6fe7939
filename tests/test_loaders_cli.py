"""`recordkit bench` and `recordkit show` on tiny shards, through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write_shards
from PIL import Image
from test_loaders import colour, png_record

from recordkit.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli_shards")
    recs = [png_record(i) for i in range(10)]
    return write_shards(
        root,
        {"train": recs, "val": recs[:7]},
        records_per_shard=4,
        classes=["cat", "dog", "a-very-long-class-name-that-will-not-fit"],
    )


@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=pytest.mark.dali)])
def test_bench_prints_one_json_line(tiny: Path, backend: str) -> None:
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    args = [
        "bench",
        str(tiny),
        "--split",
        "train",
        "--backend",
        backend,
        "--batch-size",
        "4",
        "--batches",
        "5",
        "--warmup",
        "2",
        "--image-size",
        "16",
        "--workers",
        "1",
        "--json",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    info = json.loads(lines[0])
    assert info["backend"] == backend and info["batches"] == 5 and info["images"] == 20
    assert info["images_per_sec"] > 0


def test_bench_human_output_and_errors(tiny: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(
        main,
        [
            "bench",
            str(tiny),
            "--backend",
            "torch",
            "--batch-size",
            "4",
            "--batches",
            "2",
            "--warmup",
            "0",
            "--image-size",
            "16",
        ],
    )
    assert ok.exit_code == 0 and "images/s (torch, train" in ok.output
    bad = runner.invoke(main, ["bench", str(tiny), "--split", "test", "--backend", "torch"])
    assert bad.exit_code == 1 and "Error: no split 'test'" in bad.output
    big = runner.invoke(main, ["bench", str(tiny), "--backend", "torch", "--batch-size", "64"])
    assert big.exit_code == 1 and "no batches" in big.output
    none = runner.invoke(main, ["bench", str(tiny.parent / "nope")])
    assert none.exit_code == 2


@pytest.mark.parametrize("augment", [False, True])
def test_show_writes_a_labelled_png_grid(tiny: Path, tmp_path: Path, augment: bool) -> None:
    out = tmp_path / "grid.png"
    args = [
        "show",
        str(tiny),
        "--split",
        "train",
        "-n",
        "6",
        "--cols",
        "4",
        "--image-size",
        "32",
        "-o",
        str(out),
    ] + (["--augment"] if augment else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    with Image.open(out) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        assert im.size == (4 * 32, 2 * (32 + 14))
        im.load()
        if not augment:  # val transform of a flat image: tile centre = record colour
            assert im.getpixel((16, 16)) == colour(0) and im.getpixel((48, 16)) == colour(1)
        label_strip = im.crop((0, 32, 32, 46)).convert("L")
        assert label_strip.getextrema()[0] < 128, "a class name is drawn under the tile"
