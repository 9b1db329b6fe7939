"""Count, on the CPU, the calls that would make the host wait for the GPU (contract 11).

A CUDA tensor read from Python (``.item()``, ``.tolist()``, ``.cpu()``, ``.numpy()``,
``bool()``/``float()``/``int()`` of a tensor), a tensor built from Python values straight on a
device (``torch.tensor(..., device=…)``: a blocking copy from pageable memory) and
``GradScaler.get_scale()`` all block the host until the GPU has caught up. On the CPU none of
them costs anything, so nothing would show that a training step makes them; this module
patches them to count the calls whose stack passes through recordkit's own code (a call torch
makes on our behalf, like ``GradScaler.step`` reading ``found_inf.item()`` for a non-fused
optimizer, counts too).

Usage::

    with SyncCounter() as syncs:
        train(...)
    syncs.count("_train_epoch")  # calls made while inside engine._train_epoch
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.utils.data

import recordkit
import recordkit_train

_ROOTS = tuple(str(Path(m.__file__).parent) for m in (recordkit, recordkit_train))
_TENSOR_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")
# DataLoader's own bookkeeping reads CPU tensors it made itself (its base seed per epoch):
# never a device tensor, so not a sync in a GPU run either.
_CPU_ONLY_CALLERS = (str(Path(torch.utils.data.__file__).parent),)
# The torch loader's host normalization reads its uint8 batch and its float64 constants as
# NumPy arrays; it runs only for a CPU device (a CUDA loader normalizes with
# normalize_device, tests/test_loader_handoff.py), so these are never device reads either.
_CPU_ONLY_FUNCTIONS = {
    (str(Path(recordkit.__file__).parent / "loaders" / "torch_loader.py"), "normalize_host")
}


class SyncCounter:
    """Context manager counting would-be host syncs made from recordkit code.

    Attributes:
        calls: One entry per counted call: ``(what, recordkit functions on the stack)``.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self._saved: list[tuple[Any, str, Any]] = []
        self._busy = False

    def _record(self, what: str) -> None:
        if self._busy:  # a patched call made by another patched call
            return
        frames: list[str] = []
        frame = sys._getframe(2)
        if frame.f_code.co_filename.startswith(_CPU_ONLY_CALLERS):
            return
        if (frame.f_code.co_filename, frame.f_code.co_name) in _CPU_ONLY_FUNCTIONS:
            return
        while frame is not None:
            if frame.f_code.co_filename.startswith(_ROOTS):
                frames.append(frame.f_code.co_name)
            frame = frame.f_back
        if frames:
            self.calls.append((what, tuple(frames)))

    def _wrap(self, owner: Any, name: str, what: str, when: Any = None) -> None:
        original = getattr(owner, name)
        counter = self

        def patched(*args: Any, **kwargs: Any) -> Any:
            if when is None or when(args, kwargs):
                counter._record(what)
            counter._busy, busy = True, counter._busy
            try:
                return original(*args, **kwargs)
            finally:
                counter._busy = busy

        self._saved.append((owner, name, original))
        setattr(owner, name, patched)

    def __enter__(self) -> SyncCounter:
        for name in _TENSOR_METHODS:
            self._wrap(torch.Tensor, name, f"Tensor.{name}")

        def on_device(args: Any, kwargs: dict[str, Any]) -> bool:
            return kwargs.get("device") is not None

        self._wrap(torch, "tensor", "torch.tensor(device=…)", on_device)
        self._wrap(torch, "as_tensor", "torch.as_tensor(device=…)", on_device)
        self._wrap(torch.amp.GradScaler, "get_scale", "GradScaler.get_scale")
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()

    def count(self, function: str | None = None) -> int:
        """Counted calls, all of them or those made while inside ``function``."""
        return sum(1 for _, frames in self.calls if function is None or function in frames)

    def where(self, function: str | None = None) -> Counter[str]:
        """What was counted (``what @ innermost recordkit function``), for failure messages."""
        return Counter(
            f"{what} @ {frames[0]}"
            for what, frames in self.calls
            if function is None or function in frames
        )
