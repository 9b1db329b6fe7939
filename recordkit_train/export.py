"""ONNX export of a training checkpoint, and a check of the file against PyTorch.

The graph contract (``docs/USING_MODELS.md``):

- one input ``images``: ``uint8`` RGB, NCHW, shape ``(batch, 3, S, S)`` with a dynamic
  ``batch`` axis and ``S`` the checkpoint's image size — the validation crop (shorter side
  resized to ``int(S / 0.875)``, centre ``S x S``) as the loaders produce it before
  normalization. ``(x / 255 - mean) / std`` with the ImageNet mean/std happens *inside* the
  graph, with the loader's arithmetic (``x * (1 / std255) + (-mean255 / std255)``);
- one output ``logits``: ``float32`` ``(batch, classes)``, before softmax;
- metadata (``metadata_props``): ``recordkit.classes`` (JSON list, label order),
  ``recordkit.arch``, ``recordkit.image_size``, ``recordkit.resize_shorter``,
  ``recordkit.mean`` / ``recordkit.std`` (JSON, 0-1 scale), ``recordkit.input``.

uint8 input keeps the normalization constants with the weights (a server cannot get them
wrong) and matches what decoders hand over (4x less data than float).

Export uses torch's ``torch.export``-based exporter (``dynamo=True``, the default since torch
2.9): the TorchScript exporter is deprecated, stops at opset 20 and names folded weights
``onnx::Conv_…``; the new one keeps parameter names and reaches torch's newest opset. By default
the opset is torch's default for the installed version (``--opset`` picks another).

:func:`check_onnx` runs the file with onnxruntime on a random uint8 batch and on decoded images
and compares with the PyTorch model. Per batch, with ``M`` the largest ``|PyTorch logit|``,
the tolerance is ``atol + rtol * M`` (defaults :data:`DEFAULT_ATOL` = 1e-3 and
:data:`DEFAULT_RTOL` = 1e-4: fp32 rounding grows with the logits' magnitude, and a trained
network's logits reach the hundreds). The check passes when every ``|ONNX - PyTorch|`` logit
difference is within it and top-1 agrees on every input whose two best PyTorch logits are more
than twice the tolerance apart (closer ones are ties within the tolerance).

Needs the ``onnx`` extra (``onnx``, ``onnxscript``, ``onnxruntime``).
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from recordkit.errors import RecordkitError
from recordkit.format.example import Record
from recordkit.loaders.augment import Augment, val_resize_size
from recordkit.loaders.decode import ValDecode
from recordkit_train.predict import TrainedModel, load_trained_model, read_image

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "CheckResult",
    "ExportError",
    "ExportResult",
    "NormalizedModel",
    "check_onnx",
    "export_onnx",
    "synthetic_images",
]

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
"""The graph's input: uint8 ``(batch, 3, S, S)`` RGB."""
OUTPUT_NAME = "logits"
"""The graph's output: float32 ``(batch, classes)``."""
DEFAULT_ATOL = 1e-3
"""Absolute part of :func:`check_onnx`'s logit tolerance."""
DEFAULT_RTOL = 1e-4
"""Relative part of :func:`check_onnx`'s logit tolerance (times the batch's largest logit)."""

_HINT = "pip install 'recordkit[onnx]'"


class ExportError(RecordkitError):
    """Export failed, a needed package is missing, or an ONNX file does not match."""


def _require(name: str) -> ModuleType:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise ExportError(f"{name} is not installed: {_HINT}") from None


class NormalizedModel(nn.Module):
    """uint8 RGB NCHW crops -> logits, with the loader's normalization in front of the model.

    Args:
        model: The classifier, expecting normalized float input.
        augment: Mean and std (the loader's).
    """

    def __init__(self, model: nn.Module, augment: Augment | None = None) -> None:
        super().__init__()
        augment = augment or Augment()
        mean = torch.tensor(augment.mean255, dtype=torch.float64).view(1, 3, 1, 1)
        std = torch.tensor(augment.std255, dtype=torch.float64).view(1, 3, 1, 1)
        self.model = model
        self.register_buffer("scale", (1.0 / std).float())
        self.register_buffer("shift", (-mean / std).float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalize ``images`` (uint8 ``(B, 3, S, S)``) and return the model's logits."""
        return self.model(images.to(torch.float32) * self.scale + self.shift)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: The ONNX file.
        opset: Its default-domain opset.
        image_size: ``S`` of the ``(batch, 3, S, S)`` input.
        classes: Class names in label order.
        seconds: Time the export took.
    """

    path: Path
    opset: int
    image_size: int
    classes: list[str]
    seconds: float


def _metadata(trained: TrainedModel) -> dict[str, str]:
    aug = trained.augment
    size = trained.image_size
    short = val_resize_size(size, aug.val_resize_ratio)
    return {
        "recordkit.classes": json.dumps(trained.classes),
        "recordkit.arch": trained.arch,
        "recordkit.image_size": str(size),
        "recordkit.resize_shorter": str(short),
        "recordkit.mean": json.dumps(list(aug.mean)),
        "recordkit.std": json.dumps(list(aug.std)),
        "recordkit.input": (
            f"{INPUT_NAME}: uint8 RGB NCHW (batch, 3, {size}, {size}); shorter side resized to "
            f"{short}, centre {size}x{size} crop; normalized inside the graph"
        ),
    }


def export_onnx(
    checkpoint: str | os.PathLike[str],
    onnx_path: str | os.PathLike[str],
    *,
    opset: int | None = None,
    use_ema: bool = False,
) -> ExportResult:
    """Export a training checkpoint to one self-contained ONNX file (written atomically).

    Args:
        checkpoint: ``best.pt`` / ``last.pt`` from ``recordkit-train run``.
        onnx_path: The file to write (parent folders are created).
        opset: ONNX opset; None: the installed torch exporter's default.
        use_ema: Export the checkpoint's EMA weights instead of the model's.

    Returns:
        What was written.

    Raises:
        ExportError: onnx / onnxscript missing, or the exporter failed.
        recordkit_train.checkpoint.CheckpointError: The checkpoint is missing or unsafe.
    """
    onnx = _require("onnx")
    _require("onnxscript")  # the torch.export-based exporter's translation library
    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        raise ExportError(f"ONNX export needs torch >= 2.6 (this is {torch.__version__})")
    trained = load_trained_model(checkpoint, use_ema=use_ema)
    net = NormalizedModel(trained.model, trained.augment).eval()
    size = trained.image_size
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
            program = torch.onnx.export(
                net,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; report one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"ONNX export of {checkpoint} failed: {first}") from exc
    assert program is not None
    proto = program.model_proto
    proto.doc_string = f"recordkit-train {trained.arch}, {len(trained.classes)} classes"
    del proto.metadata_props[:]
    for key, value in _metadata(trained).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    dest = Path(onnx_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(proto.SerializeToString())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - start
    version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    logger.debug("exported %s to %s (opset %d) in %.1f s", checkpoint, dest, version, seconds)
    return ExportResult(dest, int(version), size, trained.classes, seconds)


@dataclass(frozen=True)
class CheckResult:
    """ONNX versus PyTorch on one set of inputs.

    Attributes:
        name: What the inputs were (``"random"``, ``"images"``, ``"synthetic images"``).
        count: Number of inputs (one batch).
        max_abs_diff: Largest ``|onnx - torch|`` over all logits.
        max_logit: Largest ``|torch|`` logit.
        tolerance: ``atol + rtol * max_logit``.
        top1_agree: Inputs whose top-1 class is the same in both.
        top1_required: Inputs where top-1 must agree (PyTorch's margin above twice the
            tolerance).
        top1_mismatch: Required inputs where it does not.
    """

    name: str
    count: int
    max_abs_diff: float
    max_logit: float
    tolerance: float
    top1_agree: int
    top1_required: int
    top1_mismatch: int

    @property
    def passed(self) -> bool:
        """Within tolerance, and top-1 agrees wherever it must."""
        return self.max_abs_diff <= self.tolerance and self.top1_mismatch == 0

    def summary(self) -> str:
        """One line: inputs, largest difference, tolerance, top-1 agreement, ``ok``/``FAILED``."""
        verdict = "ok" if self.passed else "FAILED"
        return (
            f"{self.name} ({self.count}): max |onnx - torch| {self.max_abs_diff:.3g} "
            f"(tolerance {self.tolerance:.3g}), top-1 agrees {self.top1_agree}/{self.count}, "
            f"{verdict}"
        )


def synthetic_images(image_size: int, augment: Augment | None = None) -> torch.Tensor:
    """Three drawn pictures (JPEG, PNG, grayscale JPEG; varied sizes) through ValDecode.

    Args:
        image_size: The crop side.
        augment: Validation geometry.

    Returns:
        uint8 ``(3, 3, S, S)``.
    """
    from PIL import Image, ImageDraw

    augment = augment or Augment()
    crops = []
    for i, (w, h, mode, fmt) in enumerate(
        [(320, 240, "RGB", "JPEG"), (200, 300, "RGB", "PNG"), (256, 256, "L", "JPEG")]
    ):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (w + h)], -1)
        img = Image.fromarray(base.astype(np.uint8)).convert(mode)
        draw = ImageDraw.Draw(img)
        draw.ellipse((w // 4, h // 4, w // 2 + 10 * i, h // 2 + 20), fill=255 - 60 * i)
        draw.rectangle((w // 2, h // 3, w - 10, h - 30 * i - 10), fill=40 * i)
        buf = io.BytesIO()
        img.save(buf, fmt)
        record = Record(image=buf.getvalue(), labels=(0,), format=fmt.lower())
        crops.append(ValDecode(image_size, augment)(record))
    return torch.stack(crops)


def _compare(
    name: str, session: Any, net: nn.Module, images: torch.Tensor, atol: float, rtol: float
) -> CheckResult:
    with torch.no_grad():
        ref = net(images).float().numpy()
    got = np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0])
    if got.shape != ref.shape:
        raise ExportError(f"ONNX output has shape {got.shape}, PyTorch {ref.shape}")
    diff = float(np.max(np.abs(got.astype(np.float64) - ref))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    tolerance = atol + rtol * scale
    agree = ref.argmax(1) == got.argmax(1)
    if ref.shape[1] > 1:
        top2 = np.sort(ref, axis=1)[:, -2:]
        required = (top2[:, 1] - top2[:, 0]) > 2 * tolerance
    else:
        required = np.zeros(len(ref), dtype=bool)
    return CheckResult(
        name=name,
        count=len(ref),
        max_abs_diff=diff if np.isfinite(diff) else float("inf"),
        max_logit=scale,
        tolerance=tolerance,
        top1_agree=int(agree.sum()),
        top1_required=int(required.sum()),
        top1_mismatch=int((required & ~agree).sum()),
    )


def check_onnx(
    onnx_path: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    *,
    images: Sequence[str | os.PathLike[str]] = (),
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    random_batch: int = 4,
    seed: int = 0,
    use_ema: bool = False,
) -> list[CheckResult]:
    """Run an ONNX file with onnxruntime (CPU) and compare it with the checkpoint's model.

    Two batches, of different sizes (the batch axis must be dynamic): ``random_batch``
    uniformly random uint8 inputs, and ``images`` through the validation transform (or
    :func:`synthetic_images` when none are given).

    Args:
        onnx_path: The exported file.
        checkpoint: The checkpoint it should match.
        images: Image files to compare on.
        atol: Absolute part of the tolerance.
        rtol: Relative part, times the batch's largest ``|PyTorch logit|``.
        random_batch: Size of the random batch.
        seed: Seed of the random batch.
        use_ema: Compare with the checkpoint's EMA weights (what ``export --use-ema`` wrote).

    Returns:
        One :class:`CheckResult` per batch; see ``passed``.

    Raises:
        ExportError: onnxruntime missing; the file does not load or breaks the graph
            contract (input/output names, dtype, shape).
        OSError: An image cannot be read.
        RecordkitError: An image cannot be decoded.
    """
    ort = _require("onnxruntime")
    path = Path(onnx_path)
    if not path.is_file():
        raise ExportError(f"{path} does not exist")
    trained = load_trained_model(checkpoint, use_ema=use_ema)
    net = NormalizedModel(trained.model, trained.augment).eval()
    size = trained.image_size
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own exception types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"{path} cannot be loaded by onnxruntime: {first}") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != [INPUT_NAME] or OUTPUT_NAME not in [o.name for o in outputs]:
        raise ExportError(
            f"{path} has inputs {[i.name for i in inputs]} and outputs "
            f"{[o.name for o in outputs]}; expected {INPUT_NAME!r} -> {OUTPUT_NAME!r}"
        )
    spec = inputs[0]
    if spec.type != "tensor(uint8)" or list(spec.shape[1:]) != [3, size, size]:
        raise ExportError(
            f"{path} takes {spec.type} {spec.shape}; the checkpoint needs "
            f"tensor(uint8) [batch, 3, {size}, {size}]"
        )
    gen = torch.Generator().manual_seed(seed)
    batches = [
        ("random", torch.randint(0, 256, (random_batch, 3, size, size), generator=gen).byte())
    ]
    if images:
        crops = torch.stack([read_image(p, size, trained.augment) for p in images])
        batches.append(("images", crops))
    else:
        batches.append(("synthetic images", synthetic_images(size, trained.augment)))
    return [_compare(name, session, net, batch, atol, rtol) for name, batch in batches]
