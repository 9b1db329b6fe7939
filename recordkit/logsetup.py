"""Logging for the two command-line tools (``recordkit`` and ``recordkit-train``)."""

from __future__ import annotations

import logging

__all__ = ["setup_logging"]

# Storage clients that log their own retries, and their final give-up with a traceback
# (gcsfs's ``logger.exception``). recordkit reports that failure itself in one line
# (recordkit.remote.fs.RemoteError), so below ``-v`` these loggers stay quiet.
_CHATTY_CLIENTS = ("gcsfs",)


def setup_logging(verbose: int) -> int:
    """Library warnings on stderr with their level and logger name; more with ``-v``/``-vv``.

    Args:
        verbose: How many ``-v`` were given.

    Returns:
        The root level set.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for name in _CHATTY_CLIENTS:
        logging.getLogger(name).setLevel(logging.CRITICAL if verbose == 0 else logging.NOTSET)
    return level
