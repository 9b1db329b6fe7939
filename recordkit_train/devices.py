"""Choosing the training device, and refusing to fall back to the CPU when a GPU is there.

``torch>=2.4`` from PyPI resolves to a CUDA 13 build today, which needs an NVIDIA driver of
version 580 or newer. On a machine with a CUDA 12 driver, ``torch.cuda.is_available()`` is then
False and a job that picks "CUDA when available" would quietly train on the CPU, hundreds of
times slower. :func:`cuda_problem` notices that case — NVIDIA GPUs are present (the kernel
driver answers in ``/proc/driver/nvidia/version``) but this torch cannot use them — and says in
one line which torch build the driver needs.

Driver requirements (NVIDIA's CUDA compatibility guide, "minor version compatibility"): CUDA
13.x needs driver >= 580, CUDA 12.x >= 525, CUDA 11.x >= 450.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from recordkit.errors import RecordkitError

__all__ = ["DeviceError", "cuda_problem", "driver_cuda_major", "nvidia_driver_version"]

_DRIVER_VERSION_FILE = "/proc/driver/nvidia/version"
# Oldest driver branch for each CUDA major version (minor version compatibility).
_CUDA_MAJOR_MIN_DRIVER = ((13, 580), (12, 525), (11, 450))
# The PyTorch wheel index for the newest CUDA minor version of each major that PyTorch ships.
_TORCH_INDEX = {12: "https://download.pytorch.org/whl/cu126"}


class DeviceError(RecordkitError):
    """The requested (or present) device cannot be used; the message says what to do."""


def nvidia_driver_version() -> str | None:
    """The loaded NVIDIA kernel driver's version (e.g. ``"535.104.05"``), or None.

    Read from ``/proc/driver/nvidia/version``, which exists exactly when the NVIDIA kernel
    module is loaded, whatever torch can do.
    """
    try:
        text = Path(_DRIVER_VERSION_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+(?:\.\d+)+)", text)
    if match is None:
        match = re.search(r"\b(\d{3,}\.\d+(?:\.\d+)?)\b", text)
    return match.group(1) if match else "unknown"


def driver_cuda_major(driver: str) -> int | None:
    """The newest CUDA major version a driver runs (13 for 580+, 12 for 525+, ...), or None."""
    try:
        branch = int(driver.split(".")[0])
    except ValueError:
        return None
    for major, oldest in _CUDA_MAJOR_MIN_DRIVER:
        if branch >= oldest:
            return major
    return None


def cuda_problem() -> str | None:
    """Why this torch cannot use the NVIDIA GPUs of this machine, or None.

    None when CUDA works or when there is no NVIDIA driver (a CPU machine: the CPU is the
    right device).

    Returns:
        One line naming the driver, torch's build and the fix.
    """
    if torch.cuda.is_available():
        return None
    driver = nvidia_driver_version()
    if driver is None:
        return None
    where = f"this machine has NVIDIA GPUs (driver {driver})"
    built = torch.version.cuda
    fallback = "; or pass --device cpu to train on the CPU"
    if built is None:
        return (
            f"{where} but torch {torch.__version__} is a CPU-only build: install a CUDA "
            f"build of torch (README, 'Installing on a GPU machine'){fallback}"
        )
    needs = int(built.split(".")[0])
    runs = driver_cuda_major(driver)
    if runs is not None and needs > runs:
        oldest = dict(_CUDA_MAJOR_MIN_DRIVER)[needs]
        index = _TORCH_INDEX.get(runs)
        how = f" (pip install --force-reinstall torch torchvision --index-url {index})"
        return (
            f"{where}, which runs CUDA {runs}.x, but torch {torch.__version__} is built for "
            f"CUDA {built} and needs driver >= {oldest}: install a torch build for CUDA "
            f"{runs}{how if index else ''} or update the driver{fallback}"
        )
    return (
        f"{where} and torch {torch.__version__} is built for CUDA {built}, but "
        f"torch.cuda.is_available() is False (check CUDA_VISIBLE_DEVICES and that the "
        f"GPUs are visible in this container){fallback}"
    )
