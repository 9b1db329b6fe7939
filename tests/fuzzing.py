"""A seeded mutation fuzzer over every input recordkit reads (issue 16).

Seven families of inputs are mutated — shards, shard ``.idx`` files, ``recordkit.json``, im2rec
``.lst`` files, MXNet ``.rec`` / ``.idx``, images and training checkpoints — and every mutant is
put through the library call and the CLI command that read it (see :data:`FAMILIES`). Each
(mutant, operation) pair is one *case*, classified as:

``ok``         the operation succeeded and its result is right (the oracle of the family)
``refused``    a recordkit exception with a one-line message (API), or exit 1 with a last line
               ``Error: …`` (CLI), or a verify report that lists problems
``traceback``  any other exception, or CLI output holding a traceback
``hang``       the operation ran past its time limit (SIGALRM in the worker, or the driver
               killed the worker)
``over-bound`` ``MemoryError`` under the worker's address-space cap (``RLIMIT_AS``: what the
               worker had mapped after its imports, plus ``--memory``)
``wrong``      the operation succeeded with a wrong result: verify says OK about a changed
               shard, a read returns bytes that were never written, a refused pack leaves a
               manifest, a failed convert-rec changes what ``--out`` held, a message spans lines

The oracles, per family: a shard or index mutant that changes what the files say must not
verify OK; whenever verify says OK, ``recordkit.open`` must read back exactly the records that
were written; reads return original records or raise; a pack or conversion that succeeds must
produce a dataset that verifies (``--decode`` included), and one that fails must leave no
manifest (or, for convert-rec, the output directory byte for byte as it was).

Mutants are a pure function of ``(seed, family, case number)``, so any case can be replayed.
Cases run in worker processes (many per process; a hang or crash costs a restart):

    python tests/fuzzing.py --cases 1000 --seed 0            # the long sweep, a table at the end
    python tests/fuzzing.py --family lst --cases 50 --seed 3 --show bad
    python tests/fuzzing.py worker lst 3 17 1                # replay case 17 of lst, seed 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fuzz_families import (  # noqa: E402 - after the path is set
    Case,
    Family,
    IndexFamily,
    ManifestFamily,
    Op,
    ShardsFamily,
    Wrong,
    short,
)
from fuzz_inputs import CheckpointFamily, ImagesFamily, LstFamily, RecFamily  # noqa: E402

FAMILIES = ("shards", "index", "manifest", "lst", "rec", "images", "checkpoints")
OUTCOMES = ("ok", "refused", "traceback", "hang", "over-bound", "wrong")
BAD = frozenset({"traceback", "hang", "over-bound", "wrong"})

CI_CASES = {  # mutants per family in CI (about 25 s on two busy cores)
    "shards": 30,
    "index": 30,
    "manifest": 50,
    "lst": 20,
    "rec": 25,
    "images": 15,
    "checkpoints": 8,
}
OP_TIMEOUT = 30.0  # seconds one operation may take before it counts as a hang
MEMORY_MIB = 1024  # address space an operation may add to the worker's


class OpTimeout(BaseException):
    """Raised by SIGALRM in the middle of an operation (BaseException: not swallowed)."""


# ==============================================================================================
# Running one operation


def _alarm(signum: int, frame: object) -> None:
    raise OpTimeout()


def guard(op: Op, timeout: float) -> tuple[str, str]:
    """Run ``op`` under a SIGALRM time limit; classify what happened."""
    from recordkit.errors import RecordkitError

    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return op(), ""
    except OpTimeout:
        return "hang", f"ran past {timeout:.0f} s"
    except MemoryError:
        return "over-bound", "MemoryError: " + _where(sys.exc_info()[2])
    except Wrong as exc:
        return "wrong", short(str(exc))
    except RecordkitError as exc:
        if "\n" in str(exc) or not str(exc):
            return "wrong", f"multi-line or empty message: {str(exc)[:200]!r}"
        return "refused", short(f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 - anything else is what we are looking for
        return "traceback", short(f"{type(exc).__name__}: {exc} at {_where(exc.__traceback__)}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _where(tb: Any) -> str:
    frames = traceback.extract_tb(tb)
    ours = [f for f in frames if "/recordkit" in f.filename] or frames
    if not ours:
        return "?"
    f = ours[-1]
    return f"{Path(f.filename).name}:{f.lineno}"


FAMILY_CLASSES: dict[str, type[Family]] = {
    "shards": ShardsFamily,
    "index": IndexFamily,
    "manifest": ManifestFamily,
    "lst": LstFamily,
    "rec": RecFamily,
    "images": ImagesFamily,
    "checkpoints": CheckpointFamily,
}


# ==============================================================================================
# Worker: run cases in this process under the memory cap


def worker(family: str, seed: int, start: int, count: int, memory_mib: int, timeout: float) -> int:
    """Run cases ``start .. start+count-1``; one JSON line per event on stdout."""
    import logging

    from guarded import limit_memory

    logging.getLogger().addHandler(logging.NullHandler())  # the CLI's basicConfig: a no-op
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    fam = FAMILY_CLASSES[family]()
    with tempfile.TemporaryDirectory(prefix=f"rkfuzz-{family}-") as tmp:
        base = Path(tmp) / "base"
        base.mkdir()
        fam.setup(base)
        import cv2  # noqa: F401 - mapped before the cap, as in a long-running process
        import PIL.Image  # noqa: F401

        import recordkit.cli  # noqa: F401
        import recordkit.pack  # noqa: F401

        limit_memory(memory_mib << 20)
        for number in range(start, start + count):
            rng = random.Random(f"{seed}:{family}:{number}")
            case = Case(number, Path(tmp) / f"case{number}", "")
            case.path.mkdir()
            print(json.dumps({"begin": number}), file=proto)
            try:
                fam.mutant(rng, case)
                ops = fam.ops(case)
            except Exception as exc:  # noqa: BLE001 - a broken generator must be visible
                print(
                    json.dumps(
                        {
                            "case": number,
                            "op": "make",
                            "outcome": "traceback",
                            "mutation": case.mutation,
                            "detail": short(repr(exc)),
                        }
                    ),
                    file=proto,
                )
                continue
            hung = False
            for name, op in ops:
                outcome, detail = guard(op, timeout)
                hung |= outcome == "hang"
                print(
                    json.dumps(
                        {
                            "case": number,
                            "op": name,
                            "outcome": outcome,
                            "mutation": case.mutation,
                            "detail": detail,
                        }
                    ),
                    file=proto,
                )
                if hung:
                    break
            if hung:  # threads may still be stuck: start afresh
                print(json.dumps({"restart": number}), file=proto)
                return 3
            print(json.dumps({"end": number}), file=proto)
            with contextlib.suppress(OSError):
                _rmtree(case.path)
    return 0


def _rmtree(path: Path) -> None:
    for p in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if p.is_dir() and not p.is_symlink():
            p.rmdir()
        else:
            p.unlink()
    path.rmdir()


# ==============================================================================================
# Driver


@dataclass
class Report:
    """Every case's outcome."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def counts(self) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = {f: Counter() for f in FAMILIES}
        for r in self.rows:
            out[r["family"]][r["outcome"]] += 1
        return {f: c for f, c in out.items() if c}

    def bad(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["outcome"] in BAD]

    def table(self) -> str:
        counts = self.counts()
        mutants = Counter(r["family"] for r in self.rows if r["op"] != "make")
        head = "| family | mutants | cases | " + " | ".join(OUTCOMES) + " |"
        lines = [head, "|" + "---|" * (3 + len(OUTCOMES))]
        total: Counter[str] = Counter()
        n_mut = 0
        for fam, c in counts.items():
            muts = len({r["case"] for r in self.rows if r["family"] == fam})
            n_mut += muts
            total.update(c)
            cells = " | ".join(str(c[o]) for o in OUTCOMES)
            lines.append(f"| {fam} | {muts} | {sum(c.values())} | {cells} |")
        del mutants
        cells = " | ".join(str(total[o]) for o in OUTCOMES)
        lines.append(f"| **all** | {n_mut} | {sum(total.values())} | {cells} |")
        return "\n".join(lines)


def _env() -> dict[str, str]:
    from guarded import child_env

    return child_env()


def run_family(
    family: str,
    seed: int,
    cases: int,
    *,
    start: int = 0,
    memory_mib: int = MEMORY_MIB,
    timeout: float = OP_TIMEOUT,
) -> list[dict[str, Any]]:
    """Run ``cases`` mutants of ``family`` in worker processes; restart after a hang/crash."""
    rows: list[dict[str, Any]] = []
    next_case, end = start, start + cases
    n_ops = 5
    while next_case < end:
        cmd = [
            sys.executable,
            str(HERE / "fuzzing.py"),
            "worker",
            family,
            str(seed),
            str(next_case),
            str(end - next_case),
            "--memory",
            str(memory_mib),
            "--timeout",
            str(timeout),
        ]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
        )
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        err_box: list[str] = []
        threading.Thread(target=_drain, args=(proc.stderr, err_box), daemon=True).start()
        current: int | None = None
        seen_ops = 0
        deadline = time.monotonic() + 120 + timeout * n_ops  # set-up, then per case
        finished = False
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                proc.kill()
                if current is not None:
                    rows.append(
                        {
                            "family": family,
                            "case": current,
                            "op": f"op{seen_ops}",
                            "outcome": "hang",
                            "mutation": "?",
                            "detail": "the worker stopped answering (killed)",
                        }
                    )
                    next_case = current + 1
                break
            if line is None:  # the worker exited
                proc.wait()
                if current is not None:  # died in the middle of a case
                    tail = (err_box[0] if err_box else "")[-300:]
                    rows.append(
                        {
                            "family": family,
                            "case": current,
                            "op": f"op{seen_ops}",
                            "outcome": "traceback",
                            "mutation": "?",
                            "detail": f"worker exited {proc.returncode}: {short(tail)}",
                        }
                    )
                    next_case = current + 1
                elif proc.returncode not in (0, 3):
                    tail = (err_box[0] if err_box else "")[-500:]
                    raise RuntimeError(f"fuzz worker {family} failed: {tail}")
                else:
                    finished = proc.returncode == 0
                break
            msg = json.loads(line)
            if "begin" in msg:
                current, seen_ops = msg["begin"], 0
                deadline = time.monotonic() + timeout * n_ops + 30
            elif "end" in msg:
                next_case, current = msg["end"] + 1, None
            elif "restart" in msg:
                next_case, current = msg["restart"] + 1, None
            else:
                seen_ops += 1
                rows.append({"family": family, **msg})
                deadline = time.monotonic() + timeout * n_ops + 30
        if finished:
            break
    return rows


def _drain(stream: Any, box: list[str]) -> None:
    box.append(stream.read())


def _pump(stream: Any, out: queue.Queue[str | None]) -> None:
    for line in stream:
        out.put(line)
    out.put(None)


def sweep(
    seed: int,
    cases: dict[str, int],
    *,
    jobs: int = 2,
    memory_mib: int = MEMORY_MIB,
    timeout: float = OP_TIMEOUT,
) -> Report:
    """Run every family (``jobs`` workers at a time) and collect the outcomes."""
    report = Report()
    with ThreadPoolExecutor(jobs) as pool:
        futures = [
            pool.submit(run_family, fam, seed, n, memory_mib=memory_mib, timeout=timeout)
            for fam, n in cases.items()
            if n > 0
        ]
        for fut in futures:
            report.rows.extend(fut.result())
    return report


def cases_from_env(default: dict[str, int] = CI_CASES) -> dict[str, int]:
    """Per-family mutant counts: ``RECORDKIT_FUZZ_CASES=N`` gives every family N."""
    value = os.environ.get("RECORDKIT_FUZZ_CASES")
    if not value:
        return dict(default)
    n = int(value)
    return {f: n for f in FAMILIES}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        p = argparse.ArgumentParser(prog="fuzzing.py worker")
        p.add_argument("family", choices=FAMILIES)
        p.add_argument("seed", type=int)
        p.add_argument("start", type=int)
        p.add_argument("count", type=int)
        p.add_argument("--memory", type=int, default=MEMORY_MIB)
        p.add_argument("--timeout", type=float, default=OP_TIMEOUT)
        a = p.parse_args(argv[1:])
        return worker(a.family, a.seed, a.start, a.count, a.memory, a.timeout)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cases", type=int, default=None, help="mutants per family [CI counts]")
    p.add_argument("--family", action="append", choices=FAMILIES, help="repeatable [all]")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--memory", type=int, default=MEMORY_MIB, help="MiB per operation")
    p.add_argument("--timeout", type=float, default=OP_TIMEOUT, help="seconds per operation")
    p.add_argument("--show", choices=["bad", "all"], default="bad")
    p.add_argument("--json", type=Path, default=None, help="write every case here")
    a = p.parse_args(argv)
    families = a.family or list(FAMILIES)
    cases = {f: (a.cases if a.cases is not None else CI_CASES[f]) for f in families}
    t0 = time.monotonic()
    report = sweep(a.seed, cases, jobs=a.jobs, memory_mib=a.memory, timeout=a.timeout)
    for r in report.rows if a.show == "all" else report.bad():
        print(
            f"{r['family']} #{r['case']} {r['op']} [{r['mutation']}]: {r['outcome']} {r['detail']}"
        )
    print(report.table())
    print(f"seed {a.seed}, {time.monotonic() - t0:.0f} s")
    if a.json:
        a.json.write_text(json.dumps(report.rows, indent=1))
    return 1 if report.bad() else 0


if __name__ == "__main__":
    sys.exit(main())
