"""``torchrun … tests/helpers/rank_probe.py <recordkit-train args>``: record what a rank did.

Used by tests/test_multinode.py. It runs ``recordkit-train`` unchanged, watching it from the
outside, and at exit writes ``$PROBE_DIR/rank-<RANK>.json`` (outside the run's output
directory) with:

- ``env``: torchrun's ``RANK``, ``LOCAL_RANK``, ``GROUP_RANK`` (the node), ``WORLD_SIZE``,
  ``LOCAL_WORLD_SIZE``;
- ``dist``: the rank, local rank, world size and device :func:`distributed.setup` returned;
- ``loaders``: per ``make_loader`` call, the split, the loader class, its batch count and
  the rank / world size it reads for (the torch loader's sampler's, the DALI loader's);
- ``pipelines``: per DALI pipeline built, ``shard_id``, ``num_shards``, ``device_id``, train;
- ``train``: per training step, ``[epoch, step, labels…]``;
- ``val``: per evaluation, the labels of every batch this rank scored;
- ``writes``: every path under the run's ``--out`` this process opened for writing,
  created, renamed, removed or made a directory of (Python's audit hooks, so ``torch.save``,
  ``tempfile`` and matplotlib are seen alike);
- ``exit``: the exit code.

With ``PROBE_SIGNAL_AT="E:I"`` set, local rank 0 of each node sends SIGUSR1 to its torchrun
agent as step ``I`` of epoch ``E`` begins (a preemption notice for every node).

The test data gives every record a distinct label (train record ``i`` has label ``i``, val
record ``j`` label ``j``), so labels name the records each rank read.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import recordkit
import recordkit.loaders.dali as dali_mod
from recordkit_train import distributed, engine
from recordkit_train.cli import main

args = sys.argv[1:]
if args[:1] == ["--"]:  # torchrun passes it on or not, depending on its version
    args = args[1:]
out = Path(args[args.index("--out") + 1]).resolve()
probe_dir = Path(os.environ["PROBE_DIR"])
rank_env = os.environ.get("RANK", "0")
record: dict = {
    "env": {
        k: os.environ.get(k)
        for k in ("RANK", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
    },
    "dist": None,
    "loaders": [],
    "pipelines": [],
    "train": [],
    "val": [],
    "writes": [],
    "exit": None,
}


def _under_out(path: object) -> str | None:
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str | os.PathLike):
        return None  # a file descriptor
    p = Path(os.path.abspath(path))
    return str(p) if p == out or out in p.parents else None


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _audit(event: str, event_args: tuple) -> None:
    if event == "open":
        path, mode, flags = event_args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS
        )
        if writing and (p := _under_out(path)):
            record["writes"].append(["open", p])
    elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.symlink", "os.link"):
        for path in event_args[:2]:
            if p := _under_out(path):
                record["writes"].append([event, p])


sys.addaudithook(_audit)

real_setup = distributed.setup


def _setup(*a, **kw):
    env = real_setup(*a, **kw)
    record["dist"] = {
        "rank": env.rank,
        "local_rank": env.local_rank,
        "world_size": env.world_size,
        "device": str(env.device),
    }
    return env


distributed.setup = _setup

real_make_loader = recordkit.make_loader


def _make_loader(ds, split, *a, **kw):
    loader = real_make_loader(ds, split, *a, **kw)
    row = {"split": split, "class": type(loader).__name__, "batches": len(loader)}
    sampler = getattr(loader, "sampler", None)
    if sampler is not None:  # the torch loader: its RecordSampler picks the records
        row["sampler_rank"] = sampler.rank
        row["sampler_world_size"] = sampler.world_size
    else:  # DALI: the loader passes its rank on as the reader's shard_id
        row["rank"] = loader.rank
        row["world_size"] = loader.world_size
    record["loaders"].append(row)
    return loader


recordkit.make_loader = _make_loader

real_build_pipeline = dali_mod.build_pipeline


def _build_pipeline(*a, **kw):
    record["pipelines"].append(
        {k: kw.get(k) for k in ("shard_id", "num_shards", "device_id", "train", "shuffle")}
    )
    return real_build_pipeline(*a, **kw)


dali_mod.build_pipeline = _build_pipeline

real_step = engine._train_step


# PROBE_SIGNAL_AT="E:I": local rank 0 of each node sends SIGUSR1 to its torchrun agent as
# step I of epoch E begins, as Slurm's --signal (passed on by the batch script) reaches the
# launcher of every node; the agent forwards it to the node's ranks.
signal_at = os.environ.get("PROBE_SIGNAL_AT")
signal_step = tuple(int(x) for x in signal_at.split(":")) if signal_at else None


def _step(**kw):
    record["train"].append([kw["epoch"], kw["i"], *kw["labels"].reshape(-1).tolist()])
    if (kw["epoch"], kw["i"]) == signal_step and os.environ.get("LOCAL_RANK") == "0":
        os.kill(os.getppid(), signal.SIGUSR1)
    return real_step(**kw)


engine._train_step = _step

real_evaluate = engine.evaluate


class _Watch:
    """Pass ``(images, labels)`` batches through, keeping the labels."""

    def __init__(self, loader, seen: list[int]) -> None:
        self.loader, self.seen = loader, seen

    def __iter__(self):
        for images, labels in self.loader:
            self.seen.extend(labels.reshape(-1).tolist())
            yield images, labels


def _evaluate(model, loader, **kw):
    seen: list[int] = []
    record["val"].append(seen)
    return real_evaluate(model, _Watch(loader, seen), **kw)


engine.evaluate = _evaluate

try:
    main(args, prog_name="recordkit-train")
except SystemExit as exc:
    record["exit"] = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    raise
finally:
    probe_dir.mkdir(parents=True, exist_ok=True)
    tmp = probe_dir / f".rank-{rank_env}.json.tmp"
    tmp.write_text(json.dumps(record), encoding="utf-8")
    os.replace(tmp, probe_dir / f"rank-{rank_env}.json")
