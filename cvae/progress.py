"""Progress output that a terminal and a log file can both read.

On a terminal a tqdm bar owns its line and log lines print above it
(``logging_above_bars``); off a terminal (a log file, a pipe, a scheduler) there are no
bars at all, and loops log a plain line at a cadence instead (``log_every``). One rule for
every bar in cvae: ``bar`` draws only when asked *and* stderr is a terminal.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


def on_terminal() -> bool:
    """Whether stderr, where bars and logs go, is a terminal."""
    return sys.stderr.isatty()


def bar(iterable=None, *, enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar that draws only when ``enabled`` and stderr is a terminal.

    Args:
      iterable: what to iterate, or None for a bar updated by hand.
      enabled: the caller's wish (e.g. a ``progress`` argument).
      **kwargs: tqdm's (``total``, ``desc``, ``unit``, ``initial``…).

    Returns:
      The bar (disabled bars count but print nothing).
    """
    return tqdm(iterable, disable=not (enabled and on_terminal()), dynamic_ncols=True, **kwargs)


def duration(seconds: float) -> str:
    """A time span as a person reads it: "40 s", "12 min", "3.4 h".

    Args:
      seconds: the span.

    Returns:
      Seconds below two minutes, minutes below two hours, hours above.
    """
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def log_every(total: int, lines: int = 10) -> int:
    """The cadence of plain progress lines off a terminal: about ``lines`` for the run.

    Args:
      total: the loop's length (epochs, steps).
      lines: how many lines the whole loop should print.

    Returns:
      Every how many iterations to log (≥ 1).
    """
    return max(1, math.ceil(total / lines))


def logging_above_bars(active: bool):
    """A context in which log lines print above the bars instead of through them.

    Args:
      active: whether a bar is drawn (otherwise the context does nothing).

    Returns:
      The context manager.
    """
    if not active:
        return contextlib.nullcontext()
    return logging_redirect_tqdm(loggers=[logging.getLogger()])
