"""Restoring a run from its workdir: its config, its parameters from a checkpoint, the data
info it was trained on, and the model they build (``restore``); and reading which members
of a sweep directory finished (``sweep_members``).

What every reader of a trained run starts from — the evaluation layer, ``load_run`` and
the notebooks — without the notebook object on top.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from cvae import data
from cvae.models import vae as model_lib
from cvae.runs import checkpoint
from cvae.runs.workdir import RunNotFoundError, Workdir, read_json

WHICH = ("best", "latest")
SWEEP_FILE = "sweep.json"  # a sweep directory's record of its members (cvae.training.sweep)
FINISHED = ("done", "stopped_early")  # members whose runs are complete and can be reported


@dataclasses.dataclass
class Restored:
    """A trained run as restored from its workdir.

    Attributes:
      workdir: the run directory.
      config: the run's config.
      params: the parameters of the checkpoint asked for.
      model: the model the config builds (any model of ``cvae.models.protocol``).
      info: the data set's shape, classes and pixel range.
      meta: the checkpoint's record (step, epoch, …).
    """

    workdir: pathlib.Path
    config: ml_collections.ConfigDict
    params: dict
    model: Any
    info: data.DatasetInfo
    meta: dict


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The saved config of a run, tuples restored.

    Args:
      workdir: the run directory.

    Returns:
      The config.

    Raises:
      RunNotFoundError: the directory holds no run.
    """
    return Workdir(workdir).read_config()


def restore(workdir: str | pathlib.Path, which: str = "best") -> Restored:
    """A trained run's config, model and parameters.

    Args:
      workdir: the run directory.
      which: "best" (by validation ELBO; the latest checkpoint when there is no best yet)
        or "latest".

    Returns:
      The restored run.

    Raises:
      ValueError: ``which`` is neither.
      RunNotFoundError: no run, or no checkpoint, in the directory.
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    wd = Workdir(workdir)
    config = wd.read_config()
    ckpt = checkpoint.Checkpointer(wd.checkpoints, config.train.keep_checkpoints)
    restored = ckpt.restore_params(which)
    ckpt.close()
    if restored is None:
        raise RunNotFoundError(
            f"{wd.path} has no checkpoint yet; train it first (or wait "
            "for its first epoch to finish)"
        )
    params, meta = restored
    saved = wd.read_data_info()
    if saved is not None:  # the run's data need not be here to decode and sample
        info = data.DatasetInfo(
            saved["name"],
            tuple(saved["shape"]),
            saved["num_classes"],
            tuple(saved["pixel_range"]),
        )
    else:  # a run from before data.json: ask the source (a TFDS split is not read)
        info = data.open_source(config.data, "test").info
    model = model_lib.build_model(
        config.model, info.shape, info.num_classes, binary_data=config.data.binarize == "dynamic"
    )
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return Restored(wd.path, config, params, model, info, meta)


def sweep_members(directory: str | pathlib.Path) -> tuple[list[pathlib.Path], list[str]] | None:
    """The finished members of a sweep directory, and notes on the others.

    Args:
      directory: a directory written by ``experiments.sweep``.

    Returns:
      (run directories of the members that finished, one note per status of those left
      out), or None when the directory holds no ``sweep.json``.
    """
    directory = pathlib.Path(directory)
    record = read_json(directory / SWEEP_FILE)
    if record is None:
        return None
    finished: list = []
    left_out: dict[str, list[str]] = {}
    for name, entry in sorted(record["members"].items()):
        if entry["status"] in FINISHED:
            finished.append(directory / name)
        else:
            left_out.setdefault(entry["status"], []).append(name)
    notes = [
        f"{directory}: left out {len(names)} {status} member(s): {', '.join(names)}"
        for status, names in left_out.items()
    ]
    return finished, notes
