"""Distributed setup from torchrun's environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``).

A process group is created only when ``WORLD_SIZE > 1``: NCCL when CUDA is available, gloo on
the CPU. Without torchrun everything here degrades to a single process (rank 0 of 1).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "DistEnv",
    "all_reduce_sum",
    "barrier",
    "broadcast_buffers",
    "cleanup",
    "is_initialized",
    "is_main",
    "setup",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job.

    Attributes:
        rank: Global rank.
        local_rank: Rank on this node (selects the GPU).
        world_size: Number of processes.
        device: This process's device.
        owns_group: Whether :func:`setup` created the process group (and should destroy it).
    """

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def is_initialized() -> bool:
    """Whether a ``torch.distributed`` process group is up."""
    return dist.is_available() and dist.is_initialized()


def setup(device: str | None = None) -> DistEnv:
    """Read torchrun's environment, pick the device and start the process group if needed.

    Args:
        device: ``"cuda"``, ``"cpu"`` or None (CUDA when available). On CUDA the device is
            ``cuda:LOCAL_RANK``, made current.

    Returns:
        The process's :class:`DistEnv`. Ranks other than 0 have the ``recordkit`` and
        ``recordkit_train`` loggers set to WARNING, so only rank 0 logs progress.

    Raises:
        ValueError: The environment is inconsistent (e.g. ``RANK >= WORLD_SIZE``).
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda:
        dev = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    owns = False
    if world > 1 and not is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world, **kwargs)
        owns = True
        logger.debug("rank %d/%d: %s process group on %s", rank, world, backend, dev)
    if rank != 0:
        for name in ("recordkit", "recordkit_train"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world, device=dev, owns_group=owns)


def is_main() -> bool:
    """Whether this process is rank 0 (True outside distributed runs)."""
    return not is_initialized() or dist.get_rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (no-op without a process group).

    Args:
        tensor: On the process group's device (CUDA for NCCL).

    Returns:
        ``tensor``.
    """
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each training forward pass, so after the last step
    of an epoch each rank holds its own running statistics; call this before validating so
    every rank scores the model that rank 0 checkpoints. No-op without a process group.

    Args:
        module: The unwrapped model.
        src: The rank whose buffers win.
    """
    if is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src)


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_initialized():
        dist.barrier()


def cleanup(env: DistEnv | None = None) -> None:
    """Destroy the process group if ``env`` created it (or, with no ``env``, if one is up).

    Args:
        env: What :func:`setup` returned.
    """
    if is_initialized() and (env is None or env.owns_group):
        dist.destroy_process_group()
