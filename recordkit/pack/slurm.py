"""``--part K/N`` from a Slurm job array: one array task packs one part.

``sbatch --array=0-15 …`` starts 16 tasks whose environment holds ``SLURM_ARRAY_TASK_ID``
(this task), ``SLURM_ARRAY_TASK_COUNT`` (tasks in the array), ``SLURM_ARRAY_TASK_MIN`` and
``SLURM_ARRAY_TASK_MAX`` (first and last id). Task ``id`` packs part
``(id - MIN) / COUNT``, so an array numbered ``1-16`` works as well as ``0-15``. The ids must
be contiguous (no ``:step``, no list with gaps such as ``0,2,5``): otherwise some part would
have no task, and this refuses rather than guess.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from recordkit.pack.options import PackError

__all__ = ["array_part"]


def _int(env: Mapping[str, str], name: str) -> int:
    value = env.get(name, "").strip()
    try:
        return int(value)
    except ValueError:
        raise PackError(f"{name}={value!r} is not an integer; give --part K/N explicitly") from None


def array_part(environ: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """The ``(K, N)`` part of this Slurm array task, or None outside a job array.

    Args:
        environ: The environment (default ``os.environ``).

    Returns:
        ``(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_COUNT)``;
        ``SLURM_ARRAY_TASK_MIN`` defaults to 0 when unset. None when ``SLURM_ARRAY_TASK_ID``
        is unset or empty.

    Raises:
        PackError: The variables are not integers, ``SLURM_ARRAY_TASK_COUNT`` is missing, or
            the array's ids are not contiguous (``MAX - MIN + 1 != COUNT``).
    """
    env = os.environ if environ is None else environ
    if not env.get("SLURM_ARRAY_TASK_ID", "").strip():
        return None
    if not env.get("SLURM_ARRAY_TASK_COUNT", "").strip():
        raise PackError(
            "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; "
            "give --part K/N explicitly"
        )
    task, count = _int(env, "SLURM_ARRAY_TASK_ID"), _int(env, "SLURM_ARRAY_TASK_COUNT")
    low = _int(env, "SLURM_ARRAY_TASK_MIN") if env.get("SLURM_ARRAY_TASK_MIN") else 0
    high = _int(env, "SLURM_ARRAY_TASK_MAX") if env.get("SLURM_ARRAY_TASK_MAX") else None
    if count < 1:
        raise PackError(f"SLURM_ARRAY_TASK_COUNT={count} is not >= 1; give --part K/N")
    if high is not None and high - low + 1 != count:
        raise PackError(
            f"the job array's ids {low}..{high} are not {count} contiguous ids "
            f"(SLURM_ARRAY_TASK_COUNT={count}): use --array={low}-{low + count - 1} without a "
            "step, or give --part K/N explicitly"
        )
    k = task - low
    if not 0 <= k < count:
        raise PackError(
            f"SLURM_ARRAY_TASK_ID={task} is outside the array "
            f"{low}..{low + count - 1}; give --part K/N explicitly"
        )
    return k, count
