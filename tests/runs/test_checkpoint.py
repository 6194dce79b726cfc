"""The checkpoint module's console hygiene: once a save has failed and been reported, the
late echoes of its writer threads stay off the console, and nothing else does."""

import errno
import logging

import pytest

from cvae.runs import checkpoint

pytestmark = pytest.mark.unit


def _echo(error: BaseException) -> logging.LogRecord:
    """What asyncio logs for a writer's future whose exception nobody retrieved."""
    return logging.LogRecord(
        "asyncio",
        logging.ERROR,
        "asyncio/base_events.py",
        1,
        "Future exception was never retrieved",
        None,
        (type(error), error, None),
    )


def test_a_failed_saves_pathless_writer_errors_are_dropped_and_others_kept(tmp_path):
    full = OSError(errno.ENOSPC, "No space left on device")
    echoes = checkpoint._DropLateEchoes()
    assert echoes.filter(_echo(full))  # no failed save: an error is an error
    checkpoint._watch(tmp_path / "latest" / "21")
    try:
        assert not echoes.filter(_echo(full))
        assert echoes.filter(_echo(ValueError("an unrelated bug")))
    finally:
        checkpoint._unwatch(tmp_path / "latest" / "21")
    assert echoes.filter(_echo(full))
