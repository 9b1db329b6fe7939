"""tools/slurm/train_multinode.sbatch without Slurm: its environment handling and requeue logic.

``srun``, ``scontrol`` and ``scancel`` are small fakes on ``PATH`` and ``TORCHRUN`` is a fake
torchrun that records its arguments and waits for a signal, so the test sees the command the
script builds (node count, rendezvous on the first node, ``--resume`` once ``last.pt``
exists) and what it does on SIGUSR1 (pass it on to the step, then ``scontrol requeue``). The
script ran for real on a one-host Slurm cluster (docs/TRAINING.md); this keeps it honest in CI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "slurm" / "train_multinode.sbatch"

FAKES = {
    # srun runs its command once (one node's task), as a child so signals reach it separately.
    "srun": '#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\n"$@"\n',
    "scontrol": (
        "#!/bin/bash\n"
        'echo "scontrol $*" >> "$FAKE_LOG"\n'
        'if [[ "$1 $2" == "show hostnames" ]]; then printf "node-a\\nnode-b\\n"; fi\n'
    ),
    # scancel --signal=USR1 JOB: signal the job step (here the fake torchrun).
    "scancel": (
        "#!/bin/bash\n"
        'echo "scancel $*" >> "$FAKE_LOG"\n'
        'kill -s "${1#--signal=}" "$(cat "$FAKE_STEP_PID")"\n'
    ),
    # torchrun: record the arguments, then wait; SIGUSR1 ends it with status 1 (like torchrun).
    "fake_torchrun": (
        "#!/bin/bash\n"
        'echo "torchrun $*" >> "$FAKE_LOG"\n'
        'trap \'echo "step got USR1" >> "$FAKE_LOG"; kill $nap 2>/dev/null; exit 1\' USR1\n'
        'echo $$ > "$FAKE_STEP_PID"\n'
        'if [[ -n "${FAKE_WAIT:-}" ]]; then sleep 60 >/dev/null 2>&1 & nap=$!; wait; fi\n'
        "exit 0\n"
    ),
}


@pytest.fixture
def fakes(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in FAKES.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")},
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_LOG": str(tmp_path / "log"),
        "FAKE_STEP_PID": str(tmp_path / "step.pid"),
        "TORCHRUN": str(bin_dir / "fake_torchrun"),
        "OUT": str(tmp_path / "run"),
        "TRAIN_ARGS": "--data /shared/shards --epochs 3",
        "NPROC_PER_NODE": "4",
        "SLURM_JOB_ID": "1234",
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_JOB_NUM_NODES": "2",
    }


def _log(env: dict[str, str]) -> list[str]:
    return Path(env["FAKE_LOG"]).read_text().splitlines()


def test_builds_the_torchrun_command_and_resumes_when_a_checkpoint_exists(fakes) -> None:
    proc = subprocess.run(["bash", str(SCRIPT)], env=fakes, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (cmd,) = [line for line in _log(fakes) if line.startswith("torchrun ")]
    assert "--nnodes 2 --nproc-per-node 4" in cmd
    assert "--rdzv-endpoint node-a:21234 --rdzv-id 1234" in cmd  # the first node
    assert "--signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1" in cmd
    assert cmd.endswith(f"run --out {fakes['OUT']} --data /shared/shards --epochs 3")
    assert "fresh start" in proc.stdout
    # A requeued job finds last.pt and resumes from it.
    Path(fakes["OUT"]).mkdir()
    (Path(fakes["OUT"]) / "last.pt").write_bytes(b"x")
    env = {**fakes, "SLURM_RESTART_COUNT": "1"}
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    cmd = [line for line in _log(fakes) if line.startswith("torchrun ")][-1]
    assert cmd.endswith(f"--epochs 3 --resume {fakes['OUT']}")
    assert not any("requeue" in line for line in _log(fakes))


def test_sigusr1_is_passed_on_and_the_job_requeued(fakes) -> None:
    env = {**fakes, "FAKE_WAIT": "1"}
    proc = subprocess.Popen(
        ["bash", str(SCRIPT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while not Path(fakes["FAKE_STEP_PID"]).is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 does
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    log = _log(fakes)
    assert "scancel --signal=USR1 1234" in log
    assert "step got USR1" in log
    assert log[-1] == "scontrol requeue 1234"
    assert "requeueing job 1234" in stdout


def test_a_failed_step_is_not_requeued(fakes) -> None:
    fake = Path(fakes["TORCHRUN"])
    fake.write_text(fake.read_text().replace("exit 0\n", "exit 7\n"))
    proc = subprocess.run(["bash", str(SCRIPT)], env=fakes, capture_output=True, text=True)
    assert proc.returncode == 7
    assert not any("requeue" in line for line in _log(fakes))
