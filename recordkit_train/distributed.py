"""Distributed setup from torchrun's environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``).

A process group is created only when ``WORLD_SIZE > 1``: NCCL when CUDA is available, gloo on
the CPU. Without torchrun everything here degrades to a single process (rank 0 of 1).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from recordkit_train.devices import DeviceError, cuda_problem

__all__ = [
    "DistEnv",
    "all_reduce_sum",
    "barrier",
    "broadcast_buffers",
    "cleanup",
    "RankFailure",
    "guard_rank",
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


def setup(device: str | None = None, *, timeout: float | None = None) -> DistEnv:
    """Read torchrun's environment, pick the device and start the process group if needed.

    Args:
        device: ``"cuda"``, ``"cpu"`` or None (CUDA when available). On CUDA the device is
            ``cuda:LOCAL_RANK``, made current. With None or ``"cuda"``, a machine whose NVIDIA
            GPUs this torch cannot use is an error, not a silent fall-back to the CPU
            (:func:`recordkit_train.devices.cuda_problem`).
        timeout: Seconds a collective may wait for the other ranks before this rank fails
            (None: PyTorch's default, 10 minutes for NCCL and 30 for gloo). A rank that hangs
            rather than dies is noticed only through this.

    Returns:
        The process's :class:`DistEnv`. Ranks other than 0 have the ``recordkit`` and
        ``recordkit_train`` loggers set to WARNING, so only rank 0 logs progress.

    Raises:
        ValueError: The environment is inconsistent (e.g. ``RANK >= WORLD_SIZE``).
        DeviceError: NVIDIA GPUs are present but unusable, or ``"cuda"`` was asked for on a
            machine without CUDA.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    use_cuda = device is None or device.startswith("cuda")
    if use_cuda:
        problem = cuda_problem()
        if problem:
            raise DeviceError(problem)
        if device is not None and not torch.cuda.is_available():
            raise DeviceError("device cuda was asked for, but this machine has no CUDA device")
        use_cuda = torch.cuda.is_available()
    if use_cuda:
        dev = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    owns = False
    if world > 1 and not is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict = {"device_id": dev} if dev.type == "cuda" else {}
        if timeout is not None:
            kwargs["timeout"] = datetime.timedelta(seconds=timeout)
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


class RankFailure(RuntimeError):
    """This rank stopped because another rank failed (its own state is fine)."""


# What gloo, NCCL and the TCP store say when a peer process is gone or stuck: a backend
# marker and a symptom must both appear, so that e.g. a DataLoader timeout is not mistaken.
_BACKENDS = ("gloo", "nccl", "c10d", "tcpstore", "process group")
_SYMPTOMS = (
    "connection reset by peer",
    "connection closed by peer",
    "broken pipe",
    "connection refused",
    "timed out",
    "aborted",
)


def _lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another rank died or hung."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return (
        isinstance(exc, RuntimeError)
        and any(b in text for b in _BACKENDS)
        and any(s in text for s in _SYMPTOMS)
    )


@contextlib.contextmanager
def guard_rank() -> Iterator[None]:
    """Make a distributed failure end this rank with one clear line instead of a hang or a
    traceback in every rank's log.

    Under ``WORLD_SIZE > 1``:

    - a collective that fails because another rank died (connection reset) or stopped
      answering (the process-group timeout) raises :class:`RankFailure`:
      ``rank 0 of 2 stopped: lost contact with another rank (…); the first rank to fail
      has the cause in its log``;
    - ``SIGTERM`` — what torchrun sends the surviving ranks once one has failed — becomes
      :class:`RankFailure` too, so the rank unwinds (closing loaders and files) instead of
      dying mid-write. While training steps run, :class:`recordkit_train.preemption.StopRequest`
      takes the first SIGTERM as a stop request instead (a preemption notice looks the same);
      the next collective tells the two apart (it fails when a peer is gone: the same
      ``RankFailure``), and a second SIGTERM comes back here;
    - any other exception is this rank's own failure: it is logged as
      ``rank 1 of 2 failed: <type>: <message>`` and re-raised with its traceback (wrapped
      by torchrun's ``record`` where available, so the launcher's summary shows it as the
      root cause).

    With one process it changes nothing.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        yield
        return
    rank = _env_int("RANK", 0)
    where = f"rank {rank} of {world}"

    def _on_sigterm(signum: int, frame: object) -> None:
        raise RankFailure(
            f"{where} stopped by the launcher (SIGTERM): another rank failed; "
            "its error is the root cause in the launcher's summary"
        )

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    from recordkit_train.preemption import Preempted  # it imports this module

    try:
        yield
    except (RankFailure, Preempted):
        raise
    except Exception as exc:
        if _lost_peer(exc):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RankFailure(
                f"{where} stopped: lost contact with another rank ({first[:300]}); "
                "the first rank to fail has the cause in its log"
            ) from None
        import click

        if not isinstance(exc, click.ClickException):
            print(f"{where} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            _record_for_torchrun(exc)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _record_for_torchrun(exc: BaseException) -> None:
    """Write ``exc`` to torchrun's error file (``TORCHELASTIC_ERROR_FILE``), if it set one."""
    if not os.environ.get("TORCHELASTIC_ERROR_FILE"):
        return
    try:
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        ErrorHandler().record_exception(exc)
    except Exception:  # the summary is a nicety; never mask the real error
        logger.debug("could not record the error for torchrun", exc_info=True)
