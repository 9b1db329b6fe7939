"""Progress callbacks shared by verify and inspect."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int], None]
"""Called with how much more work (records or bytes) is done since the last call."""


def skip_first(progress: Progress | None, n: int) -> Progress | None:
    """``progress`` without its first ``n`` units of work (already reported once, e.g. by a
    fast pass that is being redone by the record-at-a-time code)."""
    if progress is None or n == 0:
        return progress
    left = [n]

    def report(k: int) -> None:
        take = min(k, left[0])
        left[0] -= take
        if k > take:
            progress(k - take)

    return report
