"""Scoring runs saved in workdirs: one restored run on a split (``evaluate_run``), and every
finished member of a sweep directory, each member's ``eval.json`` written
(``evaluate_sweep``). What ``experiments.evaluate``, ``experiments.sweep --evaluate`` and
``Run.evaluate`` call: the one core (``cvae.evaluation.core``) with a run's own settings.
"""

from __future__ import annotations

import pathlib

import jax

from cvae import data, parallel
from cvae.evaluation.core import EvalSet, evaluate
from cvae.runs.restore import Restored, restore, sweep_members
from cvae.runs.workdir import RunNotFoundError, Workdir


def evaluate_run(
    run: Restored,
    split: str = "test",
    k: int | None = None,
    *,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
    resumable: bool = False,
) -> dict:
    """Scores of a split of a restored run through the one evaluation core.

    The mesh is the training run's device count where this machine has that many devices
    (so the test ELBO equals the one training logged), else every local device.

    Args:
      run: the run (``cvae.runs.restore.restore``, or a ``Run``).
      split: a role (train | validation | test: the split the run's config names for it,
        the carved validation subset included) or any TFDS split string.
      k: importance samples for ``nll_is``; None for the run's ``eval`` config.
      batch_size: examples per batch; None for the run's ``eval`` config.
      chunk_size: importance samples at once; None for the run's ``eval`` config.
      progress: show a progress bar.
      resumable: keep the partial scores in the workdir after each batch
        (``Workdir.partial_eval_path``) and resume from them when they are this
        evaluation's (same split, checkpoint, K, batch, chunk, devices);
        ``Workdir.write_eval`` removes them once the scores are written.

    Returns:
      What ``cvae.evaluation.evaluate`` returns, and the ``split``.
    """
    cfg = run.config
    k = cfg.eval.num_importance_samples if k is None else k
    eval_set = EvalSet(data.role_source(cfg.data, split), cfg.data.binarize == "dynamic")
    devices = cfg.train.num_devices if cfg.train.num_devices <= jax.device_count() else 0
    result = evaluate(
        run.model,
        run.params,
        eval_set,
        k=k,
        mesh=parallel.make_mesh(devices),
        batch_size=cfg.eval.batch_size if batch_size is None else batch_size,
        chunk_size=cfg.eval.chunk_size if chunk_size is None else chunk_size,
        code_l2=cfg.model.code_l2,
        progress=progress,
        description=f"evaluate {split}",
        partial_path=Workdir(run.workdir).partial_eval_path if resumable else None,
        partial_key={"split": split, "checkpoint_step": run.meta.get("step")},
    )
    return {**result, "split": split}


def evaluate_sweep(
    directory: str | pathlib.Path,
    split: str = "test",
    k: int | None = None,
    *,
    batch_size: int | None = None,
    chunk_size: int | None = None,
) -> dict[str, dict]:
    """Evaluates every finished member of a sweep and writes each member's ``eval.json``.

    Members whose models are equal (the seeds of one grid point) share one compiled
    evaluation program.

    Args:
      directory: a directory written by ``experiments.sweep``.
      split: a role or a split string, as ``evaluate_run`` takes.
      k: importance samples; None for each member's ``eval.num_importance_samples``.
      batch_size: examples per batch; None for the members' config.
      chunk_size: importance samples at once; None for the members' config.

    Returns:
      Each evaluated member's scores, by its path inside the sweep.

    Raises:
      RunNotFoundError: the directory holds no sweep.
    """
    directory = pathlib.Path(directory)
    members = sweep_members(directory)
    if members is None:
        raise RunNotFoundError(f"{directory} holds no sweep (no sweep.json)")
    results = {}
    for workdir in members[0]:
        scores = evaluate_run(
            restore(workdir),
            split,
            k,
            batch_size=batch_size,
            chunk_size=chunk_size,
            resumable=True,
        )
        Workdir(workdir).write_eval(scores)
        results[str(workdir.relative_to(directory))] = scores
    return results
