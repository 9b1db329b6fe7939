"""Device handling of the torch backend: which CUDA device its iterator and batches run on.

:func:`on_device` is the CUDA device context the loader creates its DataLoader iterator (and
its pin-memory thread) in; :func:`resolve_device` fixes a bare ``cuda`` to the current device
when the loader is built. Both are plain functions with CPU tests (fakes stand in for CUDA).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = ["on_device", "resolve_device"]


def resolve_device(device: torch.device) -> torch.device:
    """``cuda`` without an index -> ``cuda:<current device>``; other devices unchanged.

    The loader's normalization constants are placed on the current device when it is built, so
    fixing the index then keeps every later step (iterator, pin thread, decode) on that device.
    """
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def on_device(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """``torch.cuda.device(device)`` for a CUDA device with an index, else a no-op context.

    DataLoader's pin-memory thread pins for the device that is current when the iterator is
    created (``torch.accelerator.current_device_index()``); a user on ``cuda:3`` who never
    called ``set_device`` would otherwise get a pin thread creating a context on GPU 0.
    """
    if device.type == "cuda" and device.index is not None:
        return torch.cuda.device(device)
    return contextlib.nullcontext()
