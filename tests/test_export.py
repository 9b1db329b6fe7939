"""``recordkit-train export``: the ONNX graph contract and ``--check`` (onnxruntime, CPU).

One tiny trained checkpoint is exported once per module; the file's input/output names,
dtypes, dynamic batch axis and metadata are read back with ``onnx``, and a copy with one weight
changed must make ``--check`` fail.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from recordkit_train.cli import main
from recordkit_train.export import ExportError, NormalizedModel, check_onnx
from recordkit_train.predict import load_trained_model, read_image
from tests.conftest import assert_one_line_error
from tests.tinyrun import colour_image, colour_shards, encode, train_tiny

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

CLASSES = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = colour_shards(tmp_path_factory.mktemp("shards"), CLASSES)
    return train_tiny(data, tmp_path_factory.mktemp("run")) / "best.pt"


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    result = CliRunner().invoke(
        main, ["export", "--checkpoint", str(checkpoint), "--onnx", str(path), "--check"]
    )
    return path, result.output if result.exit_code == 0 else f"exit {result.exit_code}\n" + (
        result.output
    )


def test_export_check_passes(exported: tuple[Path, str]) -> None:
    path, output = exported
    lines = output.strip().splitlines()
    assert lines[0].startswith(f"wrote {path}: opset ")
    assert "input images uint8 (batch, 3, 32, 32), output logits float32 (batch, 3)" in lines[0]
    assert lines[1].startswith("check random (4): max |onnx - torch| ")
    assert lines[2].startswith("check synthetic images (3): ")
    assert lines[1].endswith(", top-1 agrees 4/4, ok") and lines[2].endswith("3/3, ok")
    assert "(tolerance " in lines[1]
    assert lines[-1].startswith("check passed")
    assert list(path.parent.iterdir()) == [path]  # one self-contained file, no temporaries


def test_graph_contract(exported: tuple[Path, str], checkpoint: Path, tmp_path: Path) -> None:
    path, _ = exported
    model = onnx.load(str(path))
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "images" and out.name == "logits"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [3, 32, 32]
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 18
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["recordkit.classes"]) == CLASSES
    assert meta["recordkit.image_size"] == "32" and meta["recordkit.resize_shorter"] == "36"
    assert meta["recordkit.arch"] == "resnet18"

    # Batch sizes other than the export's example, fed real decoded crops.
    for i, size in enumerate([(40, 32), (32, 48), (64, 64)]):
        (tmp_path / f"{i}.jpg").write_bytes(encode(colour_image(i, i, size), "JPEG"))
    trained = load_trained_model(checkpoint)
    crops = torch.stack([read_image(tmp_path / f"{i}.jpg", 32, trained.augment) for i in range(3)])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reference = NormalizedModel(trained.model, trained.augment).eval()
    for batch in (crops[:1], crops):
        got = session.run(["logits"], {"images": batch.numpy()})[0]
        with torch.no_grad():
            want = reference(batch).numpy()
        assert got.shape == (len(batch), 3)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)


def test_check_with_user_images(exported: tuple[Path, str], checkpoint: Path, tmp_path) -> None:
    path, _ = exported
    img = tmp_path / "x.png"
    img.write_bytes(encode(colour_image(1, 3, (50, 40)), "PNG"))
    args = ["export", "--checkpoint", str(checkpoint), "--onnx", str(path), "--check-only"]
    result = CliRunner().invoke(main, [*args, "--images", str(img), "--images", str(img)])
    assert result.exit_code == 0, result.output
    assert "check images (2): " in result.output and "wrote" not in result.output
    result = CliRunner().invoke(main, [*args, "--images", str(tmp_path / "none.jpg")])
    assert_one_line_error(result, "none.jpg")


def test_tampered_weight_fails_check(
    exported: tuple[Path, str], checkpoint: Path, tmp_path: Path
) -> None:
    path, _ = exported
    model = onnx.load(str(path))
    (fc,) = [t for t in model.graph.initializer if t.name.endswith("fc.weight")]
    weight = onnx.numpy_helper.to_array(fc).copy()
    weight[1] += 0.05  # one class's weights nudged
    fc.CopyFrom(onnx.numpy_helper.from_array(weight, fc.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, str(tampered))
    result = CliRunner().invoke(
        main,
        ["export", "--checkpoint", str(checkpoint), "--onnx", str(tampered), "--check-only"],
    )
    assert result.exit_code == 1, result.output
    assert result.output.count(", FAILED") == 2
    assert result.output.strip().splitlines()[-1] == (
        f"Error: {tampered} does not match {checkpoint}"
    )
    bad_good = zip(check_onnx(tampered, checkpoint), check_onnx(path, checkpoint), strict=True)
    for bad, good in bad_good:
        assert not bad.passed and bad.max_abs_diff > bad.tolerance
        assert good.passed and good.max_abs_diff < 1e-5 * good.max_logit + 1e-5


def test_contract_violations_and_missing_packages(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = tmp_path / "float_input.onnx"
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3)).eval()
    torch.onnx.export(
        net,
        (torch.zeros(1, 3, 32, 32),),
        str(plain),
        input_names=["images"],
        output_names=["logits"],
        dynamo=True,
        verbose=False,
        external_data=False,
    )
    with pytest.raises(ExportError, match=r"takes tensor\(float\)"):
        check_onnx(plain, checkpoint)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    args = ["export", "--checkpoint", str(checkpoint), "--check-only", "--onnx"]
    result = CliRunner().invoke(main, [*args, str(tmp_path / "junk.onnx")])
    assert_one_line_error(result, "junk.onnx cannot be loaded by onnxruntime")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = CliRunner().invoke(main, [*args, str(tmp_path / "junk.onnx")])
    assert_one_line_error(result, "onnxruntime is not installed", "pip install 'recordkit[onnx]'")
