"""Classify image files with a training checkpoint, preprocessed exactly as validation is.

The checkpoint (``best.pt`` / ``last.pt`` from ``recordkit-train run``) carries the
architecture, the image size and the class names. Each file is read as bytes, wrapped in a
:class:`~recordkit.Record` and decoded by the torch loader's own validation transform
(:class:`recordkit.loaders.decode.ValDecode`: OpenCV decode with EXIF orientation, the shorter
side resized to ``image_size / 0.875``, the centre ``image_size`` square), then normalized with
the loader's arithmetic (:func:`recordkit.loaders.torch_loader.normalize_batch`) — so a file
scores as it would as a validation record of a shard packed without ``--resize``.

>>> predictor = Predictor.from_checkpoint("runs/r50/best.pt")          # doctest: +SKIP
>>> for result in predictor.predict(find_images(["photos/"]), topk=5):  # doctest: +SKIP
...     print(result)

Unreadable files do not stop a run: :meth:`Predictor.predict` yields a :class:`PredictFailure`
for each and carries on.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import torch
from PIL import Image
from torch import nn

from recordkit.errors import RecordkitError
from recordkit.format.example import Record
from recordkit.listing import DEFAULT_EXTS, normalize_exts
from recordkit.loaders.augment import Augment
from recordkit.loaders.decode import ValDecode
from recordkit.loaders.torch_loader import normalize_batch
from recordkit_train.checkpoint import load_checkpoint
from recordkit_train.config import ConfigError, TrainConfig
from recordkit_train.devices import DeviceError, cuda_problem
from recordkit_train.models import build_model

__all__ = [
    "Prediction",
    "PredictFailure",
    "Predictor",
    "TrainedModel",
    "find_images",
    "load_trained_model",
    "read_image",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedModel:
    """A model rebuilt from a training checkpoint, with what is needed to feed it.

    Attributes:
        model: The network in eval mode, on the CPU, fp32, contiguous memory format.
        arch: Its architecture name.
        classes: Class names in label order (``"0"``, ``"1"``, … when the checkpoint has none).
        image_size: The side of the square the network was validated at.
        augment: Validation geometry and normalization (the loader's defaults, as in training).
        epoch: Epochs trained.
    """

    model: nn.Module
    arch: str
    classes: list[str]
    image_size: int
    augment: Augment = field(default_factory=Augment)
    epoch: int = 0


def load_trained_model(
    checkpoint: str | os.PathLike[str], *, use_ema: bool = False
) -> TrainedModel:
    """Rebuild the model of a ``recordkit-train`` checkpoint (loaded with ``weights_only``).

    Args:
        checkpoint: ``best.pt`` / ``last.pt``.
        use_ema: Load the checkpoint's EMA weights (``--ema-decay`` runs) instead of the
            model's.

    Returns:
        The model in eval mode on the CPU, its classes and image size.

    Raises:
        recordkit_train.checkpoint.CheckpointError: The file is missing, unreadable or unsafe.
        ConfigError: It is not a recordkit-train checkpoint, or its weights do not fit its
            configuration.
    """
    state = load_checkpoint(checkpoint, map_location="cpu")
    if "model" not in state or "config" not in state:
        raise ConfigError(f"{checkpoint} is not a recordkit-train checkpoint (no model/config)")
    cfg = TrainConfig.from_checkpoint(state, checkpoint, data=str(checkpoint), resume=None)
    weights = state["model"]
    if use_ema:
        if not isinstance(state.get("ema"), dict):
            raise ConfigError(f"{checkpoint} has no EMA weights (train with --ema-decay)")
        weights = state["ema"]
    # The classifier is the last layer registered, so its weight is the last weight tensor of
    # two or more dimensions in the state dict (fc.weight, classifier.1.weight, heads.head...).
    heads = [
        v
        for k, v in (weights.items() if isinstance(weights, dict) else ())
        if isinstance(k, str)
        and k.endswith("weight")
        and isinstance(v, torch.Tensor)
        and v.dim() >= 2
    ]
    if not heads or heads[-1].shape[0] < 1:
        raise ConfigError(f"{checkpoint} holds no classifier weights (a 2-d fc.weight)")
    num_classes = int(heads[-1].shape[0])
    names = state.get("classes")
    names = [] if names is None else names
    if not isinstance(names, (list, tuple)) or not all(isinstance(c, str) for c in names):
        raise ConfigError(f"{checkpoint}: classes is not a list of class names")
    classes = list(names)
    if classes and len(classes) != num_classes:
        raise ConfigError(
            f"{checkpoint} lists {len(classes)} class names for a {num_classes}-way classifier"
        )
    epoch = state.get("epoch", 0)
    if type(epoch) is not int:
        raise ConfigError(f"{checkpoint}: epoch is a {type(epoch).__name__}, not an int")
    try:
        model = build_model(
            cfg.arch,
            num_classes,
            image_size=cfg.image_size,
            small_input=bool(cfg.small_input),
        )
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, ValueError, AttributeError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"{checkpoint} does not fit a {cfg.arch}: {first}") from None
    model.eval()
    return TrainedModel(
        model=model,
        arch=cfg.arch,
        classes=classes or [str(i) for i in range(num_classes)],
        image_size=cfg.image_size,
        augment=dataclasses.replace(Augment(), val_resize_ratio=cfg.augment().val_resize_ratio),
        epoch=epoch,
    )


def find_images(
    inputs: Iterable[str | os.PathLike[str]], exts: Sequence[str] | str = DEFAULT_EXTS
) -> list[Path]:
    """Expand files and folders into the image files to classify.

    Files are kept as given, whatever their extension (and even if missing: reading them later
    reports the error for that file). Folders are walked recursively in sorted order and
    contribute the files whose lower-cased extension is in ``exts``. Duplicates are kept once,
    at their first position.

    Args:
        inputs: Image files and folders, in the order wanted.
        exts: Extensions taken from folders (``".jpg,.png"`` or a list).

    Returns:
        The paths, in input order.
    """
    wanted = normalize_exts(exts)
    out: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        if path not in seen:
            seen.add(path)
            out.append(path)

    for raw in inputs:
        path = Path(raw)
        if not path.is_dir():
            add(path)
            continue
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                if os.path.splitext(name)[1].lower() in wanted:
                    add(Path(root) / name)
    return out


def read_image(path: str | os.PathLike[str], image_size: int, augment: Augment) -> torch.Tensor:
    """Read one file and apply the validation transform: uint8 ``(3, S, S)`` RGB.

    Args:
        path: An image file (JPEG, PNG, or anything OpenCV or Pillow decodes).
        image_size: The output side ``S``.
        augment: Validation resize ratio (and, later, normalization).

    Returns:
        The centre crop, as the torch loader produces it for a validation record.

    Raises:
        OSError: The file cannot be read.
        RecordkitError: The bytes are empty or not a decodable image.
    """
    name = os.fspath(path)
    data = Path(path).read_bytes()
    if not data:
        raise RecordkitError(f"{name}: empty file")
    fmt = "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "jpeg"
    record = Record(image=data, labels=(0,), filename=name, format=fmt)
    try:
        return ValDecode(image_size, augment)(record)
    except cv2.error as exc:
        reason = " ".join(str(exc).split())
        raise RecordkitError(f"{name}: cannot decode image ({reason})") from None
    except Image.DecompressionBombError as exc:
        raise RecordkitError(f"{name}: {exc}") from None


@dataclass(frozen=True)
class Prediction:
    """The top-k classes of one image, most probable first.

    Attributes:
        path: The file, as given or found.
        indices: Class indices (labels).
        classes: Their names.
        probs: Their softmax probabilities.
    """

    path: str
    indices: list[int]
    classes: list[str]
    probs: list[float]

    def to_dict(self) -> dict[str, Any]:
        """``{"path", "class", "index", "prob", "topk": [{"class", "index", "prob"}, …]}``."""
        topk = [
            {"class": c, "index": i, "prob": p}
            for c, i, p in zip(self.classes, self.indices, self.probs, strict=True)
        ]
        return {"path": self.path, **topk[0], "topk": topk}


@dataclass(frozen=True)
class PredictFailure:
    """A file that could not be classified.

    Attributes:
        path: The file.
        reason: Why, as one line.
    """

    path: str
    reason: str


class Predictor:
    """Batched classification of image files with a trained model.

    Args:
        trained: The model and its preprocessing (:func:`load_trained_model`).
        device: ``"cuda"``, ``"cpu"`` or None (CUDA when available). Inference runs in fp32.
    """

    def __init__(self, trained: TrainedModel, device: str | torch.device | None = None) -> None:
        if device is None:
            problem = cuda_problem()
            if problem:
                raise DeviceError(problem)
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.trained = trained
        self.device = torch.device(device)
        self.model = trained.model.to(self.device).eval()
        mean = torch.tensor(trained.augment.mean255, dtype=torch.float64).view(1, 3, 1, 1)
        std = torch.tensor(trained.augment.std255, dtype=torch.float64).view(1, 3, 1, 1)
        # The torch loader's constants and arithmetic (TorchLoader), in fp32.
        self._scale = (1.0 / std).to(device=self.device, dtype=torch.float32)
        self._shift = (-mean / std).to(device=self.device, dtype=torch.float32)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike[str],
        device: str | torch.device | None = None,
        *,
        use_ema: bool = False,
    ) -> Predictor:
        """Load a checkpoint (see :func:`load_trained_model`) and wrap it.

        Args:
            checkpoint: ``best.pt`` / ``last.pt``.
            device: Where to run; None: CUDA when available.
            use_ema: Predict with the checkpoint's EMA weights.

        Returns:
            The predictor.
        """
        return cls(load_trained_model(checkpoint, use_ema=use_ema), device)

    @property
    def classes(self) -> list[str]:
        """Class names in label order."""
        return self.trained.classes

    def read(self, path: str | os.PathLike[str]) -> torch.Tensor:
        """One file through the validation transform (see :func:`read_image`)."""
        return read_image(path, self.trained.image_size, self.trained.augment)

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Normalize a uint8 ``(B, 3, S, S)`` batch as the loader does and run the model.

        Args:
            images: uint8 RGB crops (from :meth:`read`).

        Returns:
            fp32 logits ``(B, classes)`` on the predictor's device.
        """
        x = normalize_batch(
            images.to(self.device), self._scale, self._shift, torch.float32, channels_last=False
        )
        return self.model(x).float()

    def predict(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        topk: int = 1,
        batch_size: int = 32,
        workers: int | None = None,
    ) -> Iterator[Prediction | PredictFailure]:
        """Classify files in batches, yielding one result per file in input order.

        Files are decoded by a pool of ``workers`` threads (OpenCV releases the GIL), one batch
        at a time; failures are yielded as :class:`PredictFailure` and do not stop the run.

        Args:
            paths: Image files.
            topk: Classes per image (capped at the number of classes).
            batch_size: Images per forward pass.
            workers: Decode threads; None: ``min(8, CPUs)``.

        Yields:
            A :class:`Prediction` or :class:`PredictFailure` per path.

        Raises:
            ValueError: ``topk`` or ``batch_size`` below 1.
        """
        if topk < 1 or batch_size < 1:
            raise ValueError(f"topk and batch_size must be at least 1, got {topk}, {batch_size}")
        k = min(topk, len(self.classes))
        todo = [os.fspath(p) for p in paths]
        threads = workers if workers is not None else min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                loaded = list(pool.map(self._try_read, chunk))
                good = [i for i, img in enumerate(loaded) if isinstance(img, torch.Tensor)]
                scores: dict[int, tuple[list[int], list[float]]] = {}
                if good:
                    batch = torch.stack([loaded[i] for i in good])  # type: ignore[misc]
                    top = torch.softmax(self.logits(batch), dim=1).topk(k, dim=1)
                    # One device-to-host copy per batch, not two per row (float64 holds the
                    # class indices and the float32 probabilities exactly).
                    rows = torch.cat([top.indices.double(), top.values.double()], 1).tolist()
                    for i, row in zip(good, rows, strict=True):
                        scores[i] = ([int(x) for x in row[:k]], row[k:])
                for i, (path, img) in enumerate(zip(chunk, loaded, strict=True)):
                    if isinstance(img, PredictFailure):
                        yield img
                    else:
                        idx, val = scores[i]
                        yield Prediction(path, idx, [self.classes[j] for j in idx], val)

    def _try_read(self, path: str) -> torch.Tensor | PredictFailure:
        try:
            return self.read(path)
        except RecordkitError as exc:
            return PredictFailure(path, str(exc))
        except OSError as exc:
            return PredictFailure(path, f"{path}: {exc.strerror or exc}")
