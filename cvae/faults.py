"""Fail points for the crash-consistency tests: ``CVAE_FAULT="name:n"`` makes the n-th pass
through ``fault_point(name)`` kill this process with SIGKILL — a crash at a known place
(inside a metrics write, inside a checkpoint save, between two saves);
``CVAE_FAULT="name:n:SIGTERM"`` sends that signal instead (a stop a user asks for, at a
known epoch). Without the variable, which is always the case outside those tests, a fail
point does nothing.
"""

from __future__ import annotations

import os
import signal

_passes: dict[str, int] = {}


def fault_point(name: str) -> None:
    """SIGKILLs this process on the n-th pass when ``CVAE_FAULT`` is ``name:n`` (sends the
    signal named by ``name:n:SIGNAL`` instead)."""
    spec = os.environ.get("CVAE_FAULT")
    if not spec:
        return
    target, _, rest = spec.partition(":")
    if target != name:
        return
    nth, _, signal_name = rest.partition(":")
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] == int(nth or 1):
        os.kill(os.getpid(), signal.Signals[signal_name or "SIGKILL"])
