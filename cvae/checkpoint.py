"""The only module that talks to Orbax: save, find and restore training checkpoints.

Layout under ``workdir/checkpoints/``: ``latest/<step>/`` keeps the last N saves and
``best/<step>/`` the single best by validation ELBO. Each save holds the train state
(params, optimizer state, step) and a JSON ``meta`` item (epoch = data position, the
early-stopping record, the metrics). A checkpoint that fails to restore is moved aside to
``corrupt-<step>`` with a warning and the previous one is tried, so a torn write never
costs more than the epochs since the save before it.

In a multi-process run every process calls every method: Orbax saves and restores
collectively (the primary process writes the metadata, each writes its own shards).
"""

from __future__ import annotations

import logging
import pathlib
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from cvae import model as model_lib
from cvae import parallel

log = logging.getLogger("cvae")


def _manager(directory: pathlib.Path, max_to_keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory.absolute(), options=options, item_handlers={
        "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})


def _saved_tree(metadata):
    """The tree of array metadata (shape, dtype) inside an Orbax metadata object."""
    metadata = getattr(metadata, "item_metadata", metadata)
    return getattr(metadata, "tree", metadata)


def _on_this_device(saved_tree):
    """Restore targets placing every saved array on this process's first device, whatever
    device layout saved it."""
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=local), saved_tree)


def all_finite(tree) -> bool:
    """True when every floating-point leaf of ``tree`` is finite (no NaN or inf)."""
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree_util.tree_leaves(tree)
               if np.issubdtype(np.asarray(x).dtype, np.inexact))


class Checkpointer:
    """Periodic saves (keep the last ``keep``) plus the best by a validation metric."""

    def __init__(self, directory: str | pathlib.Path, keep: int = 3):
        self.directory = pathlib.Path(directory)
        self.keep = keep
        self._latest = _manager(self.directory / "latest", keep)
        self._best = _manager(self.directory / "best", 1)

    def save(self, step: int, state, meta: dict, *, best: bool = False) -> None:
        """Saves ``state`` at ``step``; refuses non-finite states (they are never written)."""
        if not all_finite(state["params"]):
            raise ValueError(f"refusing to checkpoint step {step}: the parameters are not finite")
        managers = [self._latest] + ([self._best] if best else [])
        for manager in managers:
            if step in manager.all_steps():  # written before a resume from an older save
                manager.delete(step)
            manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                       meta=ocp.args.JsonSave(meta)),
                         force=True)
            manager.wait_until_finished()

    def latest_step(self) -> int | None:
        """The step of the newest periodic save, or None before the first."""
        return self._latest.latest_step()

    def restore(self, abstract_state, which: str = "latest"):
        """(state, meta) of the newest readable checkpoint, or None when there is none.

        ``which`` is "latest" or "best" (falling back to latest when no best exists).
        """
        return self._restore_newest(which, ocp.args.StandardRestore(abstract_state))

    def restore_params(self, which: str = "best"):
        """(params, meta) without knowing the optimizer: for evaluation and notebooks.

        The arrays land on this process's first device, whatever layout saved them (a run
        of several processes or devices restores into one notebook).
        """
        def on_this_device(manager, step):
            saved = _saved_tree(manager.item_metadata(step)["state"])
            return ocp.args.StandardRestore(_on_this_device(saved))

        restored = self._restore_newest(which, on_this_device)
        return None if restored is None else (restored[0]["params"], restored[1])

    def parameter_count(self, which: str = "best") -> int | None:
        """Number of parameters of the newest checkpoint, read from its metadata alone."""
        manager = self._manager_for(which)
        step = manager.latest_step()
        if step is None:
            return None
        return model_lib.count_params(_saved_tree(manager.item_metadata(step)["state"])["params"])

    def _restore_newest(self, which: str, state_args):
        """``state_args``: restore args, or a function (manager, step) → restore args."""
        manager = self._manager_for(which)
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                args = state_args(manager, step) if callable(state_args) else state_args
                restored = manager.restore(step, args=ocp.args.Composite(
                    state=args, meta=ocp.args.JsonRestore()))
                return restored["state"], dict(restored["meta"])
            except Exception as err:  # torn, truncated or foreign files
                self._quarantine(manager, step, err)
        return None

    def _manager_for(self, which: str) -> ocp.CheckpointManager:
        """The best manager for "best" when it holds a save, else the latest one."""
        return self._best if which == "best" and self._best.all_steps() else self._latest

    def _quarantine(self, manager, step: int, err: Exception) -> None:
        path = pathlib.Path(manager.directory) / str(step)
        target = path.with_name(f"corrupt-{step}")
        log.warning("checkpoint %s could not be restored (%s: %s); moved it to %s and trying "
                    "the previous one", path, type(err).__name__, str(err)[:200], target)
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
