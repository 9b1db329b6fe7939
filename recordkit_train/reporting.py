"""Where training progress goes besides the log lines: a terminal progress bar and TensorBoard.

Both live on rank 0 only. The bar (tqdm) is on when stderr is a terminal — never in CI logs or
pipes — and the MXNet-style log lines are routed through it so they do not tear it. TensorBoard
is optional (``--tensorboard``; ``pip install 'recordkit[tensorboard]'``) and writes event files
to ``<out>/tensorboard``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recordkit_train.config import ConfigError

__all__ = ["Reporter", "progress_enabled"]

_ENGINE_LOGGER = "recordkit_train.engine"


def progress_enabled(setting: bool | None, *, is_main: bool) -> bool:
    """Whether to draw a progress bar: never off rank 0; None means "when stderr is a TTY"."""
    if not is_main:
        return False
    if setting is None:
        return sys.stderr.isatty()
    return setting


class _NoBar:
    """Stands in for a tqdm bar when none is drawn."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        pass


class Reporter:
    """Rank 0's progress bar and TensorBoard writer for one run.

    Args:
        out: Run directory (TensorBoard events go to ``out/tensorboard``).
        progress: Draw a bar per epoch.
        tensorboard: Write TensorBoard scalars.
        purge_step: On resume, the first global step to be written again: TensorBoard drops
            events at and after it that an interrupted run left behind.

    Raises:
        ConfigError: ``tensorboard`` was asked for and the ``tensorboard`` package is missing.
    """

    def __init__(
        self,
        out: str | Path,
        *,
        progress: bool,
        tensorboard: bool,
        purge_step: int | None = None,
    ) -> None:
        self.progress = progress
        self._tb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "--tensorboard needs the tensorboard package: "
                    "pip install 'recordkit[tensorboard]'"
                ) from None
            self._tb = SummaryWriter(log_dir=str(Path(out) / "tensorboard"), purge_step=purge_step)

    @contextlib.contextmanager
    def epoch_bar(self, total: int, epoch: int) -> Iterator[Any]:
        """A bar over one epoch's ``total`` iterations; log lines print above it.

        Args:
            total: Iterations in the epoch.
            epoch: Epoch number (for the label).

        Yields:
            An object with ``update(n)`` and ``set_postfix_str(s)``.
        """
        if not self.progress:
            yield _NoBar()
            return
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        logger = logging.getLogger(_ENGINE_LOGGER)
        with (
            logging_redirect_tqdm(loggers=[logger]),
            tqdm(
                total=total, desc=f"epoch {epoch}", unit="it", leave=False, dynamic_ncols=True
            ) as bar,
        ):
            yield bar

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        """Write ``values`` (``None`` skipped) at global ``step`` to TensorBoard, if enabled."""
        if self._tb is None:
            return
        for tag, value in values.items():
            if value is not None:
                self._tb.add_scalar(tag, value, step)

    def flush(self) -> None:
        """Make the written events visible to a running TensorBoard."""
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
