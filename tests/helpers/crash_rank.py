"""``torchrun … tests/helpers/crash_rank.py MODE -- <recordkit-train args>``: make one rank die.

Used by tests/test_train_crash.py to check that a crashed rank ends the whole job with a
clear message instead of a hang. Rank ``CRASH_RANK`` (default 1) fails at its
``CRASH_STEP``-th training step (default 2) in one of two ways:

- ``raise``: a Python exception (a bug, a bad batch) — the rank exits through its error path;
- ``exit``: ``os._exit(137)`` — the process vanishes as if killed by the OOM killer;
- ``hang``: it sleeps for an hour — alive but silent (a stuck filesystem, a deadlock).
"""

from __future__ import annotations

import os
import sys
import time

from recordkit_train import engine
from recordkit_train.cli import main

mode = sys.argv[1]
args = sys.argv[sys.argv.index("--") + 1 :]
crash_rank = int(os.environ.get("CRASH_RANK", "1"))
crash_step = int(os.environ.get("CRASH_STEP", "2"))
real_step = engine._train_step
calls = 0


def _step(**kwargs):
    global calls
    calls += 1
    if int(os.environ.get("RANK", "0")) == crash_rank and calls == crash_step:
        if mode == "exit":
            os._exit(137)
        if mode == "hang":
            time.sleep(3600)
        raise RuntimeError("injected failure on this rank")
    return real_step(**kwargs)


engine._train_step = _step
main(args, prog_name="recordkit-train")
