"""Launchable scripts (thin: flags → cvae calls) and their configs.

Importing this package makes Ctrl-C quiet from the first moment a script runs: until a
script installs its own handling (training turns SIGINT into "save, then stop" between
epochs), SIGINT prints one line and exits with status 130 instead of a KeyboardInterrupt
traceback. It exits at once (``os._exit``): an exception raised from a signal handler can
land inside a garbage-collection callback, where Python prints it and carries on. Before
exiting it removes the workdir locks this process holds; everything else cvae writes is
written atomically, so nothing half-written is left.
"""

import os
import signal
import sys


def _interrupted(signum, frame):
    del signum, frame
    print("interrupted (Ctrl-C) before anything was saved; rerun the same command",
          file=sys.stderr, flush=True)
    workdir = sys.modules.get("cvae.workdir")
    if workdir is not None:
        workdir.release_held_locks()
    os._exit(130)


if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted)
