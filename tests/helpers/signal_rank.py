"""``python tests/helpers/signal_rank.py <recordkit-train args>``: a run that gets a signal.

Used by tests/test_train_preempt.py. Each rank listed in ``SIGNAL_STEPS`` (``"rank:step,…"``,
e.g. ``"0:5,1:6"``) sends itself ``SIGNAL`` (``SIGTERM`` by default, or ``SIGUSR1``) when its
``step``-th training step of this process begins, as a preemption notice would arrive while the
step runs; with ``SIGNAL_TARGET=launcher`` it sends it to its parent instead (torchrun, which
forwards it to every rank, as when a scheduler signals the launcher). Everything else is the
real ``recordkit-train`` command, signal handling included.
"""

from __future__ import annotations

import os
import signal
import sys

from recordkit_train import engine
from recordkit_train.cli import main

args = sys.argv[1:]
rank = int(os.environ.get("RANK", "0"))
steps = dict(item.split(":") for item in os.environ.get("SIGNAL_STEPS", "").split(",") if item)
at = int(steps[str(rank)]) if str(rank) in steps else None
signum = getattr(signal, os.environ.get("SIGNAL", "SIGTERM"))
real_step = engine._train_step
calls = 0


def _step(**kwargs):
    global calls
    calls += 1
    if calls == at:
        target = os.getppid() if os.environ.get("SIGNAL_TARGET") == "launcher" else os.getpid()
        os.kill(target, signum)
    return real_step(**kwargs)


engine._train_step = _step
main(args, prog_name="recordkit-train")
