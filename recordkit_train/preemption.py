"""Stopping cleanly when the job is preempted: signals, agreement between ranks, the step trace.

``SIGUSR1`` (what Slurm's ``--signal=USR1@…`` sends) and ``SIGTERM`` (what Slurm, Kubernetes
and ``torchrun`` send before killing) ask the run to stop. :class:`StopRequest` turns them into
a flag; the engine polls it after each training step and, once every rank agrees, rank 0 writes
a mid-epoch checkpoint and every rank raises :class:`Preempted`, which the command line turns
into exit code :data:`PREEMPTED_EXIT_CODE` (75, ``EX_TEMPFAIL``: "try again later").

Agreement: ranks see a signal at different moments (or only some of them see it), but they
must stop after the same step, or the ones still training would wait forever in DDP's
all-reduce. So the flag is combined across ranks with an all-reduce (MAX):

- with one process there is nothing to agree on: the local flag is read after every step;
- on the CPU (gloo) every step: a one-element all-reduce costs tens of microseconds there;
- on CUDA (NCCL) reading a reduced value on the host is a device sync, which contract 11
  forbids per step. So the reduction is pipelined: every :data:`CUDA_POLL_EVERY` steps each
  rank launches the all-reduce of its flag (asynchronous on the device) followed by a
  non-blocking copy into pinned host memory and a CUDA event, and reads the result of the
  *previous* launch, ``CUDA_POLL_EVERY`` steps old, after waiting for its event only (long
  done by then; the queue of later steps is not waited for). Ranks launch and read at the same
  steps, so they decide at the same step; the stop comes 8 to 16 steps after the signal.

SIGTERM versus a failed rank: ``torchrun`` also sends SIGTERM to the surviving ranks when one
rank fails, where :func:`recordkit_train.distributed.guard_rank` must end the run with a one-line
error instead. A rank cannot tell the two apart when the signal arrives, so the first SIGTERM
is a stop request like SIGUSR1, and the next collective decides: when a peer is gone it fails,
and the rank ends with ``rank r of n stopped by the launcher (SIGTERM): another rank failed``;
when every peer answers, the job is being preempted. ``SIGUSR1`` always means preemption. A
second SIGTERM does what SIGTERM did before training started (guard_rank's error under
torchrun, the default termination of a single process), for a user who will not wait.

The per-step loss trace (``steps.jsonl``, :class:`StepTrace`) is the machine-readable record
that lets a resumed run be compared with an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from recordkit.format.atomic import atomic_write_text
from recordkit_train import distributed
from recordkit_train.checkpoint import capture_rng, save_checkpoint, unwrap

__all__ = [
    "CUDA_POLL_EVERY",
    "Checkpointer",
    "PREEMPTED_EXIT_CODE",
    "Preempted",
    "StepTrace",
    "StopRequest",
    "trim_jsonl",
    "trim_trace",
]

logger = logging.getLogger(__name__)
# Checkpoint lines are progress, printed like the engine's own (plain, on rank 0).
progress = logging.getLogger("recordkit_train.engine")

#: Exit code of every rank after a preemption checkpoint: ``EX_TEMPFAIL`` from sysexits.h
#: (temporary failure, retry later), distinct from 0 (finished) and 1 (an error).
PREEMPTED_EXIT_CODE = 75

#: Steps between two (pipelined) stop-flag reductions on CUDA; see the module docstring.
CUDA_POLL_EVERY = 8


class Preempted(Exception):
    """The run stopped on a signal after writing a checkpoint it can be resumed from.

    Attributes:
        checkpoint: The checkpoint written (rank 0's path; every rank knows it).
        epoch: The epoch in progress.
        batch: Batches of that epoch done per rank (``--resume`` starts at the next one).
        signal_name: ``SIGTERM`` or ``SIGUSR1`` (on a rank that saw no signal itself: the
            name reported by the agreement, ``a signal on another rank``).
    """

    def __init__(self, checkpoint: Path, epoch: int, batch: int, signal_name: str) -> None:
        self.checkpoint = checkpoint
        self.epoch = epoch
        self.batch = batch
        self.signal_name = signal_name
        super().__init__(
            f"stopped on {signal_name} after epoch {epoch}, batch {batch}; wrote {checkpoint}; "
            f"continue with --resume {checkpoint.parent}"
        )


class StopRequest:
    """SIGTERM / SIGUSR1 as a stop flag that all ranks agree on; a context manager.

    Inside ``with StopRequest(env):`` the two signals set the flag (the handlers are installed
    only from the main thread; elsewhere the object still works but never sees a signal).
    Call :meth:`poll` after every training step on every rank, or :meth:`poll_now` at points
    where a host sync is fine (an epoch's end).

    Args:
        env: The process's place in the job (world size, device).
        poll_every: Steps between reductions on CUDA with several ranks (default
            :data:`CUDA_POLL_EVERY`); other setups check every step.
        pipelined: Use the pipelined reduction (default: on CUDA); only with several ranks.
    """

    def __init__(
        self,
        env: distributed.DistEnv,
        poll_every: int = CUDA_POLL_EVERY,
        *,
        pipelined: bool | None = None,
    ) -> None:
        self.env = env
        self.requested = False
        self.signal_name = ""
        self._sigterm = False
        self._previous: dict[int, Any] = {}
        if pipelined is None:
            pipelined = env.device.type == "cuda"
        self._pipelined = pipelined and env.world_size > 1
        self._every = max(1, poll_every) if self._pipelined else 1
        self._calls = 0
        self._pending: tuple[torch.Tensor, Any] | None = None  # (host copy, CUDA event)
        self._flag: torch.Tensor | None = None
        self._host: torch.Tensor | None = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                self._previous[sig] = signal.signal(sig, self._on_signal)
        else:
            logger.debug("not on the main thread: SIGTERM/SIGUSR1 will not stop training")
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # No logging here: a handler may interrupt a logging call holding its lock.
        if signum == signal.SIGTERM:
            if self._sigterm:  # the second one: what SIGTERM did before
                self._escalate(signum, frame)
                return
            self._sigterm = True
        if not self.requested:
            self.requested = True
            self.signal_name = signal.Signals(signum).name

    def _escalate(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)  # guard_rank's: raises RankFailure
        elif previous != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def request(self, signal_name: str = "request") -> None:
        """Ask to stop, as a signal would (for code that embeds the trainer)."""
        self.requested = True
        self.signal_name = self.signal_name or signal_name

    def poll(self) -> bool:
        """After a training step, on every rank: whether all ranks stop after this step.

        Raises:
            recordkit_train.distributed.RankFailure: This rank had SIGTERM and a peer is gone
                (the launcher is ending the job after a failure, not preempting it).
        """
        if self.env.world_size == 1:
            return self.requested
        if not self._pipelined:
            return self._reduce_now()
        self._calls += 1
        if self._calls % self._every:
            return False
        stop = False
        if self._pending is not None:
            stop = self._read_pending()
        if stop:
            self._agreed()
            return True
        self._launch()
        return False

    def poll_now(self) -> bool:
        """Like :meth:`poll`, but reduces the flag now and waits for it (a host sync)."""
        if self.env.world_size == 1:
            return self.requested
        # A pending result is the same on every rank: all return here together, or none.
        if self._pending is not None and self._read_pending():
            self._agreed()
            return True
        return self._reduce_now()

    def _collective(self, tensor: torch.Tensor) -> None:
        try:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        except Exception as exc:
            if self._sigterm and distributed._lost_peer(exc):
                env = self.env
                raise distributed.RankFailure(
                    f"rank {env.rank} of {env.world_size} stopped by the launcher (SIGTERM): "
                    "another rank failed; its error is the root cause in the launcher's summary"
                ) from None
            raise

    def _reduce_now(self) -> bool:
        flag = torch.tensor([1 if self.requested else 0], dtype=torch.int32, device=self._device())
        self._collective(flag)
        if int(flag.item()):
            self._agreed()
            return True
        return False

    def _launch(self) -> None:
        """All-reduce the flag without waiting for it: on CUDA, into pinned host memory with
        an event to wait for later (on the CPU, used by the tests, a plain copy)."""
        cuda = self.env.device.type == "cuda"
        if self._flag is None:
            self._flag = torch.zeros(1, dtype=torch.int32, device=self.env.device)
            # one pinned buffer: a launch is read before the next one writes it
            self._host = torch.zeros(1, dtype=torch.int32, pin_memory=cuda)
        assert self._host is not None
        self._flag.fill_(1 if self.requested else 0)
        self._collective(self._flag)
        self._host.copy_(self._flag, non_blocking=cuda)
        event = None
        if cuda:
            event = torch.cuda.Event()
            event.record()
        self._pending = (self._host, event)

    def _read_pending(self) -> bool:
        host, event = self._pending  # type: ignore[misc]
        self._pending = None
        if event is not None:
            event.synchronize()  # recorded _every steps ago: waits for that point only
        return bool(host.item())  # a host tensor: no device sync

    def _device(self) -> torch.device:
        return self.env.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def _agreed(self) -> None:
        if not self.requested:
            self.requested = True
            self.signal_name = "a signal on another rank"


class StepTrace:
    """The loss of every training step, in ``steps.jsonl``: one JSON object per line.

    ``{"step": global step (1-based), "epoch": e, "iter": step in the epoch (1-based),
    "loss": mean of the ranks' losses, "lr": lr}``. Losses stay on the device until they are
    read together with the engine's meters (it passes the trace to
    :func:`~recordkit_train.metrics.read_meters` at its print boundaries and epoch ends: the
    same collective, the same single host sync) or by :meth:`flush` before a checkpoint; rank
    0 then appends the lines. A resumed run first trims the file to the steps before its start
    (:func:`trim_trace`), so the file of a run stopped and resumed any number of times equals
    that of an uninterrupted one.

    Args:
        path: The file (written by rank 0 only).
        env: The process's place in the job.
    """

    def __init__(self, path: Path, env: distributed.DistEnv) -> None:
        self.path = path
        self.env = env
        self.device: torch.device | None = None
        self._losses: list[torch.Tensor] = []
        self._rows: list[tuple[int, int, int, float]] = []

    def add(self, step: int, epoch: int, it: int, loss: torch.Tensor, lr: float) -> None:
        """Record a step (no host sync: ``loss`` stays where it is)."""
        self.device = self.device or loss.device
        self._losses.append(loss.detach().reshape(()))
        self._rows.append((step, epoch, it, lr))

    def flush(self) -> None:
        """Reduce the pending losses over the ranks and write them; on every rank."""
        if self._rows:
            from recordkit_train.metrics import read_meters

            read_meters(self)

    # The read_meters protocol: what to sum over the ranks, and what to do with the sums.
    def _state(self, device: torch.device) -> torch.Tensor:
        if not self._losses:
            return torch.zeros(0, dtype=torch.float64, device=device)
        return torch.stack(self._losses).to(device, torch.float64)

    def _load(self, packed: torch.Tensor) -> None:
        pass

    def _compute_from(self, values: list[float]) -> dict[str, int]:
        if self.env.is_main and self._rows:
            with open(self.path, "a", encoding="utf-8") as f:
                for (step, epoch, it, lr), total in zip(self._rows, values, strict=True):
                    loss = total / self.env.world_size
                    row = {"step": step, "epoch": epoch, "iter": it, "loss": loss, "lr": lr}
                    f.write(json.dumps(row) + "\n")
        written = len(self._rows)
        self._losses.clear()
        self._rows.clear()
        return {"steps": written}


def trim_jsonl(path: Path, key: str, first: int) -> None:
    """Keep the rows of a JSON-lines file whose ``key`` is below ``first`` (a line cut short
    by a kill or crash goes too); the file is replaced atomically (temp file + rename)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and int(row.get(key, first)) < first:
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


def trim_trace(path: Path, first_step: int) -> None:
    """Keep the rows of ``steps.jsonl`` before global step ``first_step`` (1-based)."""
    trim_jsonl(path, "step", first_step)


def gather_to_all(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` without a process group)."""
    if not distributed.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@dataclass
class Checkpointer:
    """Writes ``last.pt`` at an epoch's end or mid-epoch; every rank calls it, rank 0 writes.

    The state (see :mod:`recordkit_train.checkpoint` for the common keys) adds, for an exact
    resume: ``batch`` (batches of ``epoch`` done per rank; 0 at an epoch's end, where ``epoch``
    is the next one), ``world_size``, ``batch_size`` and ``iters_per_epoch`` (a mid-epoch
    position only means something for the same ones), ``epoch_loss`` (the epoch's
    ``[sum of loss x n, n]`` so far, over all ranks) and ``ranks``: per rank, its RNG states and
    its loader's ``state_dict()`` (for DALI, the pipeline's own checkpoint).

    Attributes:
        out: The run directory.
        env: This process's place in the job.
        stop: The stop request polled after each step.
        trace: The step trace, flushed before each checkpoint.
        best: The best validation top-1 so far.
        ema: The weights' moving average (:class:`~recordkit_train.ema.ModelEma`), saved as
            ``ema`` when set.
    """

    out: Path
    env: distributed.DistEnv
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Any
    schedule: Any
    config: dict[str, Any]
    classes: list[str]
    stop: StopRequest
    trace: StepTrace
    best: float | None = None
    ema: Any = None

    @property
    def path(self) -> Path:
        """``out/last.pt``."""
        return self.out / "last.pt"

    def save(
        self,
        *,
        epoch: int,
        batch: int,
        loader: Any,
        epoch_loss: Any = None,
        improved: bool = False,
    ) -> None:
        """Write ``last.pt`` (and ``best.pt`` when ``improved``) for ``epoch`` at ``batch``.

        Collective: call on every rank. Mid-epoch (``batch > 0``) the step trace is flushed
        first and ``epoch_loss`` (a LossMeter) is summed over the ranks.
        """
        self.trace.flush()
        loader_state = loader.state_dict() if batch and hasattr(loader, "state_dict") else None
        ranks = gather_to_all({"rng": capture_rng(), "loader": loader_state})
        sums = epoch_loss.global_sums() if batch and epoch_loss is not None else None
        if self.env.is_main:
            state = {
                "model": unwrap(self.model).state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "schedule": self.schedule.state_dict(),
                "epoch": epoch,
                "batch": batch,
                "best_metric": self.best,
                "config": self.config,
                "classes": self.classes,
                "rng": ranks[0]["rng"],
                "ranks": ranks,
                "world_size": self.env.world_size,
                "batch_size": int(self.config.get("batch_size", 0)),
                "iters_per_epoch": len(loader),
                "epoch_loss": sums,
            }
            if self.ema is not None:
                state["ema"] = self.ema.state_dict()
            save_checkpoint(self.path, state)
            if improved:
                save_checkpoint(self.out / "best.pt", state)
            if batch:
                progress.info("checkpoint: epoch %d, batch %d, %s", epoch, batch, self.path)
        distributed.barrier()
