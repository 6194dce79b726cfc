"""Run bookkeeping: what happens on the host between compiled epochs — the NaN guard, the
train record, validation and model selection, image grids, early stopping, the checkpoint
policy and the final test score.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from cvae import evaluation, parallel
from cvae.models import objectives
from cvae.runs import checkpoint, writers
from cvae.runs.workdir import Workdir
from cvae.training import steps
from cvae.training.inputs import TrainingData
from cvae.training.setup import Progress, total_steps

log = logging.getLogger("cvae")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the diverged state was not checkpointed."""


def check_finite(losses: np.ndarray, first_step: int, epoch: int, last_saved, cfg) -> None:
    """The NaN guard: raises before a diverged state can be evaluated or saved."""
    bad = ~np.isfinite(losses)
    if bad.any():
        raise TrainingDivergedError(
            f"the loss became {losses[bad.argmax()]} at step {first_step + int(bad.argmax())} "
            f"(epoch {epoch + 1}); that state was not saved and "
            + (
                "nothing had been saved yet"
                if last_saved is None
                else f"the last checkpoint (step {last_saved}) is intact"
            )
            + ". Likely cause: train.learning_rate = "
            f"{cfg.train.learning_rate:g} is too high for this model; lower it or set "
            "train.grad_clip_norm"
        )


def should_checkpoint(cfg, epoch_done: int, *, improved: bool, stopping: bool) -> bool:
    """Save every ``checkpoint_every_epochs``, at the end, at a new best, before stopping."""
    return (
        epoch_done % cfg.train.checkpoint_every_epochs == 0
        or epoch_done == cfg.train.num_epochs
        or improved
        or stopping
    )


def recorded_terms(scores: dict) -> dict:
    """The ELBO terms an evaluation record keeps: "elbo", "recon", "kl" and, for a
    hierarchy, each layer's "kl_l"."""
    return {
        name: value
        for name, value in scores.items()
        if name in ("elbo", "recon", "kl") or name.startswith("kl_")
    }


def grid_images(model, params, images01, labels, key):
    """(reconstructions E[x|μ(x)], prior samples E[x|z]) of ``len(images01)`` images: the
    pure function that ``grid_program`` compiles once per model."""
    n = len(images01)
    labels = labels if model.num_classes else None
    posterior = model.apply({"params": params}, images01, labels, method=model.encode)
    recon = model.likelihood.mean(
        model.apply({"params": params}, posterior.mean, labels, method=model.decode)
    )
    z = model.apply({"params": params}, key, n, method=model.sample_prior)
    sample_labels = jnp.arange(n) % model.num_classes if model.num_classes else None
    samples = model.likelihood.mean(
        model.apply({"params": params}, z, sample_labels, method=model.decode)
    )
    return recon, samples


@functools.lru_cache(maxsize=32)
def grid_program(model):
    """``grid_images`` jitted for ``model``: cached, so the runs of equal models in one
    process (a notebook's, a test suite's) trace it once."""
    return jax.jit(functools.partial(grid_images, model))


def log_images(draw, params, images01, labels, key, workdir: Workdir, step, writer) -> None:
    """Reconstruction (top: data, bottom: reconstruction) and prior-sample PNG grids.

    ``draw`` is ``grid_images`` compiled for the run's model; ``params`` are host (numpy)
    copies, so the program runs on the local device only.
    """
    recon, samples = jax.device_get(draw(params, images01, labels, key))
    columns = int(np.ceil(np.sqrt(len(images01))))
    for tag, grid in (("reconstructions", np.concatenate([images01, recon])), ("samples", samples)):
        tiled = writers.image_grid(np.asarray(grid), columns)
        writers.save_png(workdir.image_path(tag, step), tiled)
        writer.image(tag, tiled, step)


class RunBook:
    """The host side of one run between its compiled epochs: the train record, validation
    and model selection, image grids, early stopping, checkpoints and the final test score.

    The single-run loop keeps one; ``cvae.training.population`` keeps one per member, so a member
    records exactly what its run alone would. ``state_of()`` arguments are callables that
    produce the run's state only when needed (a population slices out one member).
    """

    def __init__(
        self,
        cfg,
        workdir: Workdir,
        model,
        d: TrainingData,
        mesh,
        *,
        ckpt: checkpoint.Checkpointer,
        progress: Progress,
        name: str = "",
    ):
        self.cfg, self.workdir, self.model, self.data = cfg, workdir, model, d
        # A population member's log lines start with its name (its directory in the sweep).
        self.log_prefix = f"{name}: " if name else ""
        self.ckpt, self.progress = ckpt, progress
        self.eval_mesh = mesh
        self.learning_rate = steps.learning_rate(cfg.train, total_steps(cfg, d))
        self.examples_per_epoch = d.steps_per_epoch(cfg.train.batch_size) * cfg.train.batch_size
        self.primary = parallel.is_primary()
        self.writer = writers.MetricsWriter(workdir, enabled=self.primary)
        if progress.epoch == 0:
            self.writer.hparams(cfg)
        self.started = time.perf_counter() - progress.elapsed_s
        self.grid = min(cfg.train.image_grid_size, len(d.eval_set))
        self.draw_grids = grid_program(model)
        if self.primary:  # so that load_run needs no data to decode and sample
            workdir.write_data_info(dataclasses.asdict(d.info))

    def score(self, params, eval_set: evaluation.EvalSet) -> dict:
        return evaluation.evaluate(
            self.model,
            params,
            eval_set,
            batch_size=self.cfg.eval.batch_size,
            mesh=self.eval_mesh,
            code_l2=self.cfg.model.code_l2,
        )

    def after_epoch(
        self, state_of, per_step: dict, first_step: int, epoch: int, seconds: float, stopping: bool
    ) -> dict:
        """Everything after epoch ``epoch``'s compiled program; returns its train record.

        Raises TrainingDivergedError (before anything is written) when a loss is not finite.
        """
        cfg, progress = self.cfg, self.progress
        state_of = functools.cache(state_of)  # evaluation and checkpoint share one fetch
        check_finite(per_step["loss"], first_step, epoch, self.ckpt.latest_step(), cfg)
        step = first_step + len(per_step["loss"])
        progress.epoch, progress.elapsed_s = epoch + 1, time.perf_counter() - self.started
        stamp = {"step": step, "epoch": epoch + 1, "elapsed_s": progress.elapsed_s}
        record = {
            **stamp,
            "split": "train",
            **{k: float(np.mean(v, dtype=np.float64)) for k, v in per_step.items()},
            **({"skipped": int(np.sum(per_step["skipped"]))} if "skipped" in per_step else {}),
            "examples_per_s": self.examples_per_epoch / seconds,
            "learning_rate": float(self.learning_rate(step - 1)),
            "beta": float(
                objectives.kl_weight(step - 1, cfg.objective.beta, cfg.objective.kl_warmup_steps)
            ),
        }
        self.writer.write(record)
        self.warn_about_skips(record, len(per_step["loss"]), epoch)
        improved = False
        # A stop (a signal) saves without an evaluation of its own: the resumed run then
        # writes, selects and counts patience exactly as the run never stopped.
        if (epoch + 1) % cfg.eval.every_epochs == 0 or epoch + 1 == cfg.train.num_epochs:
            tick = time.perf_counter()
            state = state_of()
            scores = self.score(state["params"], self.data.eval_set)
            self.writer.write(
                {
                    **stamp,
                    "split": self.data.eval_split,
                    "loss": scores["loss"],
                    **recorded_terms(scores),
                    "examples_per_s": len(self.data.eval_set) / (time.perf_counter() - tick),
                }
            )
            if self.primary:
                log.info(
                    "%sepoch %d: %s ELBO %.3f nats (recon %.3f, KL %.3f; best so far %.3f)",
                    self.log_prefix,
                    epoch + 1,
                    self.data.eval_split,
                    scores["elbo"],
                    scores["recon"],
                    scores["kl"],
                    max(scores["elbo"], progress.best_elbo),
                )
            if self.grid and self.primary:
                images, labels = self.data.eval_set.first(self.grid)
                log_images(
                    self.draw_grids,
                    jax.device_get(state["params"]),
                    images,
                    labels,
                    jax.random.key(cfg.seed),
                    self.workdir,
                    step,
                    self.writer,
                )
            improved = progress.record_evaluation(scores["elbo"])
        progress.stopped_early = progress.patience_exhausted(cfg.train.early_stopping_patience)
        if should_checkpoint(
            cfg, epoch + 1, improved=improved, stopping=stopping or progress.stopped_early
        ):
            self.ckpt.save(step, state_of(), dataclasses.asdict(progress), best=improved)
        return record

    def warn_about_skips(self, record: dict, steps: int, epoch: int) -> None:
        """A warning when train.skip_grad_norm skipped more than 5% of an epoch's updates:
        a run that skips most of them stops moving (the failure users of very deep VAEs
        report), and only the metrics would show it."""
        skipped = record.get("skipped", 0)
        if self.primary and skipped > 0.05 * steps:
            log.warning(
                "%sepoch %d: %d of %d updates skipped (gradient norm above "
                "train.skip_grad_norm = %g; mean norm %.3g): if this persists the run stops "
                "learning; raise the threshold or lower train.learning_rate",
                self.log_prefix,
                epoch + 1,
                skipped,
                steps,
                self.cfg.train.skip_grad_norm,
                record["grad_norm"],
            )

    def finish(self, state) -> dict:
        """Scores the test split with the final params and writes the test record, unless
        that step's record is there (a rerun of a finished run writes nothing; every process
        still scores, as the evaluation is one program over all of them)."""
        scores = self.score(state["params"], self.data.test_set)
        test_metrics = {"loss": scores["loss"], **recorded_terms(scores)}
        step = int(state["step"])
        if self.primary and any(r["step"] == step for r in self.workdir.read_metrics("test")):
            return test_metrics
        self.writer.write(
            {
                "step": int(state["step"]),
                "epoch": self.progress.epoch,
                "split": "test",
                **test_metrics,
                "examples_per_s": 0.0,
                "elapsed_s": time.perf_counter() - self.started,
            }
        )
        return test_metrics

    def close(self) -> None:
        self.writer.close()
        self.ckpt.close()
