"""Run a recordkit command under a memory bound and a time limit, in a child process.

``python tests/guarded.py --memory 512 -- recordkit verify shards/`` imports the command's
modules (and the heavy libraries they use), then caps the address space at what the process
has mapped so far plus ``--memory`` MiB (``RLIMIT_AS``) and runs the command, so an input that
makes recordkit read ``/dev/zero`` or build a list of 10**30 class names ends in a
``MemoryError`` within a second instead of swapping the machine. :func:`run_guarded` runs it
from a test with a wall-clock timeout and says which of the outcomes happened.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def vm_size() -> int:
    """Bytes of address space this process has mapped (``VmSize``)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")  # pragma: no cover


def limit_memory(extra: int) -> None:
    """Cap this process's address space at what it maps now plus ``extra`` bytes."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (vm_size() + extra, resource.RLIM_INFINITY))


def child_env() -> dict[str, str]:
    """The environment for a guarded child: the repository on the path, few malloc arenas
    (each thread's arena reserves 64 MiB of address space), no GPU, one OpenCV thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(MALLOC_ARENA_MAX="2", CUDA_VISIBLE_DEVICES="", OPENCV_NUM_THREADS="1")
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONHASHSEED="0")
    return env


@dataclass(frozen=True)
class Guarded:
    """What a guarded command did."""

    returncode: int | None  # None: killed after the timeout
    stdout: str
    stderr: str

    @property
    def hung(self) -> bool:
        return self.returncode is None

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.stderr + self.stdout

    @property
    def out_of_memory(self) -> bool:
        return "MemoryError" in self.stderr + self.stdout

    @property
    def last_line(self) -> str:
        lines = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return lines[-1] if lines else ""


def run_guarded(args: list[str], *, memory_mib: int = 768, timeout: float = 60) -> Guarded:
    """Run ``recordkit ARGS`` (or ``recordkit-train ARGS`` when ``args[0]`` is
    ``"recordkit-train"``) in a child under :func:`limit_memory` and a timeout."""
    cmd = [sys.executable, str(HERE / "guarded.py"), "--memory", str(memory_mib), "--", *args]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=child_env(), check=False
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return Guarded(None, out, err)
    return Guarded(proc.returncode, proc.stdout, proc.stderr)


def main(argv: list[str]) -> int:
    """``guarded.py --memory MIB -- PROGRAM ARGS...``."""
    if len(argv) < 4 or argv[0] != "--memory" or argv[2] != "--":
        print(
            "usage: guarded.py --memory MIB -- recordkit|recordkit-train ARGS...", file=sys.stderr
        )
        return 2
    extra = int(argv[1]) << 20
    program, args = argv[3], argv[4:]
    import cv2  # noqa: F401 - mapped before the cap, as a long-running process has them
    import numpy  # noqa: F401
    import PIL.Image  # noqa: F401

    if program == "recordkit-train":
        import torch  # noqa: F401

        from recordkit_train.cli import main as cli
    else:
        from recordkit.cli import main as cli
    limit_memory(extra)
    cli.main(args=args, prog_name=program, standalone_mode=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
