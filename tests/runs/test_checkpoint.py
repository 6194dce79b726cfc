"""The checkpoint module's console hygiene: once a save has failed and been reported, the
late echoes of its writer threads stay off the console, and nothing else does."""

import ctypes
import errno
import logging
import threading

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


def _print_error_as_c_code_does(statement: str) -> None:
    """Raises in ``statement`` and prints it with ``PyErr_Print``, as TensorStore's
    callbacks do when they cannot hand a result to a closed event loop."""
    assert ctypes.pythonapi.PyRun_SimpleString(statement.encode()) == -1


def test_a_closed_loops_echo_from_a_reader_thread_is_dropped_and_the_programs_errors_kept(
    tmp_path, capfd
):
    closed = "raise RuntimeError('Event loop is closed')"
    checkpoint._watch(tmp_path / "latest" / "42")
    try:
        reader = threading.Thread(target=_print_error_as_c_code_does, args=(closed,))
        reader.start()
        reader.join()
        assert capfd.readouterr().err == ""
        other = threading.Thread(
            target=_print_error_as_c_code_does, args=("raise ValueError('a real bug')",)
        )
        other.start()
        other.join()
        assert "ValueError: a real bug" in capfd.readouterr().err
        _print_error_as_c_code_does(closed)  # the main thread's own: never hidden
        assert "Event loop is closed" in capfd.readouterr().err
    finally:
        checkpoint._unwatch(tmp_path / "latest" / "42")
