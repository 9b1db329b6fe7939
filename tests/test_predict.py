"""``recordkit-train predict`` on a tiny trained checkpoint (CPU, resnet18 at 32 px).

The probabilities are checked against the model run on batches from the validation loader
over the very same image bytes packed as a shard, so "same preprocessing as validation" is
tested bit for bit, not assumed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import recordkit
from recordkit_train.checkpoint import load_checkpoint
from recordkit_train.cli import main
from recordkit_train.models import build_model
from recordkit_train.predict import PredictFailure, Prediction, Predictor, find_images
from tests.conftest import assert_one_line_error, write_shards
from tests.tinyrun import colour_image, colour_shards, encode, train_tiny

CLASSES = ["red fish", "green", "blue"]  # a space: the text format is tab-separated


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = colour_shards(tmp_path_factory.mktemp("shards"), CLASSES)
    return train_tiny(data, tmp_path_factory.mktemp("run")) / "best.pt"


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``photos/`` with JPEGs and PNGs of several sizes in nested folders, and a ``.txt``."""
    root = tmp_path_factory.mktemp("photos")
    sizes = [(40, 32), (32, 48), (80, 60), (33, 33), (64, 40), (50, 70)]
    for i, size in enumerate(sizes):
        fmt = "PNG" if i % 3 == 0 else "JPEG"
        sub = root / ("a" if i < 3 else "b/deeper")
        sub.mkdir(parents=True, exist_ok=True)
        ext = ".png" if fmt == "PNG" else (".JPG" if i == 4 else ".jpg")
        (sub / f"img{i}{ext}").write_bytes(encode(colour_image(i % 3, i, size), fmt))
    (root / "notes.txt").write_text("not an image")
    return root


def _invoke(*args: str):
    return CliRunner().invoke(main, ["predict", *args, "--device", "cpu"])


def test_find_images_walks_sorted_and_filters(photos: Path) -> None:
    found = [p.relative_to(photos).as_posix() for p in find_images([photos])]
    assert found == [
        "a/img0.png",
        "a/img1.jpg",
        "a/img2.jpg",
        "b/deeper/img3.png",
        "b/deeper/img4.JPG",
        "b/deeper/img5.jpg",
    ]
    explicit = photos / "notes.txt"  # named explicitly: kept, whatever the extension
    assert find_images([explicit, photos / "a", photos / "a/img0.png"])[:2] == [
        explicit,
        photos / "a/img0.png",
    ]
    assert len(find_images([photos / "a", photos / "a/img0.png"])) == 3  # no duplicates


def test_text_output_top1_and_topk(checkpoint: Path, photos: Path) -> None:
    result = _invoke("--checkpoint", str(checkpoint), str(photos))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 6
    for line, path in zip(lines, find_images([photos]), strict=True):
        got_path, prob, name = line.split("\t")
        assert got_path == str(path) and name in CLASSES and 0 < float(prob) <= 1
        assert len(prob.split(".")[1]) == 8
    result = _invoke("--checkpoint", str(checkpoint), str(photos / "a"), "--topk", "2")
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [r[0] for r in rows] == [str(p) for p in find_images([photos / "a"]) for _ in "12"]
    for first, second in zip(rows[::2], rows[1::2], strict=True):
        assert float(first[1]) >= float(second[1]) and first[2] != second[2]


def test_json_matches_validation_loader_forward(
    checkpoint: Path, photos: Path, tmp_path: Path
) -> None:
    paths = find_images([photos])
    result = _invoke("--checkpoint", str(checkpoint), str(photos), "--json", "--topk", "5")
    assert result.exit_code == 0, result.output
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["path"] for o in objects] == [str(p) for p in paths]

    # The same bytes as a validation split, scored through the loader the eval command uses.
    records = [
        recordkit.Record(image=p.read_bytes(), labels=(0,), filename=p.name, index=i)
        for i, p in enumerate(paths)
    ]
    shards = write_shards(tmp_path / "val", {"val": records}, classes=CLASSES)
    loader = recordkit.make_loader(
        shards, "val", batch_size=4, image_size=32, backend="torch", num_workers=0
    )
    state = load_checkpoint(checkpoint)
    model = build_model("resnet18", len(CLASSES))
    model.load_state_dict(state["model"])
    model.eval()
    with torch.no_grad():
        probs = torch.cat([torch.softmax(model(x), 1) for x, _ in loader])

    assert state["classes"] == CLASSES
    for obj, row in zip(objects, probs, strict=True):
        topk = obj["topk"]
        assert len(topk) == 3  # --topk 5 capped at the 3 classes
        assert [t["class"] for t in topk] == [CLASSES[t["index"]] for t in topk]
        assert obj["class"] == topk[0]["class"] and obj["prob"] == topk[0]["prob"]
        values = [t["prob"] for t in topk]
        assert values == sorted(values, reverse=True) and sum(values) <= 1 + 1e-6
        assert topk[0]["index"] == int(row.argmax())
        for t in topk:
            assert t["prob"] == pytest.approx(float(row[t["index"]]), abs=1e-6)


def test_predictor_batches_match_single_images(checkpoint: Path, photos: Path) -> None:
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    paths = find_images([photos])
    batched = list(predictor.predict(paths, topk=3, batch_size=4, workers=2))
    single = list(predictor.predict(paths, topk=3, batch_size=1, workers=1))
    for a, b in zip(batched, single, strict=True):
        assert isinstance(a, Prediction) and isinstance(b, Prediction)
        assert a.indices == b.indices
        assert a.probs == pytest.approx(b.probs, abs=1e-6)


def test_unreadable_files_are_reported_and_others_still_run(
    checkpoint: Path, photos: Path, tmp_path: Path
) -> None:
    (tmp_path / "text.jpg").write_text("this is not a JPEG")
    (tmp_path / "empty.png").write_bytes(b"")
    good = photos / "a" / "img1.jpg"
    args = [str(tmp_path / "text.jpg"), str(good), str(tmp_path / "missing.jpg")]
    result = _invoke("--checkpoint", str(checkpoint), *args, str(tmp_path / "empty.png"))
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0].startswith(f"{good}\t")
    assert len(result.stdout.splitlines()) == 1
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 4 and all(e.startswith("Error: ") for e in errors)
    assert "text.jpg: cannot decode image (unknown image format)" in errors[0]
    assert "missing.jpg" in errors[1] and "empty.png: empty file" in errors[2]
    assert errors[-1] == "Error: 3 of 4 images could not be classified"
    assert "Traceback" not in result.output

    failures = list(Predictor.from_checkpoint(checkpoint, "cpu").predict(args))
    assert [type(r) for r in failures] == [PredictFailure, Prediction, PredictFailure]


def test_user_errors_are_one_line(checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = _invoke("--checkpoint", str(checkpoint), str(tmp_path / "empty"))
    assert_one_line_error(result, "no images")
    result = _invoke("--checkpoint", str(tmp_path / "nope.pt"), str(tmp_path))
    assert_one_line_error(result, "nope.pt", "does not exist")
