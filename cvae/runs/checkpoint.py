"""The only module that talks to Orbax: save, find and restore training checkpoints.

Layout under ``workdir/checkpoints/``: ``latest/<step>/`` keeps the last N saves and
``best/<step>/`` the single best by validation ELBO. Each save holds the train state
(params, optimizer state, step) and a JSON ``meta`` item (epoch = data position, the
early-stopping record). Orbax writes a save into a temporary directory and renames it
when complete, so a kill mid-save leaves the previous saves intact (and a temporary
directory, removed on the next start).

A new best is also the step's periodic save: Orbax writes it once, into ``best/``, and
the finished directory is copied into ``latest/`` (under a temporary name, renamed when
whole), a few milliseconds instead of a second write of every array through TensorStore
(about 0.1 s even for a small model). The two are separate files: damage to one leaves the
other readable.

Failure policy:
* a new best is saved *before* the periodic save of the same step: a kill between the two
  leaves the latest save older than the best, so the rerun retrains that epoch, finds the
  same best again and rewrites it — the best checkpoint always ends as the uninterrupted
  run's;
* restoring takes the newest readable save of either kind (a best save holds the full
  state too), so a run whose every latest save is damaged resumes from its best;
* ``restore_params("best")`` falls back to the latest save, with a warning, when every
  best save is damaged;
* a save that cannot be restored is moved aside to ``corrupt-<step>`` with one warning
  line and the previous one is tried;
* a save that cannot be written (a full disk) raises ``CheckpointWriteError`` naming the
  newest intact checkpoint, after removing its own partial files.

In a multi-process run every process calls every method: Orbax saves and restores
collectively (the primary process writes the metadata, each writes its own shards).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import pathlib
import shutil
import sys
import threading
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp

from cvae import parallel
from cvae.faults import fault_point
from cvae.models import vae as model_lib

log = logging.getLogger("cvae")


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (e.g. the disk is full); older saves are intact."""


def _manager(directory: pathlib.Path, max_to_keep: int) -> ocp.CheckpointManager:
    _remove_unfinished_saves(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager(
        directory.absolute(),
        options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": _MetaHandler()},
    )


class _MetaHandler(ocp.JsonCheckpointHandler):
    """Orbax's JSON handler with a fail point *inside* a save: the state item is being
    written into the save's temporary directory, nothing is finalized yet."""

    async def async_save(self, directory, item=None, args=None):
        fault_point("checkpoint_inside_save")
        return await super().async_save(directory, item, args)

    def save(self, directory, item=None, args=None):
        fault_point("checkpoint_inside_save")
        return super().save(directory, item, args)


@ocp.args.register_with_handler(_MetaHandler, for_save=True)
@dataclasses.dataclass
class _MetaSave(ocp.args.JsonSave):
    """``JsonSave`` routed to ``_MetaHandler`` (the same JSON on disk)."""


@ocp.args.register_with_handler(_MetaHandler, for_restore=True)
@dataclasses.dataclass
class _MetaRestore(ocp.args.JsonRestore):
    """``JsonRestore`` routed to ``_MetaHandler``."""


def _saved_tree(metadata):
    """The tree of array metadata (shape, dtype) inside an Orbax metadata object."""
    metadata = getattr(metadata, "item_metadata", metadata)
    return getattr(metadata, "tree", metadata)


def _on_this_device(saved_tree):
    """Restore targets placing every saved array on this process's first device, whatever
    device layout saved it."""
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=local), saved_tree
    )


def all_finite(tree) -> bool:
    """True when every floating-point leaf of ``tree`` is finite (no NaN or inf)."""
    return all(
        bool(np.all(np.isfinite(np.asarray(x))))
        for x in jax.tree_util.tree_leaves(tree)
        if np.issubdtype(np.asarray(x).dtype, np.inexact)
    )


class Checkpointer:
    """Periodic saves (keep the last ``keep``) plus the best by a validation metric."""

    def __init__(self, directory: str | pathlib.Path, keep: int = 3):
        self.directory = pathlib.Path(directory)
        self.keep = keep
        self._latest = _manager(self.directory / "latest", keep)
        self._best = _manager(self.directory / "best", 1)

    def save(self, step: int, state, meta: dict, *, best: bool = False) -> None:
        """Saves ``state`` at ``step`` (first as the new best, if it is one); refuses
        non-finite states (they are never written)."""
        if jax.process_count() == 1:
            # One copy to host memory (which the finiteness check then reads), and Orbax
            # writes NumPy arrays: half the time of handing it device arrays (whose every
            # replica it slices and transfers itself). The bytes are the same (the metadata
            # records np.ndarray for jax.Array), and a restore places them as its target
            # says. Across processes each one writes its own shards of the device arrays.
            state = jax.device_get(state)
        if not all_finite(state["params"]):
            raise ValueError(f"refusing to checkpoint step {step}: the parameters are not finite")
        managers = ([self._best] if best else []) + [self._latest]
        for manager in managers:
            fault_point("checkpoint_save")
            try:
                if step in manager.all_steps():  # written before a resume from an older save
                    manager.delete(step)
                path = pathlib.Path(manager.directory) / str(step)
                _watch(path)
                if manager is self._latest and best:
                    self._copy_best(step)
                else:
                    with _quiet_orbax():  # a failed write is reported below, in one line
                        _write(manager, step, state, meta)
                _unwatch(path)
            except Exception as err:  # a full disk, a vanished directory, a read-only mount
                self._discard_partial(manager, step)
                intact = self.newest_step()
                raise CheckpointWriteError(
                    f"could not write checkpoint step {step} to {manager.directory} "
                    f"({type(err).__name__}: {_first_line(err)[:200]}); "
                    + (
                        f"the previous checkpoint (step {intact}) is intact: "
                        if intact is not None
                        else "no earlier checkpoint exists: "
                    )
                    + "free space (or fix the directory) and rerun the same command to resume"
                ) from err

    def _copy_best(self, step: int) -> None:
        """Makes the best save of ``step`` the periodic one too: its directory is copied into
        ``latest/`` under a temporary name and renamed when whole (a kill inside the copy
        leaves a temporary directory, removed on the next start), then the oldest periodic
        saves beyond ``keep`` are deleted, as Orbax does after a save."""
        source = pathlib.Path(self._best.directory) / str(step)
        target = pathlib.Path(self._latest.directory) / str(step)
        if parallel.is_primary():  # one copy, on the file system every process shares
            partial = target.with_name(f"{step}.orbax-checkpoint-tmp-copy")
            shutil.rmtree(partial, ignore_errors=True)
            try:
                shutil.copytree(source, partial)
            except shutil.Error as err:  # [(source, target, why)]: one per file that failed
                failed = err.args[0]
                raise OSError(failed[0][2] if isinstance(failed, list) else failed) from err
            fault_point("checkpoint_inside_save")
            partial.rename(target)
        parallel.barrier(f"copy-best-{step}")
        self._latest.reload()
        for old in sorted(self._latest.all_steps())[: -self.keep]:
            self._latest.delete(old)

    def newest_step(self) -> int | None:
        """The newest step saved in either directory, or None."""
        steps = self._latest.all_steps() + self._best.all_steps()
        return max(steps) if steps else None

    def latest_step(self) -> int | None:
        """The step of the newest periodic save, or None before the first."""
        return self._latest.latest_step()

    def restore(self, abstract_state):
        """(state, meta) of the newest readable save, latest or best, or None if none."""
        return self._restore_newest(
            [self._latest, self._best], ocp.args.StandardRestore(abstract_state)
        )

    def restore_params(self, which: str = "best"):
        """(params, meta) without knowing the optimizer: for evaluation and notebooks.

        ``which`` = "best" (falling back to the latest save, with a warning, when there is no
        readable best) or "latest". The arrays land on this process's first device, whatever
        layout saved them (a run of several processes or devices restores into one notebook).
        """

        def on_this_device(manager, step):
            saved = _saved_tree(manager.item_metadata(step)["state"])
            return ocp.args.StandardRestore(_on_this_device(saved))

        if which == "best":
            restored = self._restore_newest([self._best], on_this_device)
            if restored is None and self._latest.all_steps():
                best_dir = pathlib.Path(self._best.directory)
                if self._best.all_steps() or any(best_dir.glob("corrupt-*")):
                    log.warning(
                        "no readable best checkpoint in %s; using the latest one",
                        self._best.directory,
                    )
                restored = self._restore_newest([self._latest], on_this_device)
        else:
            restored = self._restore_newest([self._latest, self._best], on_this_device)
        return None if restored is None else (restored[0]["params"], restored[1])

    def parameter_count(self, which: str = "best") -> int | None:
        """Number of parameters of the newest checkpoint, read from its metadata alone."""
        manager = self._manager_for(which)
        step = manager.latest_step()
        if step is None:
            return None
        return model_lib.count_params(_saved_tree(manager.item_metadata(step)["state"])["params"])

    def _restore_newest(self, managers, state_args):
        """Tries the saves of ``managers`` newest step first (latest before best at equal
        steps); ``state_args``: restore args, or a function (manager, step) → restore args."""
        candidates = sorted(
            (
                (step, -rank, manager)
                for rank, manager in enumerate(managers)
                for step in manager.all_steps()
            ),
            key=lambda c: c[:2],
            reverse=True,
        )
        for step, _, manager in candidates:
            path = pathlib.Path(manager.directory) / str(step)
            _watch(path)  # a failed read's echoes can come before the except clause runs
            try:
                args = state_args(manager, step) if callable(state_args) else state_args
                with _quiet_orbax():
                    restored = manager.restore(
                        step, args=ocp.args.Composite(state=args, meta=_MetaRestore())
                    )
            except Exception as err:  # torn, truncated or foreign files
                self._quarantine(manager, step, err)
                continue
            _unwatch(path)
            return restored["state"], dict(restored["meta"])
        return None

    def _manager_for(self, which: str) -> ocp.CheckpointManager:
        """The best manager for "best" when it holds a save, else the latest one."""
        return self._best if which == "best" and self._best.all_steps() else self._latest

    def _discard_partial(self, manager, step: int) -> None:
        """Removes what a failed save of ``step`` left (its temporary or final directory)."""
        if not parallel.is_primary():
            return
        for path in pathlib.Path(manager.directory).glob(f"{step}*"):
            if path.name == str(step) or ".orbax-checkpoint-tmp" in path.name:
                shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(Exception):
            manager.reload()

    def _quarantine(self, manager, step: int, err: Exception) -> None:
        path = pathlib.Path(manager.directory) / str(step)
        target = path.with_name(f"corrupt-{step}")
        _watch(path)  # its remaining reads may still report (and under its new name)
        _watch(target)
        log.warning(
            "checkpoint %s could not be restored (%s: %s); moved it to %s and trying "
            "the previous one",
            path,
            type(err).__name__,
            _first_line(err)[:200],
            target,
        )
        if parallel.is_primary():  # the others wait, then all re-read the directory
            if target.exists():
                shutil.rmtree(target)
            path.rename(target)
        parallel.barrier(f"quarantine-{step}")
        manager.reload()

    def close(self) -> None:
        """Waits for pending writes and releases both managers."""
        self._latest.close()
        self._best.close()


def _remove_unfinished_saves(directory: pathlib.Path) -> None:
    """Deletes the temporary directories of saves a kill interrupted (never a finished save).

    Done here, synchronously, rather than by Orbax's ``cleanup_tmp_directories``, which
    cleans in a background thread that dies noisily when a short command exits first."""
    if parallel.is_primary() and directory.is_dir():
        for path in directory.iterdir():
            if ".orbax-checkpoint-tmp" in path.name:
                shutil.rmtree(path, ignore_errors=True)
    parallel.barrier(f"unfinished-saves-{directory.name}")


def _write(manager, step: int, state, meta: dict) -> None:
    """One Orbax save of (state, meta) at ``step``, waited for."""
    manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=_MetaSave(meta)),
        force=True,
    )
    manager.wait_until_finished()


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax logs a traceback per failed read of a damaged checkpoint (at ERROR, some of them
    "Event loop is closed" from its async readers): the quarantine warning says it once."""
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio", "orbax")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


# Saves being written or restored: while one is, or once one failed, the late echoes of
# its failure are kept off the console (``_watch``).
_WATCHED: set[str] = set()


def _is_late_echo(text: str, error: BaseException | None) -> bool:
    return (
        (isinstance(error, RuntimeError) and text == "Event loop is closed")
        # a writer thread's own OSError (a full disk) names no path: while a save that
        # failed is watched, it is that save's
        or (bool(_WATCHED) and isinstance(error, OSError))
        or any(watched in text for watched in _WATCHED)
    )


class _DropLateEchoes(logging.Filter):
    """asyncio's "Task exception was never retrieved" for a watched save's failed writes,
    and the errors Orbax's worker threads log (with a traceback, often naming no path)
    while a save is watched: its failure is reported once, by ``Checkpointer.save``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _WATCHED and record.levelno >= logging.ERROR and "orbax" in record.pathname:
            return False
        error = record.exc_info[1] if record.exc_info else None
        return not _is_late_echo(record.getMessage() + str(error or ""), error)


class _LateEchoHook:
    """``sys.unraisablehook`` less the late echoes of a watched save."""

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, unraisable) -> None:
        if not _is_late_echo(str(unraisable.exc_value), unraisable.exc_value):
            self.previous(unraisable)


class _LateEchoExceptHook:
    """``sys.excepthook`` less the late echoes of a watched save: TensorStore's callbacks
    report a failed hand-over to a closed event loop with ``PyErr_Print``, which prints
    through ``sys.excepthook`` (not ``sys.unraisablehook``). Only that error, printed from
    a thread other than the main one, is dropped: an uncaught error of the program itself
    always reaches the console."""

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, kind, error, trace) -> None:
        closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
        if not (closed_loop and threading.current_thread() is not threading.main_thread()):
            self.previous(kind, error, trace)


def _watch(path: pathlib.Path) -> None:
    """Keeps the late echoes of a failed restore or save of ``path`` off the console.

    When one read of a damaged save (or one write to a full disk) fails, Orbax closes its
    event loop while TensorStore still completes the other operations; each then reports —
    through ``sys.unraisablehook`` ("Event loop is closed", or its own error naming the
    save), ``sys.excepthook`` (TensorStore's ``PyErr_Print``), asyncio's logger ("Task
    exception was never retrieved") or a never-awaited
    coroutine's warning — dozens of tracebacks after the failure has been handled (the save
    quarantined and the previous one restored, or the run stopped with one line) and
    reported. The hooks installed here drop exactly those and pass everything else on;
    they are installed once, and ``_unwatch`` forgets a save that succeeded.
    """
    _WATCHED.add(str(path))
    if isinstance(sys.unraisablehook, _LateEchoHook):
        return
    sys.unraisablehook = _LateEchoHook(sys.unraisablehook)
    sys.excepthook = _LateEchoExceptHook(sys.excepthook)
    for name in ("asyncio", "absl"):
        logging.getLogger(name).addFilter(_DropLateEchoes())
    # The reads Orbax had queued and never ran are garbage-collected with a warning each.
    warnings.filterwarnings(
        "ignore", r"coroutine '_read_array\w*' was never awaited", RuntimeWarning
    )


def _unwatch(path: pathlib.Path) -> None:
    _WATCHED.discard(str(path))


def save_params(directory: str | pathlib.Path, params) -> None:
    """Saves a params pytree on its own (an auxiliary network such as the FID classifier).
    Orbax writes to a temporary directory and renames it, so an old copy survives a crash
    until the new one is complete."""
    directory = pathlib.Path(directory).absolute()
    with ocp.StandardCheckpointer() as saver:
        saver.save(directory, params, force=True)


def load_params(directory: str | pathlib.Path):
    """The params pytree written by ``save_params``, on this process's first device."""
    directory = pathlib.Path(directory).absolute()
    if not directory.exists():
        raise FileNotFoundError(f"no saved params in {directory}")
    with ocp.StandardCheckpointer() as loader:
        return loader.restore(directory, _on_this_device(_saved_tree(loader.metadata(directory))))
