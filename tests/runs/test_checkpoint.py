"""The checkpoint module's console hygiene: once a save has failed and been reported, the
late echoes of its writer threads stay off the console, and nothing else does."""

import ctypes
import errno
import logging
import threading

import jax
import numpy as np
import pytest

from cvae import parallel
from cvae.runs import checkpoint

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def no_watched_saves(monkeypatch):
    """Each test starts with no failed save being watched, and leaves none behind (a save
    that failed stays watched for the rest of its process, by design)."""
    monkeypatch.setattr(checkpoint, "_WATCHED", set())


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


# ------------------------------------------------------------- a best that is also latest


def _state(value: float) -> dict:
    return {
        "step": np.int32(value),
        "params": {"w": np.full((3, 2), value, np.float32), "b": np.arange(2.0) + value},
    }


def _abstract(state):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def test_a_new_best_is_written_once_and_its_copy_is_the_latest_save(tmp_path, monkeypatch):
    writes = []
    real_write = checkpoint._write
    monkeypatch.setattr(
        checkpoint,
        "_write",
        lambda manager, step, *a: writes.append(step) or real_write(manager, step, *a),
    )
    saver = checkpoint.Checkpointer(tmp_path, keep=2)
    saver.save(1, _state(1.0), {"epoch": 1}, best=True)
    saver.save(2, _state(2.0), {"epoch": 2})
    saver.save(3, _state(3.0), {"epoch": 3}, best=True)
    assert writes == [1, 2, 3]  # one Orbax write a step
    latest, best = tmp_path / "latest", tmp_path / "best"
    # The copies count among the kept periodic saves: step 1's is gone, as Orbax's would be.
    assert sorted(p.name for p in latest.iterdir()) == ["2", "3"]
    assert sorted(p.name for p in best.iterdir()) == ["3"]
    files = [p for p in (latest / "3").rglob("*") if p.is_file()]
    assert files and all(
        p.read_bytes() == (best / "3" / p.relative_to(latest / "3")).read_bytes()
        and p.stat().st_ino != (best / "3" / p.relative_to(latest / "3")).stat().st_ino
        for p in files
    )
    saver.close()

    # A fresh Checkpointer (a rerun) reads the copy as a save of its own…
    reread = checkpoint.Checkpointer(tmp_path, keep=2)
    assert reread.latest_step() == 3
    state, meta = reread.restore(_abstract(_state(0.0)))
    np.testing.assert_array_equal(state["params"]["w"], _state(3.0)["params"]["w"])
    assert meta == {"epoch": 3}
    # …and Orbax's next save prunes it like any other.
    reread.save(4, _state(4.0), {"epoch": 4})
    reread.save(5, _state(5.0), {"epoch": 5})
    assert sorted(p.name for p in latest.iterdir()) == ["4", "5"]
    params, meta = reread.restore_params("best")
    assert meta == {"epoch": 3} and float(params["b"][0]) == 3.0
    reread.close()


def test_a_full_disk_inside_the_copy_leaves_no_partial_save_and_names_the_intact_one(
    tmp_path, monkeypatch
):
    saver = checkpoint.Checkpointer(tmp_path, keep=3)
    saver.save(1, _state(1.0), {"epoch": 1}, best=True)
    real_copy = checkpoint.shutil.copytree

    def copy_until_the_disk_fills(source, target, *args, **kwargs):  # and its recursion
        def copy_one(src, dst):
            if "ocdbt" in src:  # the metadata fits, the arrays' files do not
                raise OSError(errno.ENOSPC, "No space left on device")
            return checkpoint.shutil.copy2(src, dst)

        return real_copy(source, target, copy_function=copy_one)

    monkeypatch.setattr(checkpoint.shutil, "copytree", copy_until_the_disk_fills)
    with pytest.raises(
        checkpoint.CheckpointWriteError,
        match=r"step 2 to .*latest.*No space left.*previous checkpoint \(step 2\) is intact",
    ):
        saver.save(2, _state(2.0), {"epoch": 2}, best=True)
    assert sorted(p.name for p in (tmp_path / "latest").iterdir()) == ["1"]
    monkeypatch.undo()
    assert saver.restore_params("best")[1] == {"epoch": 2}  # the best save was whole
    saver.close()


def test_a_save_from_device_arrays_restores_onto_the_devices_its_target_names(tmp_path):
    """One process saves a host copy of the state; restoring it places each array as the
    target's sharding says (all 8 devices here), with the same values."""
    mesh = parallel.make_mesh(0)
    on_devices = parallel.replicate(_state(7.0), mesh)
    saver = checkpoint.Checkpointer(tmp_path)
    saver.save(1, on_devices, {"epoch": 1})
    target = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), on_devices
    )
    restored, _ = saver.restore(target)
    for got, want in zip(
        jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(on_devices), strict=True
    ):
        assert got.sharding == want.sharding and len(got.sharding.device_set) == 8
        np.testing.assert_array_equal(got, want)
    saver.close()
