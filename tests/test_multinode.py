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

Preemption of both nodes and resume: the same run, but as step 1 of epoch 0 begins each
node's launcher gets SIGUSR1 (what Slurm's ``--signal`` sends, passed on by
tools/slurm/train_multinode.sbatch); torchrun forwards it, every rank stops after the same
step with exit code 75 and rank 0 alone writes a mid-epoch ``last.pt``; two new launchers
with ``--resume`` finish the run. Together the two runs trained every rank on exactly the
records, in the order, of the uninterrupted run; the per-step losses are bitwise the same up
to the first resumed step and equal up to float rounding after it, as are the final weights
(the last test says why not bitwise with 4 ranks).
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
import torch
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
# 24 train records: 6 per rank, 3 batches of 2. 13 val records: 4, 3, 3, 3 — not a multiple
# of the batch or the world, so padding would show as extra or repeated labels.
N_TRAIN, N_VAL, BATCH, EPOCHS = 24, 13, 2, 2
PREEMPTED_EXIT = 75  # recordkit_train.preemption.PREEMPTED_EXIT_CODE
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
    """``recordkit-train run`` on ``data``: LeNet at 16 px, batch 2, CPU, fp32, deterministic.

    MXNet's LeNet (431 k parameters) rather than a ResNet: what is checked is placement, data
    and files, and each rank process starts in seconds either way, but a resnet18 made every
    step's all-reduce and every checkpoint 45 MB (a two-node run took ~30 % more CPU time).
    """
    return [
        "run", "--data", str(data), "--out", str(out), "--arch", "lenet",
        "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--image-size", "16",
        "--precision", "fp32", "--backend", backend, "--workers", "1",
        "--device", "cpu", "--print-freq", "1", "--warmup-epochs", "0", "--lr", "1e-4",
        "--deterministic",
        *extra,
    ]  # fmt: skip


def _torchrun(node: int, port: str, args: list[str]) -> list[str]:
    """Node ``node``'s launcher; it forwards SIGUSR1 too (tools/slurm/train_multinode.sbatch)."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", str(NODES),
        "--nproc-per-node", str(PER_NODE), "--node-rank", str(node),
        "--master-addr", "127.0.0.1", "--master-port", port,
        "--signals-to-handle", "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
        "--shutdown-timeout", "120", PROBE, *args,
    ]  # fmt: skip


def launch_two_nodes(
    args: list[str], probe_dir: Path, *, timeout: float = 240, **env_extra: str
) -> list[subprocess.CompletedProcess[str]]:
    """Run ``args`` under two torchrun launchers (node rank 0 and 1) of two ranks each.

    Args:
        args: ``recordkit-train`` arguments.
        probe_dir: Where tests/helpers/rank_probe.py writes each rank's record.
        timeout: Seconds to wait for each launcher.
        env_extra: More environment (e.g. ``PROBE_SIGNAL_AT``).

    Returns:
        The two launchers' results, node 0 first (stderr holds the ranks' logs).
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PROBE_DIR=str(probe_dir), **env_extra)
    port = str(free_port())
    procs = [
        subprocess.Popen(
            _torchrun(node, port, args),
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


@pytest.fixture(scope="module")
def preempted_then_resumed(
    two_node_run, data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[int, dict], dict[int, dict], list]:
    backend = two_node_run[0]
    base = tmp_path_factory.mktemp(f"preempt_{backend}")
    out = base / "run"
    first = launch_two_nodes(train_args(data, out, backend), base / "probe1", PROBE_SIGNAL_AT="0:1")
    stopped = read_probes(base / "probe1")
    state = load_checkpoint(out / "last.pt")
    second = launch_two_nodes(train_args(data, out, backend, "--resume", str(out)), base / "probe2")
    for node, res in enumerate(second):
        assert res.returncode == 0, f"node {node}:\n{res.stderr[-6000:]}"
    return out, stopped, read_probes(base / "probe2"), [first, state]


def test_preempted_nodes_stop_together_and_only_rank_zero_checkpoints(
    preempted_then_resumed,
) -> None:
    _out, stopped, _resumed, (first, state) = preempted_then_resumed
    for node, res in enumerate(first):
        # torchrun itself exits non-zero after forwarding a signal; the ranks say why.
        assert res.returncode != 0, f"node {node} finished without being preempted"
    assert "recordkit-train: stopped on SIGUSR1" in first[0].stderr, first[0].stderr[-4000:]
    for rank, p in stopped.items():
        assert p["exit"] == PREEMPTED_EXIT, (rank, p["exit"])
    # Every rank stopped after the same step, before the run's end.
    done = {len(p["train"]) for p in stopped.values()}
    assert len(done) == 1, done
    (n_done,) = done
    per_epoch = (N_TRAIN // WORLD) // BATCH
    assert 2 <= n_done < EPOCHS * per_epoch
    assert (state["epoch"], state["batch"]) == divmod(n_done, per_epoch)
    for rank in range(1, WORLD):
        assert stopped[rank]["writes"] == [], (rank, stopped[rank]["writes"])
    assert any(path.endswith("/last.pt") for _e, path in stopped[0]["writes"])


def test_resume_continues_each_rank_at_its_next_sample(two_node_run, preempted_then_resumed):
    _backend, _ref_out, reference, _results = two_node_run
    _out, stopped, resumed, _ = preempted_then_resumed
    for rank in range(WORLD):
        # Steps as [epoch, step, labels...]: the stopped run's, then the resumed run's, are
        # the uninterrupted run's (DALI: its shard's reader skipped exactly the consumed ones).
        assert stopped[rank]["train"] + resumed[rank]["train"] == reference[rank]["train"], rank
        for p in (stopped[rank], resumed[rank]):
            assert [r["split"] for r in p["loaders"]] == ["train", "val"]
            for pipe in p["pipelines"]:
                assert (pipe["shard_id"], pipe["num_shards"]) == (rank, WORLD)
    # Evaluation after the resume still scores every validation record once.
    for epoch_labels in zip(*(resumed[r]["val"] for r in range(WORLD)), strict=True):
        seen = Counter(label for labels in epoch_labels for label in labels)
        assert seen == Counter(range(N_VAL))
    for rank in range(1, WORLD):
        assert resumed[rank]["writes"] == [], (rank, resumed[rank]["writes"])


def test_resumed_run_ends_where_the_uninterrupted_one_does(
    two_node_run, preempted_then_resumed
) -> None:
    ref_out = two_node_run[1]
    out = preempted_then_resumed[0]

    def rows(path: Path, drop: tuple[str, ...] = ()) -> list[dict]:
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in drop} for r in lines]

    # The steps up to the stop and the first resumed one (whose loss depends only on the
    # restored weights, data and augmentation) are bitwise those of the uninterrupted run.
    # Later ones match up to float rounding, not bitwise with 4 ranks: DDP all-reduces its
    # first step in one bucket in parameter order and rebuilds the buckets in backward order
    # after it, so the resumed run's first update sums the 4 ranks' gradients in another order
    # than the uninterrupted run did (2 ranks sum a + b, exactly: bitwise there). (With a
    # resnet18, BatchNorm had to be kept off 1x1 maps by the small-input stem, where 2 images
    # amplify such rounding differences into percent-level losses; LeNet has no BatchNorm.)
    n_done = len(preempted_then_resumed[1][0]["train"])
    got_steps, want_steps = rows(out / "steps.jsonl"), rows(ref_out / "steps.jsonl")
    assert [(r["step"], r["epoch"], r["iter"], r["lr"]) for r in got_steps] == [
        (r["step"], r["epoch"], r["iter"], r["lr"]) for r in want_steps
    ]
    assert got_steps[: n_done + 1] == want_steps[: n_done + 1]
    got_loss, want_loss = [r["loss"] for r in got_steps], [r["loss"] for r in want_steps]
    assert got_loss == pytest.approx(want_loss, rel=1e-5)
    got_rows, want_rows = rows(out / "metrics.jsonl"), rows(ref_out / "metrics.jsonl")
    assert [(r["epoch"], r["val_samples"]) for r in got_rows] == [(e, N_VAL) for e in range(EPOCHS)]
    assert [r["epoch"] for r in want_rows] == list(range(EPOCHS))
    assert [r["train_loss"] for r in got_rows] == pytest.approx(
        [r["train_loss"] for r in want_rows], rel=1e-5
    )
    got, want = load_checkpoint(out / "last.pt"), load_checkpoint(ref_out / "last.pt")
    assert got["epoch"] == want["epoch"] == EPOCHS
    assert got["model"].keys() == want["model"].keys()
    for name, tensor in want["model"].items():
        if tensor.is_floating_point():
            diff = float((got["model"][name] - tensor).abs().max())
            assert torch.allclose(got["model"][name], tensor, rtol=1e-4, atol=1e-5), (name, diff)
        else:
            assert torch.equal(got["model"][name], tensor), name
