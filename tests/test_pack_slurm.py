"""``recordkit pack`` in a Slurm job array: ``--part K/N`` from ``SLURM_ARRAY_TASK_*``.

The environment is set by hand here (no Slurm needed); tools/slurm/pack_array.sbatch is the
script users submit, and the test at the end runs it with the variables sbatch would set.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_pack import make_dataset, manifest_without_time, opts, shard_bytes

from recordkit.cli import main
from recordkit.format.manifest import MANIFEST_NAME
from recordkit.listing import make_lists
from recordkit.pack import PackError, pack
from recordkit.pack.slurm import array_part

ROOT = Path(__file__).resolve().parent.parent
SLURM = {"SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"}


def _array(task: int, count: int, low: int = 0, high: int | None = None) -> dict[str, str]:
    high = low + count - 1 if high is None else high
    return {
        "SLURM_ARRAY_JOB_ID": "41",
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_ARRAY_TASK_COUNT": str(count),
        "SLURM_ARRAY_TASK_MIN": str(low),
        "SLURM_ARRAY_TASK_MAX": str(high),
    }


@pytest.mark.parametrize(
    ("env", "part"),
    [
        ({}, None),
        ({"SLURM_ARRAY_TASK_ID": ""}, None),
        (_array(0, 1), (0, 1)),
        (_array(3, 4), (3, 4)),
        (_array(1, 4, low=1), (0, 4)),  # --array=1-4: task 1 packs part 0
        (_array(4, 4, low=1), (3, 4)),
        (_array(12, 3, low=10), (2, 3)),
        ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3"}, (2, 3)),  # no MIN/MAX
    ],
)
def test_array_part(env: dict[str, str], part: tuple[int, int] | None) -> None:
    assert array_part(env) == part


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"SLURM_ARRAY_TASK_ID": "3"}, "SLURM_ARRAY_TASK_COUNT is not"),
        ({**_array(1, 4), "SLURM_ARRAY_TASK_ID": "x"}, "SLURM_ARRAY_TASK_ID='x'"),
        ({**_array(1, 4), "SLURM_ARRAY_TASK_COUNT": "four"}, "SLURM_ARRAY_TASK_COUNT='four'"),
        (_array(2, 3, low=0, high=4), "not 3 contiguous ids"),  # --array=0-4:2
        ({**_array(1, 4), "SLURM_ARRAY_TASK_ID": "7"}, "outside the array 0..3"),
    ],
)
def test_array_part_refuses_what_it_cannot_map(env: dict[str, str], needle: str) -> None:
    with pytest.raises(PackError, match=needle.replace("(", r"\(")):
        array_part(env)


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path, Path]:
    prefix, root = make_dataset(tmp_path, per_class=6, train_ratio=0.75)
    make_lists(prefix, root, recursive=True, train_ratio=0.75)
    reference = tmp_path / "reference"
    pack(prefix, root, opts(reference, shard_size=2, threads=1))
    return prefix, root, reference


def _pack(env: dict[str, str], *args: object):
    return CliRunner().invoke(main, ["pack", *map(str, args)], env=env, catch_exceptions=False)


def test_array_tasks_pack_parts_and_merge_names_the_missing_ones(dataset, tmp_path) -> None:
    prefix, root, reference = dataset
    out = tmp_path / "shards"
    common = [prefix, root, "--out", out, "--shard-size", "2", "--threads", "1", "-q"]
    # Task 2 of --array=1-3: part 1/3.
    res = _pack(_array(2, 3, low=1), *common)
    assert res.exit_code == 0, res.output
    assert "part 1/3 from the Slurm job array (SLURM_ARRAY_TASK_ID=2)" in res.output
    assert sorted(p.name for p in out.glob(".pack-state.*")) == [
        ".pack-state.train.part-1-of-3.json",
        ".pack-state.val.part-1-of-3.json",
    ]
    # An explicit --part wins over the array's variables.
    res = _pack(_array(2, 3, low=1), *common, "--part", "0/3")
    assert res.exit_code == 0, res.output
    assert "from the Slurm job array" not in res.output
    assert (out / ".pack-state.train.part-0-of-3.json").is_file()
    # --merge (in the array's environment too) refuses while part 2/3 is missing, naming it.
    res = _pack(_array(2, 3, low=1), *common, "--merge")
    assert res.exit_code == 1
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("Error: cannot merge: part(s) 2/3 not finished (")
    assert "train-00002-of-" in last and "train-00000-of-" not in last
    assert not (out / MANIFEST_NAME).exists()
    res = _pack(_array(3, 3, low=1), *common)
    assert res.exit_code == 0, res.output
    res = _pack(_array(3, 3, low=1), *common, "--merge")
    assert res.exit_code == 0, res.output
    assert shard_bytes(out) == shard_bytes(reference)
    assert manifest_without_time(out) == manifest_without_time(reference)


def test_merge_before_any_part_names_the_shards(dataset, tmp_path) -> None:
    prefix, root, _reference = dataset
    out = tmp_path / "shards"
    res = _pack({}, prefix, root, "--out", out, "--shard-size", "2", "-q", "--merge")
    assert res.exit_code == 1
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("Error: cannot merge: ") and "shard(s) not finished" in last
    assert "part(s)" not in last


def test_bad_array_environment_is_one_error_line(dataset, tmp_path) -> None:
    prefix, root, _reference = dataset
    env = {**_array(2, 3), "SLURM_ARRAY_TASK_MAX": "9"}
    res = _pack(env, prefix, root, "--out", tmp_path / "s", "-q")
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1].startswith("Error: the job array's ids 0..9")


def test_pack_array_script_runs_each_task_then_merges(dataset, tmp_path) -> None:
    """tools/slurm/pack_array.sbatch, run as sbatch would run its tasks (bash, env set)."""
    prefix, root, reference = dataset
    out = tmp_path / "shards"
    script = ROOT / "tools" / "slurm" / "pack_array.sbatch"
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    base.update(
        PYTHONPATH=str(ROOT),
        RECORDKIT=f"{sys.executable} -m recordkit",
        PACK_ARGS=f"{prefix} {root} --out {out} --shard-size 2 --threads 1 -q",
    )
    for task in (0, 1):
        proc = subprocess.run(
            ["bash", str(script)],
            env={**base, **_array(task, 2)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert f"part {task}/2 from the Slurm job array" in proc.stderr
    proc = subprocess.run(
        ["bash", str(script), "--merge"], env=base, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert shard_bytes(out) == shard_bytes(reference)
    assert manifest_without_time(out) == manifest_without_time(reference)
