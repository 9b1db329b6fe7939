"""The torch backend's device contracts, on CPU (fakes stand in for CUDA)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import recordkit.loaders.gpu_decode as gd

# -- devices ----------------------------------------------------------------------------------


def test_device_context_and_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    entered: list[Any] = []
    monkeypatch.setattr(torch.cuda, "device", lambda d: entered.append(d) or "ctx")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 5)
    assert gd.on_device(torch.device("cuda", 3)) == "ctx" and entered == [torch.device("cuda", 3)]
    with gd.on_device(torch.device("cpu")):
        pass
    assert entered == [torch.device("cuda", 3)]
    assert gd.resolve_device(torch.device("cuda")) == torch.device("cuda", 5)
    assert gd.resolve_device(torch.device("cuda", 2)) == torch.device("cuda", 2)
    assert gd.resolve_device(torch.device("cpu")) == torch.device("cpu")
