"""What keeps a run whole against the world outside it: one writer per workdir (the lock,
taken by the primary process for the whole run) and signals turned into a stop between
epochs.
"""

from __future__ import annotations

import contextlib
import signal

from cvae import parallel
from cvae.runs.workdir import Workdir, WorkdirLockedError


@contextlib.contextmanager
def one_writer(workdir: Workdir):
    """Holds the workdir's lock (taken by the primary process) for the whole run; every
    process fails together, with the holder named, when another run holds it."""
    error = None
    if parallel.is_primary():
        try:
            workdir.acquire_lock()
        except WorkdirLockedError as err:
            error = err
    if parallel.any_process(error is not None):
        raise error or WorkdirLockedError(f"{workdir.path} is in use by another run")
    try:
        yield
    finally:
        if parallel.is_primary():
            workdir.release_lock()


@contextlib.contextmanager
def stop_requests():
    """Turns SIGINT/SIGTERM into a flag checked between epochs (a save, then a clean exit)."""
    flag: dict[str, str | None] = {"signal": None}

    def handler(signum, _frame):
        flag["signal"] = signal.Signals(signum).name

    previous = {}
    with contextlib.suppress(ValueError):  # not the main thread: no handlers, no flag
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
