"""Run pack tasks on threads or worker processes and hand their outcomes back in input order.

Threads are the default: OpenCV and Pillow's decoders release the GIL, so a thread pool scales
with cores on photographs (``docs/BENCHMARKS.md``). On thumbnails it does not: a 28x28 PNG takes
~50 us of codec time and about as much Python (reading, framing, bookkeeping), every system
call hands the GIL to the other thread and back, and two threads do no more than one. So
``pool="auto"`` measures the images as they go and, once they prove small (under
:data:`PROCESS_BELOW_SECONDS` each) with enough of them left to repay the start-up
(:data:`PROCESS_MIN_WORK_SECONDS`), starts worker processes and sends further tasks there.

Worker processes are fresh interpreters (``python -c "from recordkit.pack.pool import
worker_main; worker_main()"``) fed pickled tasks on stdin, answering on stdout: not
``multiprocessing``, whose ``spawn`` re-imports the caller's ``__main__`` (an unguarded script
would run again in every worker) and whose ``fork`` deadlocks once OpenCV's thread pool has
run in the parent. A worker runs :func:`recordkit.pack.work.run_task`, the same function as a
thread, so the bytes do not depend on where an image was processed. It decodes only images
whose estimated cost is at most ``defer_above`` bytes; larger ones come back unprocessed and
the packer's threads do them under the shared :class:`~recordkit.memory.MemoryBudget`, which
also holds ``defer_above`` for every process task in flight: decode memory stays within the
one budget. A worker that dies (a crash in a codec, the OOM killer) fails the pack with an
error naming the files of its task; it never hangs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import select
import signal
import subprocess
import sys
import threading
import traceback
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Any, BinaryIO

from recordkit.errors import RecordkitError
from recordkit.imageinfo import image_info
from recordkit.imaging import ImageOptions
from recordkit.memory import MemoryBudget
from recordkit.pack.work import DEFAULT_LIMITS, DEFERRED, Job, Outcome, TaskLimits, run_task
from recordkit.safeio import open_regular_sized

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "POOLS",
    "ProcessWorkers",
    "WorkerError",
    "WorkerRaised",
    "ordered",
    "start_early",
    "worker_main",
]

logger = logging.getLogger(__name__)

POOLS = ("auto", "threads", "processes")

TASK_SECONDS = 0.004
"""A task is a run of consecutive images, as many as take about this long at the pace measured
so far: one photograph, dozens of thumbnails (whose per-task cost of a future would otherwise
rival the codec)."""
TASK_IMAGES_MAX = 256
PROCESS_BELOW_SECONDS = 0.001
"""``auto`` moves to processes only for images faster than this per image on a thread."""
PROCESS_MIN_WORK_SECONDS = 5.0
"""... and only with at least this much work left (at the threads' pace). Measured on 32-px RGB
PNGs, 2 cores (``tools/bench_pack_pool.py``, ``docs/BENCHMARKS.md``): processes do an image in
~0.54x the threads' time but cost ~1-2 s more to start (each imports numpy, OpenCV, Pillow
while the threads want the cores), so they pay off from ~19 k images, ~5 s of the threads' work;
at 10 k (~2.5-3 s) the old 2 s threshold switched and made ``auto`` slower than either pool."""
_MIN_MEASURED = 64  # images seen on threads before ``auto`` decides
_DEFER_ABOVE_MAX = 32 << 20  # decode cost a worker process may take on (a ~1.3 Mpx image)

_Result = tuple[list[Outcome], float]


class WorkerError(RecordkitError):
    """A worker process died (a crash in a codec, the OOM killer) or could not be reached."""


class WorkerRaised(RuntimeError):
    """A worker process raised an exception; the message holds its traceback."""


def _where(task: _ProcessTask) -> str:
    first, last = task.jobs[0].path, task.jobs[-1].path
    return first if first == last else f"one of {first} ... {last}"


def ordered(
    pool: ThreadPoolExecutor,
    jobs: Iterable[Job],
    total: int,
    image: ImageOptions,
    window: int,
    budget: MemoryBudget,
    *,
    mode: str = "auto",
    processes: int = 1,
    limits: TaskLimits = DEFAULT_LIMITS,
    workers: ProcessWorkers | None = None,
) -> Iterator[Outcome]:
    """Outcomes of ``jobs`` in input order, with at most ``window`` tasks in flight.

    Args:
        pool: The thread pool (also used for deferred images when processes run).
        jobs: The inputs, in order.
        total: How many ``jobs`` there are (for the ``auto`` decision).
        image: How to process each image.
        window: Most tasks in flight at once.
        budget: The decode-memory budget shared by every thread and process task.
        mode: ``"threads"``, ``"processes"`` or ``"auto"`` (see the module docstring).
        processes: How many worker processes to start when processes are used.
        limits: When a task ends early (so that tasks in flight bound memory).
        workers: Worker processes already started (:func:`start_early`); used once ready,
            and closed at the end.

    Yields:
        One :data:`~recordkit.pack.work.Outcome` per job, in the order of ``jobs``.

    Raises:
        WorkerError: A worker process died.
        WorkerRaised: A worker process raised (its traceback in the message).
    """
    if mode not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {mode!r}")
    it = iter(jobs)
    size = 1
    seen = 0  # images done on threads, and their seconds (for the auto decision)
    busy = 0.0
    consumed = 0
    defer_above = max(1, min(_DEFER_ABOVE_MAX, budget.total // (8 * max(1, processes))))
    setup = (image, limits, defer_above)
    if workers is None and mode == "processes":
        workers = ProcessWorkers(processes)
    if workers is not None:
        workers.setup(setup)
    decided = mode != "auto" or processes < 2 or workers is not None
    pending: deque[tuple[Future[_Result] | _ProcessTask, list[Job], bool]] = deque()

    def submit(batch: list[Job], front: bool = False) -> None:
        use = workers is not None and workers.usable()
        fut: Future[_Result] | _ProcessTask
        if use:
            assert workers is not None
            if not workers.used:
                workers.used = True
                logger.debug("worker processes ready; %d images done on threads", consumed)
            fut = workers.submit(batch, budget, defer_above)
        else:
            fut = pool.submit(run_task, batch, image, budget, limits)
        item = (fut, batch, use)
        if front:
            pending.appendleft(item)
        else:
            pending.append(item)

    finished = False
    try:
        while len(pending) < window and (batch := list(islice(it, size))):
            submit(batch)
        while pending:
            fut, batch, in_process = pending.popleft()
            results, seconds = fut.result()  # a worker's exception surfaces here
            if in_process and any(r[1] == DEFERRED for r in results):
                results = _undefer(pool, batch, results, image, budget, limits)
            if len(results) < len(batch):  # ended early: the rest is next in order
                submit(batch[len(results) :], front=True)
            else:
                per_image = seconds / len(results)
                size = max(1, min(TASK_IMAGES_MAX, int(TASK_SECONDS / max(per_image, 1e-7))))
                if not in_process:
                    seen += len(results)
                    busy += seconds
                if not decided and seen >= _MIN_MEASURED:
                    decided = True
                    per = busy / seen
                    left = (total - consumed - len(results)) * per / processes
                    if per < PROCESS_BELOW_SECONDS and left > PROCESS_MIN_WORK_SECONDS:
                        logger.info(
                            "images take %.0f us each on threads: starting %d worker processes",
                            per * 1e6,
                            processes,
                        )
                        workers = ProcessWorkers(processes)
                        workers.setup(setup)
                if nxt := list(islice(it, size)):
                    submit(nxt)
            consumed += len(results)
            yield from results
        finished = True
    finally:
        for fut, _, _ in pending:
            fut.cancel()
        if workers is not None:
            workers.close(kill=not finished)


def start_early(
    mode: str, processes: int, total: int, sample: list[str], image: ImageOptions
) -> ProcessWorkers | None:
    """Worker processes started before the plan is made, when a header sample says thumbnails.

    ``auto`` otherwise decides after the first images (see :func:`ordered`); deciding from
    ``sample`` (paths of a few inputs spread over the lists) lets the processes import while
    the lists are checked and the shards planned, instead of while the threads work. Taken
    when there are at least :data:`EARLY_MIN_IMAGES` inputs and every readable sampled image
    (its size after ``--resize``) has at most :data:`EARLY_MAX_PIXELS` pixels.
    """
    if mode != "auto" or processes < 2 or total < EARLY_MIN_IMAGES or not sample:
        return None
    sizes = [s for s in map(_header_pixels, sample) if s is not None]
    if len(sizes) * 2 < len(sample):
        return None
    largest = max(_out_pixels(w, h, image) for w, h in sizes)
    if largest > EARLY_MAX_PIXELS:
        return None
    logger.info("thumbnails (%d pixels at most): starting %d worker processes", largest, processes)
    return ProcessWorkers(processes)


EARLY_MIN_IMAGES = 20_000
EARLY_MAX_PIXELS = 160 * 160


def _header_pixels(path: str) -> tuple[int, int] | None:
    """``(width, height)`` from the first 64 KB of a JPEG or PNG, or None."""
    try:
        fd, _ = open_regular_sized(path, what="image")
        try:
            head = os.read(fd, 1 << 16)
        finally:
            os.close(fd)
        info = image_info(head)
    except (OSError, RecordkitError, ValueError):
        return None
    return info.width, info.height


def _out_pixels(w: int, h: int, image: ImageOptions) -> int:
    short = min(w, h)
    if image.resize and short and (image.upscale or short > image.resize):
        scale = image.resize / short
        return int(w * h * scale * scale)
    return w * h


def _undefer(
    pool: ThreadPoolExecutor,
    batch: list[Job],
    results: list[Outcome],
    image: ImageOptions,
    budget: MemoryBudget,
    limits: TaskLimits,
) -> list[Outcome]:
    """Process on threads the images a worker process left (too large for it)."""
    futs = {
        k: pool.submit(run_task, [batch[k]], image, budget, limits)
        for k, r in enumerate(results)
        if r[1] == DEFERRED
    }
    out = list(results)
    for k, fut in futs.items():
        out[k] = fut.result()[0][0]
    return out


# --------------------------------------------------------------------------------------------
# Worker processes
# --------------------------------------------------------------------------------------------

_BOOT = "from recordkit.pack.pool import worker_main; worker_main()"
_PIPE_BYTES = 1 << 20  # room for the tasks in flight, so that sending a task never waits


class ProcessWorkers:
    """``count`` worker processes; each task goes to the one with the fewest outstanding.

    Only the packer's main thread talks to them: it writes a task to a worker's stdin (a
    thread in the worker drains it at once) and reads a worker's answers, which come back in
    the order of its tasks, when it needs one. No thread of this process touches the pipes,
    so none competes for the GIL with the writer.

    Args:
        count: Processes to start (each imports recordkit, then waits for :meth:`setup`).
    """

    def __init__(self, count: int) -> None:
        self._workers: list[_Worker] = []
        self._broken = False
        self.used = False
        try:
            for _ in range(count):
                self._workers.append(_Worker())
        except OSError as exc:  # no executable to start (a frozen app), no processes left
            logger.warning("cannot start a worker process (%s); using threads", exc)
            self._give_up()

    def setup(self, setup: tuple[ImageOptions, TaskLimits, int]) -> None:
        """Tell every process how to process images: ``(image, limits, defer_above)``, the
        last the largest decode cost a process takes on."""
        for w in self._workers:
            with contextlib.suppress(WorkerError):  # usable() or a task's result reports it
                w.send(setup)

    def usable(self) -> bool:
        """True once every process has started (until then, tasks go to the threads); False
        for good if one could not start."""
        if self._broken:
            return False
        try:
            return all(w.started() for w in self._workers)
        except WorkerError as exc:
            logger.warning("%s; using threads", exc)
            self._give_up()
            return False

    def submit(self, jobs: list[Job], budget: MemoryBudget, reserve: int) -> _ProcessTask:
        """Send ``jobs`` to the least busy process; ``reserve`` bytes of ``budget`` are held
        until its answer is read."""
        worker = min(self._workers, key=lambda w: w.outstanding)
        return worker.submit(jobs, budget, budget.acquire(reserve))

    def close(self, kill: bool = False) -> None:
        """Stop every process once its tasks are done (``kill``: now), and wait for it."""
        for w in self._workers:
            w.stop(kill)
        for w in self._workers:
            w.join()

    def _give_up(self) -> None:
        self._broken = True
        self.close(kill=True)


class _ProcessTask:
    """The answer to one task sent to a worker process (the part of a Future that is used)."""

    def __init__(self, worker: _Worker, jobs: list[Job], budget: MemoryBudget, held: int):
        self._worker = worker
        self.jobs = jobs
        self._budget = budget
        self._held = held
        self._result: _Result | None = None

    def result(self) -> _Result:
        """Wait for the answer; raises :class:`WorkerError` if the worker died,
        :class:`WorkerRaised` if it raised."""
        if self._result is None:
            try:
                self._result = self._worker.answer(self)
            finally:
                self._budget.release(self._held)
                self._held = 0
        return self._result

    def cancel(self) -> bool:
        """Never cancels (the worker does it anyway); gives back the reserved memory."""
        self._budget.release(self._held)
        self._held = 0
        return False


class _Worker:
    """One worker process and its two pipes."""

    def __init__(self) -> None:
        import recordkit

        # the child imports this same recordkit, wherever it was imported from here
        root = os.path.dirname(os.path.dirname(os.path.abspath(recordkit.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        # one image at a time per process: no BLAS threads (OpenBLAS's spin in sched_yield)
        env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        self._in: BinaryIO = self.proc.stdin  # type: ignore[assignment]
        self._out: BinaryIO = self.proc.stdout  # type: ignore[assignment]
        resize = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux; elsewhere the default will do
        for pipe in (self._in, self._out):
            if resize is not None:
                with contextlib.suppress(OSError):
                    fcntl.fcntl(pipe.fileno(), resize, _PIPE_BYTES)
        self._is_ready = False
        self._failure: str | None = None
        self._queue: deque[_ProcessTask] = deque()

    @property
    def outstanding(self) -> int:
        return len(self._queue)

    def started(self) -> bool:
        """Whether the process said it is ready, without waiting (POSIX; elsewhere it waits)."""
        if not self._is_ready:
            if os.name == "posix":
                readable, _, _ = select.select([self._out], [], [], 0)
                if not readable:
                    return False
            self._read_ready()
        return True

    def submit(self, jobs: list[Job], budget: MemoryBudget, held: int) -> _ProcessTask:
        task = _ProcessTask(self, jobs, budget, held)
        self._queue.append(task)
        with contextlib.suppress(WorkerError):  # reported by task.result(), where it is read
            self.send([tuple(job) for job in jobs])  # plain tuples pickle several times faster
        return task

    def answer(self, task: _ProcessTask) -> _Result:
        """Read answers until ``task``'s (they come in order); raise if it failed."""
        if self._failure is None:
            try:
                if not self._is_ready:
                    self._read_ready()
                # answers come in the order of the tasks: read those sent before ``task``
                # first (each takes itself off the queue once its answer is read; taking it
                # off here, before its nested read, would let that read skip past ``task``)
                while self._queue and self._queue[0] is not task:
                    self._queue[0].result()
                msg = pickle.load(self._out)
                self._queue.popleft()
            except (EOFError, OSError, pickle.UnpicklingError):
                self._failure = self._death()
            else:
                if msg[0] == "done":
                    return msg[1]
                # a bug, not bad input (that is a skip reason): keep its traceback, as a thread's
                raise WorkerRaised(f"a worker process raised, processing {_where(task)}:\n{msg[1]}")
        raise WorkerError(f"{self._failure} (processing {_where(task)})")

    def stop(self, kill: bool = False) -> None:
        if kill:
            with contextlib.suppress(OSError):
                self.proc.kill()
        with contextlib.suppress(OSError, WorkerError):
            self.send(None)
        with contextlib.suppress(OSError):
            self._in.close()

    def join(self) -> None:
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - a worker stuck in a codec
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            self._out.close()

    def send(self, msg: Any) -> None:
        try:
            pickle.dump(msg, self._in, protocol=pickle.HIGHEST_PROTOCOL)
            self._in.flush()
        except (OSError, ValueError):  # a broken pipe: the process is gone
            self._failure = self._failure or self._death()
            raise WorkerError(self._failure) from None

    def _read_ready(self) -> None:
        try:
            msg = pickle.load(self._out)
        except (EOFError, OSError, pickle.UnpicklingError):
            self._failure = self._death()
            raise WorkerError(f"{self._failure} before it was ready") from None
        assert msg == ("ready",), msg
        self._is_ready = True

    def _death(self) -> str:
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - closed its stdout, still running
            self.proc.kill()
            code = self.proc.wait()
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        return f"a worker process (pid {self.proc.pid}) {how}"


def worker_main() -> None:
    """The body of a worker process: read tasks from stdin, answer on stdout, until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    out: BinaryIO = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print must not corrupt the answers
    inp = sys.stdin.buffer
    import cv2

    cv2.setNumThreads(1)  # as in the packer's threads: one image per core
    try:
        image, limits, defer_above = pickle.load(inp)
    except EOFError:  # not needed after all (an early start for a pack that stopped)
        return
    budget = MemoryBudget(defer_above, "a worker process")
    tasks: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def drain() -> None:  # take every task off the pipe at once, so the parent never waits
        try:
            while True:
                msg = pickle.load(inp)
                tasks.put(msg)
                if msg is None:
                    return
        except (EOFError, OSError):
            tasks.put(None)

    threading.Thread(target=drain, daemon=True).start()
    pickle.dump(("ready",), out)
    out.flush()
    while (rows := tasks.get()) is not None:
        try:
            jobs = [Job._make(row) for row in rows]
            msg: tuple[Any, ...] = ("done", run_task(jobs, image, budget, limits, defer_above))
        except Exception:
            msg = ("error", traceback.format_exc())
        pickle.dump(msg, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()
