"""Two "nodes" of two ranks on one host: torchrun launchers with ``--nnodes 2`` and gloo.

Each launcher runs ``recordkit-train run`` through tests/helpers/rank_probe.py, which records
per rank what it did (its placement, its loaders and DALI pipelines, the labels of every
record it trained on and scored, the files it wrote). Every record has its own label (train
record ``i`` label ``i``, val record ``j`` label ``j``), so the labels name the records. With
4 ranks on 2 nodes ``RANK != LOCAL_RANK`` on node 1, which a single-node run never shows.

Checked for the torch and DALI (CPU pipelines) backends:

- placement: ``RANK = GROUP_RANK * 2 + LOCAL_RANK``; the loaders, the torch sampler and DALI's
  ``shard_id`` use the global rank and ``num_shards`` the world size; the device follows the
  local rank (CPU here: DALI's ``device_id`` is None);
- exactly once (contract 9): each epoch's training records are read once over the ranks,
  each rank's are its global-rank slice, and evaluation scores every validation record once;
- only global rank 0 writes ``config.json``, ``metrics.jsonl``, ``last.pt``, ``best.pt``
  and ``metrics.png``; the other ranks write nothing under ``--out``.

The launch is :func:`launch_two_nodes`, so further scenarios (preemption and resume) can
reuse it with other arguments.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from recordkit import partition
from recordkit.loaders.sampling import rank_indices
from recordkit_train.checkpoint import load_checkpoint
from tests.conftest import write_shards

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PROBE = str(ROOT / "tests" / "helpers" / "rank_probe.py")
NODES, PER_NODE = 2, 2
WORLD = NODES * PER_NODE
# 24 train records: 6 per rank, 2 batches of 3. 13 val records: 4, 3, 3, 3 — not a multiple
# of the batch or the world, so padding would show as extra or repeated labels.
N_TRAIN, N_VAL, BATCH, EPOCHS = 24, 13, 3, 2
OUTPUTS = {"config.json", "metrics.jsonl", "last.pt", "best.pt", "metrics.png"}


def _image(i: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 20), ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recordkit import Record

    def record(i: int, label: int) -> Record:
        fmt = "PNG" if i % 4 == 0 else "JPEG"
        return Record(
            image=_image(i, fmt),
            labels=(label,),
            filename=f"c{label}/{i:03d}.{fmt.lower()}",
            index=i,
            format=fmt.lower(),
            height=20,
            width=24,
            channels=3,
        )

    splits = {
        "train": [record(i, i) for i in range(N_TRAIN)],
        "val": [record(N_TRAIN + j, j) for j in range(N_VAL)],
    }
    classes = [f"c{k}" for k in range(N_TRAIN)]
    return write_shards(
        tmp_path_factory.mktemp("multinode_shards"), splits, records_per_shard=5, classes=classes
    )


def free_port() -> int:
    """A TCP port nobody listens on now (the rendezvous port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(data: Path, out: Path, backend: str, *extra: str) -> list[str]:
    """``recordkit-train run`` on ``data``: tiny model, batch 3, CPU, fp32."""
    return [
        "run", "--data", str(data), "--out", str(out), "--arch", "resnet18",
        "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--image-size", "16",
        "--no-small-input", "--precision", "fp32", "--backend", backend, "--workers", "1",
        "--device", "cpu", "--print-freq", "1", "--warmup-epochs", "0", *extra,
    ]  # fmt: skip


def launch_two_nodes(
    args: list[str], probe_dir: Path, *, timeout: float = 240
) -> list[subprocess.CompletedProcess[str]]:
    """Run ``args`` under two torchrun launchers (node rank 0 and 1) of two ranks each.

    Returns:
        The two launchers' results, node 0 first (stderr holds the ranks' logs).
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PROBE_DIR=str(probe_dir))
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                str(NODES),
                "--nproc-per-node",
                str(PER_NODE),
                "--node-rank",
                str(node),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                port,
                PROBE,
                *args,
            ],  # fmt: skip
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in range(NODES)
    ]
    results = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


def read_probes(probe_dir: Path) -> dict[int, dict]:
    """Every rank's probe record, by global rank."""
    probes = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in probe_dir.glob("*")}
    assert sorted(probes) == list(range(WORLD)), sorted(probes)
    return probes


@pytest.fixture(scope="module", params=["torch", pytest.param("dali", marks=pytest.mark.dali)])
def two_node_run(
    request: pytest.FixtureRequest, data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, dict[int, dict], list[subprocess.CompletedProcess[str]]]:
    backend = request.param
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    base = tmp_path_factory.mktemp(f"two_nodes_{backend}")
    out, probe_dir = base / "run", base / "probe"
    results = launch_two_nodes(train_args(data, out, backend), probe_dir)
    for node, res in enumerate(results):
        assert res.returncode == 0, f"node {node}:\n{res.stderr[-6000:]}"
    return backend, out, read_probes(probe_dir), results


def test_global_and_local_rank(two_node_run) -> None:
    backend, _out, probes, _results = two_node_run
    for rank, p in probes.items():
        env = p["env"]
        node, local = int(env["GROUP_RANK"]), int(env["LOCAL_RANK"])
        assert int(env["RANK"]) == rank == node * PER_NODE + local
        assert int(env["LOCAL_WORLD_SIZE"]) == PER_NODE and int(env["WORLD_SIZE"]) == WORLD
        assert p["dist"] == {
            "rank": rank,
            "local_rank": local,
            "world_size": WORLD,
            "device": "cpu",
        }
        assert [row["split"] for row in p["loaders"]] == ["train", "val"]
        for row in p["loaders"]:
            if backend == "torch":
                assert row["class"] == "TorchLoader"
                assert (row["sampler_rank"], row["sampler_world_size"]) == (rank, WORLD), row
            else:
                assert row["class"] == "DaliLoader"
                assert (row["rank"], row["world_size"]) == (rank, WORLD), row
        if backend == "dali":
            # One training pipeline per epoch, one validation pipeline reused.
            assert len(p["pipelines"]) >= EPOCHS + 1
            for pipe in p["pipelines"]:
                assert (pipe["shard_id"], pipe["num_shards"]) == (rank, WORLD), pipe
                assert pipe["device_id"] is None  # CPU; on CUDA it is cuda:LOCAL_RANK's index
        else:
            assert p["pipelines"] == []
    # Node 1 really has ranks whose global and local rank differ.
    assert {(p["dist"]["rank"], p["dist"]["local_rank"]) for p in probes.values()} == {
        (0, 0),
        (1, 1),
        (2, 0),
        (3, 1),
    }


def test_each_training_record_once_per_epoch(two_node_run) -> None:
    backend, _out, probes, _results = two_node_run
    per_rank = (N_TRAIN // WORLD) // BATCH
    for epoch in range(EPOCHS):
        seen_all: Counter[int] = Counter()
        for rank, p in probes.items():
            steps = [s for s in p["train"] if s[0] == epoch]
            assert [s[1] for s in steps] == list(range(per_rank))
            labels = [label for s in steps for label in s[2:]]
            seen_all.update(labels)
            if backend == "torch":
                # The sampler's shard is the global rank's slice of the epoch's permutation.
                want = rank_indices(
                    N_TRAIN, rank, WORLD, shuffle=True, seed=0, epoch=epoch, drop_last=True
                )
                assert labels == list(want)
            else:
                # DALI's shard_id = rank: a shuffled order within the rank's contiguous range.
                assert sorted(labels) == list(partition(N_TRAIN, rank, WORLD))
        assert seen_all == Counter(range(N_TRAIN)), (epoch, seen_all)


def test_evaluation_scores_each_record_once(two_node_run) -> None:
    _backend, out, probes, _results = two_node_run
    for epoch in range(EPOCHS):
        seen_all: Counter[int] = Counter()
        for rank, p in probes.items():
            labels = p["val"][epoch]
            assert sorted(labels) == list(partition(N_VAL, rank, WORLD)), (rank, labels)
            seen_all.update(labels)
        assert seen_all == Counter(range(N_VAL))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(EPOCHS))
    assert all(r["val_samples"] == N_VAL for r in rows)


def test_only_global_rank_zero_writes(two_node_run) -> None:
    _backend, out, probes, results = two_node_run
    for rank in range(1, WORLD):
        assert probes[rank]["writes"] == [], (rank, probes[rank]["writes"])
    written = {Path(path).name for _event, path in probes[0]["writes"]}
    assert written >= OUTPUTS, written
    assert {p.name for p in out.iterdir()} >= OUTPUTS
    assert load_checkpoint(out / "last.pt")["epoch"] == EPOCHS
    # Only rank 0 logs progress: one validation line per epoch over both launchers.
    logs = results[0].stderr + results[1].stderr
    assert logs.count("validation: epoch 0,") == 1, logs[-3000:]
    assert "validation: epoch" not in results[1].stderr
