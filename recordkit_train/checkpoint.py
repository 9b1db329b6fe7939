"""Checkpoints that load safely and resume exactly.

A checkpoint is a ``torch.save`` of a dict holding only tensors, numbers, strings, ``None``,
lists, tuples and dicts, so :func:`load_checkpoint` reads it with
``torch.load(weights_only=True)`` and a file from elsewhere cannot run code on load. The
training engine stores these keys:

- ``model``: the unwrapped model's ``state_dict()`` (see :func:`unwrap`);
- ``optimizer``, ``scaler``, ``schedule``: their ``state_dict()``;
- ``epoch`` (int, the next epoch to run), ``best_metric`` (float or None);
- ``config`` (dict of plain values), ``classes`` (list of class names in label order);
- ``rng``: :func:`capture_rng` (Python, NumPy, torch CPU and CUDA generators).

Files are written atomically (:func:`save_checkpoint`): a crash never leaves a half-written
file under the final name.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recordkit.errors import RecordkitError

__all__ = [
    "CheckpointError",
    "capture_rng",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
    "unwrap",
]

logger = logging.getLogger(__name__)


class CheckpointError(RecordkitError):
    """A checkpoint is missing, unreadable or not a safe recordkit checkpoint.

    The message reads ``<path> <reason>``, e.g. ``runs/x/last.pt does not exist``.

    Attributes:
        path: The checkpoint file.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        super().__init__(f"{self.path} {reason}")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel / DataParallel / ``torch.compile`` wrappers.

    Args:
        model: A model, wrapped any number of times or not at all.

    Returns:
        The innermost module, whose ``state_dict`` keys carry no ``module.`` or ``_orig_mod.``
        prefix.
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically.

    The state is saved to a temporary file in the same directory, flushed to disk with
    ``fsync`` and renamed over ``path`` (``os.replace``), so readers see either the old file
    or the complete new one. Missing parent directories are created.

    Args:
        path: Destination file (conventionally ``.pt``).
        state: The checkpoint; keep it to tensors, numbers, strings, ``None``, lists, tuples
            and dicts, or :func:`load_checkpoint` will refuse it.

    Returns:
        The destination path.

    Raises:
        OSError: The file could not be written (the temporary file is removed).
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)
    logger.debug("saved checkpoint %s", dest)
    return dest


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n\n|$)", text, re.S)
    if match:
        text = match.group(1)
    text = " ".join(text.split())
    return text or type(exc).__name__


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Args:
        path: The checkpoint file.
        map_location: Where to put its tensors.

    Returns:
        The saved dict.

    Raises:
        CheckpointError: The file is missing or unreadable, is not a torch checkpoint, holds
            objects other than tensors and plain containers (it is refused without running
            any of its code), or does not hold a dict.
    """
    src = Path(path)
    if not src.is_file():
        raise CheckpointError(src, "does not exist")
    try:
        with warnings.catch_warnings():
            # Plain pickles trigger a protocol warning before being refused; the error says it.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(src, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weightsunpickler" in str(exc).lower():
            raise CheckpointError(
                src,
                "is not a safe recordkit checkpoint (refused to unpickle arbitrary objects): "
                + _first_line(exc),
            ) from None
        raise CheckpointError(src, f"is not a readable checkpoint: {_first_line(exc)}") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as exc:
        raise CheckpointError(src, f"is not a readable checkpoint: {_first_line(exc)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(src, f"holds a {type(state).__name__}, not a checkpoint dict")
    return state


def capture_rng() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's global random generators.

    Only plain values and tensors, so the result can be checkpointed and loaded with
    ``weights_only=True``. In distributed training each rank has its own states.

    Returns:
        ``{"python": [...], "numpy": {...}, "torch": uint8 tensor, "cuda": [uint8 tensors]}``
        (``"cuda"`` only when CUDA is available).
    """
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss_next],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore generator states from :func:`capture_rng`.

    Missing entries are left alone; CUDA states are restored for the devices present (a
    warning is logged when the device count differs).

    Args:
        state: What :func:`capture_rng` returned (possibly through a checkpoint).
    """
    if "python" in state:
        version, internal, gauss_next = state["python"]
        random.setstate((int(version), tuple(int(v) for v in internal), gauss_next))
    if "numpy" in state:
        np_state = state["numpy"]
        keys = np.asarray(torch.as_tensor(np_state["keys"]).numpy(), dtype=np.uint32)
        np.random.set_state(
            (
                np_state["kind"],
                keys,
                int(np_state["pos"]),
                int(np_state["has_gauss"]),
                float(np_state["cached_gaussian"]),
            )
        )
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if len(cuda_states) != count:
            logger.warning(
                "checkpoint has CUDA RNG states for %d devices, %d present; restoring %d",
                len(cuda_states),
                count,
                min(count, len(cuda_states)),
            )
        for index, cuda_state in enumerate(cuda_states[:count]):
            torch.cuda.set_rng_state(cuda_state.cpu(), index)
