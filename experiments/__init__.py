"""Launchable scripts (thin: flags → cvae calls) and their configs.

Ctrl-C is quiet from the first moment a launcher runs: until the script installs its own
handling (training turns SIGINT into "save, then stop" between epochs), SIGINT prints one
line and exits with status 130 instead of a KeyboardInterrupt traceback
(``quiet_interrupts``). The handler is installed here only when a launcher is being started
as a program (``python -m experiments.NAME``, before its heavy imports) and by every
launcher's ``cli.run`` (the console scripts); importing a launcher module from other code
changes nothing in the importing process.
"""

import os
import signal
import sys


def _interrupted(signum, frame):
    # It exits at once (os._exit): an exception raised from a signal handler can land inside
    # a garbage-collection callback, where Python prints it and carries on. Everything cvae
    # writes is written atomically; the workdir locks this process holds are removed.
    del signum, frame
    print(
        "interrupted (Ctrl-C) before anything was saved; rerun the same command",
        file=sys.stderr,
        flush=True,
    )
    workdir = sys.modules.get("cvae.runs.workdir")
    if workdir is not None:
        workdir.release_held_locks()
    os._exit(130)


def quiet_interrupts() -> None:
    """Ctrl-C → one line and exit status 130, unless SIGINT already has a handler of its
    own (an ignored SIGINT, as in a background job, stays ignored)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted)


if sys.argv[:1] == ["-m"]:  # Python is locating a launcher run with -m: it is the program
    quiet_interrupts()
