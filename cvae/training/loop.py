"""``train_and_evaluate(config, workdir)``: the training loop, read top to bottom.

The loop itself fits one screen; what it delegates has a name: ``setup`` (data, model,
optimizer, compiled epoch), ``resume`` (the newest readable checkpoint), ``check_finite``
(the NaN guard), ``Progress.record_evaluation`` (model selection and early stopping),
``should_checkpoint`` (the checkpoint policy) and ``stop_requests`` (signals).
Scores come from the one evaluation core, ``cvae.evaluation.evaluate``.
Everything random is a function of (seed, epoch, step).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import jax

from cvae import config as config_lib
from cvae import faults, parallel
from cvae import progress as progress_lib
from cvae.runs import checkpoint
from cvae.runs.workdir import Workdir, as_workdir
from cvae.training.bookkeeping import RunBook
from cvae.training.guards import one_writer, stop_requests
from cvae.training.setup import (
    log_setup,
    prepare_workdir,
    record_config_changes,
    resume,
    run_keys,
    setup,
)

log = logging.getLogger("cvae")


@dataclasses.dataclass
class TrainResult:
    """What ``train_and_evaluate`` returns: final state, progress, how it ended, test scores."""

    state: dict  # {"step", "params", "opt_state"}
    epoch: int
    interrupted: bool = False
    stop_signal: str | None = None  # "SIGINT"/"SIGTERM"; None: another process's
    stopped_early: bool = False
    final_metrics: dict = dataclasses.field(default_factory=dict)
    traces: dict = dataclasses.field(default_factory=dict)  # compilations of each program


def train_and_evaluate(config, workdir) -> TrainResult:
    """Trains ``config`` in ``workdir`` (resuming what is there) and scores the test split.

    Per epoch: one compiled epoch, the NaN guard, a train record; every
    ``eval.every_epochs`` a validation score, image grids and model selection; a checkpoint
    by ``should_checkpoint``; early stopping and SIGINT/SIGTERM end the loop after a save.

    Args:
      config: the run's config (validated first).
      workdir: the run directory (a path or a ``Workdir``); created if needed.

    Returns:
      The final state, the epoch reached, how the run ended and the test scores.

    Raises:
      ConfigError: an invalid config.
      ConfigMismatchError: the workdir holds a different experiment.
      WorkdirLockedError: another run writes in the workdir.
      TrainingDivergedError: the loss became NaN or infinite (nothing diverged is saved).
    """
    cfg, workdir = config, as_workdir(workdir)
    config_lib.validate(cfg)
    workdir.path.mkdir(parents=True, exist_ok=True)
    with one_writer(workdir):
        return _train(cfg, workdir)


def _train(cfg, workdir: Workdir) -> TrainResult:
    """The body of ``train_and_evaluate``, run while holding the workdir's lock."""
    changes = prepare_workdir(cfg, workdir)
    s = setup(cfg)
    ckpt = checkpoint.Checkpointer(workdir.checkpoints, cfg.train.keep_checkpoints)
    state, progress = resume(ckpt, s.state, workdir, cfg.train.num_epochs)
    record_config_changes(cfg, workdir, changes, int(state["step"]), progress.epoch)
    log_setup(s.mesh, state["params"], workdir.path)
    _, data_key, train_key = parallel.replicate(run_keys(cfg.seed), s.mesh)
    book = RunBook(cfg, workdir, s.model, s.data, s.mesh, ckpt=ckpt, progress=progress)
    result = TrainResult(state, progress.epoch, stopped_early=progress.stopped_early)
    bar = progress_lib.bar(
        total=cfg.train.num_epochs,
        initial=progress.epoch,
        unit="epoch",
        enabled=book.primary,
        desc="train",
    )
    # Off a terminal: about ten train lines a run (and every validation's line).
    every = progress_lib.log_every(cfg.train.num_epochs)
    first_epoch = cfg.train.num_epochs if progress.stopped_early else progress.epoch
    with stop_requests() as stop, progress_lib.logging_above_bars(not bar.disable):
        for epoch in range(first_epoch, cfg.train.num_epochs):
            first_step, tick = int(state["step"]), time.perf_counter()
            state, per_step = s.run_epoch(state, data_key, train_key, epoch)
            per_step = jax.device_get(per_step)
            seconds = time.perf_counter() - tick
            faults.fault_point("epoch_end")  # the tests' place for a kill or a signal
            # A signal stops every process at this epoch, wherever it was delivered.
            stopping = parallel.any_process(stop["signal"] is not None)
            record = book.after_epoch(
                lambda s=state: s, per_step, first_step, epoch, seconds, stopping
            )
            result.stopped_early = progress.stopped_early
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.2f}", ex_s=f"{record['examples_per_s']:.0f}")
            cadence = (epoch + 1) % every == 0 or epoch + 1 == cfg.train.num_epochs
            if bar.disable and (cadence or epoch == first_epoch or stopping):
                log.info(
                    "epoch %d/%d step %d: loss %.3f, %.0f examples/s",
                    epoch + 1,
                    cfg.train.num_epochs,
                    record["step"],
                    record["loss"],
                    record["examples_per_s"],
                )
            if stopping:
                reason = (
                    f"{stop['signal']} received"
                    if stop["signal"]
                    else "another process received a signal"
                )
                log.warning(
                    "%s: saved step %d (epoch %d); rerun the same command to resume",
                    reason,
                    record["step"],
                    epoch + 1,
                )
                result.interrupted, result.stop_signal = True, stop["signal"]
                break
            if result.stopped_early:
                log.info(
                    "early stopping: validation ELBO has not improved for %d evaluations",
                    cfg.train.early_stopping_patience,
                )
                break
    bar.close()

    result.state, result.epoch = state, progress.epoch
    if not result.interrupted:
        result.final_metrics = book.finish(state)
        log.info(
            "test ELBO %.3f nats (recon %.3f, kl %.3f)",
            result.final_metrics["elbo"],
            result.final_metrics["recon"],
            result.final_metrics["kl"],
        )
    book.close()
    result.traces = dict(s.programs.traces)
    return result
