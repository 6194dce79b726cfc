"""``train_and_evaluate(config, workdir)``: the training loop, read top to bottom.

The loop itself fits one screen; what it delegates has a name: ``setup`` (data, model,
optimizer, compiled epoch), ``resume`` (the newest readable checkpoint), ``check_finite``
(the NaN guard), ``Progress.record_evaluation`` (model selection and early stopping),
``should_checkpoint`` (the checkpoint policy) and ``stop_requests`` (signals).
Scores come from the one evaluation core, ``cvae.evaluation.evaluate``.
Everything random is a function of (seed, epoch, step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from cvae import checkpoint, data, evaluation, objectives, parallel, provenance, steps, writers
from cvae import config as config_lib
from cvae import model as model_lib
from cvae.workdir import Workdir, WorkdirLockedError, as_workdir

log = logging.getLogger("cvae")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the diverged state was not checkpointed."""


class ConfigMismatchError(ValueError):
    """The workdir holds a run whose config differs in a field that changes the experiment."""


@dataclasses.dataclass
class Progress:
    """Where a run stands between epochs; saved with every checkpoint as its ``meta``."""

    epoch: int = 0  # epochs completed (the data position)
    best_elbo: float = -float("inf")  # best validation ELBO so far
    evals_without_improvement: int = 0
    elapsed_s: float = 0.0
    stopped_early: bool = False  # a rerun of an early-stopped run trains no further

    def record_evaluation(self, elbo: float) -> bool:
        """Model selection: True when ``elbo`` beats the best so far (a new best)."""
        if elbo > self.best_elbo:
            self.best_elbo, self.evals_without_improvement = elbo, 0
            return True
        self.evals_without_improvement += 1
        return False

    def patience_exhausted(self, patience: int) -> bool:
        """Early stopping: ``patience`` evaluations in a row without improvement (0 = off)."""
        return patience > 0 and self.evals_without_improvement >= patience


@dataclasses.dataclass
class TrainResult:
    """What ``train_and_evaluate`` returns: final state, progress, how it ended, test scores."""
    state: dict  # {"step", "params", "opt_state"}
    epoch: int
    interrupted: bool = False
    stopped_early: bool = False
    final_metrics: dict = dataclasses.field(default_factory=dict)
    traces: dict = dataclasses.field(default_factory=dict)  # compilations of each program


@dataclasses.dataclass
class Setup:
    """Everything the loop needs, built from the config before the first epoch."""

    mesh: jax.sharding.Mesh
    model: model_lib.VAE
    state: dict
    programs: steps.TrainPrograms
    train_data: tuple  # (images, labels) replicated on the mesh
    num_train: int
    eval_set: evaluation.EvalSet  # validation split, or the training split without one
    eval_split: str
    test_set: evaluation.EvalSet
    learning_rate: callable  # step → learning rate


def prepare_workdir(config, workdir: Workdir) -> None:
    """Refuses to resume a different experiment; honours train.overwrite; writes config.json.

    Every process reads the saved config before any process changes the workdir, so all of
    them take the same decision; only the primary one deletes and writes.
    """
    conflicts = []
    if workdir.config_path.exists() and workdir.has_run():
        conflicts = config_lib.resume_conflicts(config_lib.flatten(workdir.read_config_dict()),
                                                config_lib.flatten(config))
        if conflicts and not config.train.overwrite:
            raise ConfigMismatchError(
                f"{workdir.path} holds a run whose config differs in {', '.join(conflicts)}; "
                "use another --workdir, or set --config.train.overwrite=True to discard it")
    parallel.barrier("workdir-read")
    if parallel.is_primary():
        if conflicts:
            log.warning("train.overwrite: discarding the run in %s (it differed in %s)",
                        workdir.path, ", ".join(conflicts))
            workdir.clear_run()
        workdir.write_config(config)
        workdir.write_provenance(provenance.collect())
    parallel.barrier("workdir-ready")


def setup(cfg) -> Setup:
    """Mesh, data, model, optimizer state and the compiled epoch, in that order."""
    mesh = parallel.make_mesh(cfg.train.num_devices)
    if cfg.train.batch_size % mesh.size:
        raise config_lib.ConfigError(
            f"train.batch_size = {cfg.train.batch_size} must be a multiple of the "
            f"{mesh.size} devices in the mesh (or set train.num_devices)")
    full_train = data.load(cfg.data.name, "train", cfg.data.data_dir)
    test_set = data.load(cfg.data.name, "test", cfg.data.data_dir)
    train_set, val_set = data.split_validation(full_train, cfg.data.validation_size)
    info = train_set.info
    if cfg.train.batch_size > len(train_set):
        raise config_lib.ConfigError(
            f"train.batch_size = {cfg.train.batch_size} exceeds the {len(train_set)} "
            "training examples; choose a smaller batch")
    data.check_fits_on_device(train_set, cfg.data.max_device_bytes)
    binarize = cfg.data.binarize == "dynamic"
    class_table = None
    if cfg.data.class_balanced:
        if train_set.labels is None:
            raise config_lib.ConfigError("data.class_balanced = True needs labelled data")
        class_table = data.ClassTable.from_labels(train_set.labels, info.num_classes)

    model = model_lib.build_model(cfg.model, info.shape, info.num_classes, binary_data=binarize)
    model.likelihood.validate(train_set.images[:1000].astype(np.float32) / info.pixel_range[1])
    init_key, _, _ = jax.random.split(jax.random.key(cfg.seed), 3)
    params = model_lib.init_params(model, init_key)
    total_steps = len(train_set) // cfg.train.batch_size * cfg.train.num_epochs
    tx = steps.make_optimizer(cfg.train, total_steps)
    state = parallel.replicate({"step": jnp.zeros((), jnp.int32), "params": params,
                                "opt_state": tx.init(params)}, mesh)
    programs = steps.build_programs(
        model=model, config=cfg, tx=tx, mesh=mesh, num_train=len(train_set),
        preprocess=data.Preprocessor(info.pixel_range[1], binarize, cfg.data.dequantize),
        class_table=class_table)
    # Without a validation split, model selection evaluates on the training set.
    eval_source, eval_split = ((val_set, "validation") if val_set is not None
                               else (train_set, "train_eval"))
    return Setup(mesh, model, state, programs, steps.place_training_data(train_set, mesh),
                 len(train_set), evaluation.EvalSet.from_dataset(eval_source, binarize),
                 eval_split, evaluation.EvalSet.from_dataset(test_set, binarize),
                 steps.learning_rate(cfg.train, total_steps))


def resume(ckpt: checkpoint.Checkpointer, state, workdir: Workdir):
    """(state, Progress) of the newest readable checkpoint, or the fresh ones given."""
    restored = ckpt.restore(jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state))
    if restored is None:  # a fresh start; records of a run killed before its first save go
        if parallel.is_primary():
            workdir.truncate_metrics(0)
        return state, Progress()
    state, meta = restored
    progress = Progress(**{f.name: meta[f.name] for f in dataclasses.fields(Progress)
                           if f.name in meta})
    if parallel.is_primary():
        workdir.truncate_metrics(int(state["step"]))
    log.info("resumed from step %d (epoch %d) in %s", int(state["step"]), progress.epoch,
             workdir.path)
    return state, progress


def check_finite(losses: np.ndarray, first_step: int, epoch: int, last_saved, cfg) -> None:
    """The NaN guard: raises before a diverged state can be evaluated or saved."""
    bad = ~np.isfinite(losses)
    if bad.any():
        raise TrainingDivergedError(
            f"the loss became {losses[bad.argmax()]} at step {first_step + int(bad.argmax())} "
            f"(epoch {epoch + 1}); that state was not saved and the last checkpoint (step "
            f"{last_saved}) is intact. Likely cause: train.learning_rate = "
            f"{cfg.train.learning_rate:g} is too high for this model; lower it or set "
            "train.grad_clip_norm")


def should_checkpoint(cfg, epoch_done: int, *, improved: bool, stopping: bool) -> bool:
    """Save every ``checkpoint_every_epochs``, at the end, at a new best, before stopping."""
    return (epoch_done % cfg.train.checkpoint_every_epochs == 0
            or epoch_done == cfg.train.num_epochs or improved or stopping)


@contextlib.contextmanager
def stop_requests():
    """Turns SIGINT/SIGTERM into a flag checked between epochs (a save, then a clean exit)."""
    flag = {"signal": None}

    def handler(signum, _frame):
        flag["signal"] = signal.Signals(signum).name

    previous = {}
    with contextlib.suppress(ValueError):  # not the main thread: no handlers, no flag
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def log_images(model, params, images01, labels, key, workdir: Workdir, step, writer) -> None:
    """Reconstruction (top: data, bottom: reconstruction) and prior-sample PNG grids.

    ``params`` are host (numpy) copies: these few eager ops run on the local device only.
    """
    n = len(images01)
    labels = labels if model.num_classes else None
    posterior = model.apply({"params": params}, images01, labels, method=model.encode)
    recon = model.likelihood.mean(model.apply({"params": params}, posterior.mean, labels,
                                              method=model.decode))
    z = jax.random.normal(key, (n, posterior.mean.shape[-1]))
    sample_labels = jnp.arange(n) % model.num_classes if model.num_classes else None
    samples = model.likelihood.mean(model.apply({"params": params}, z, sample_labels,
                                                method=model.decode))
    columns = int(np.ceil(np.sqrt(n)))
    for tag, grid in (("reconstructions", np.concatenate([images01, recon])),
                      ("samples", samples)):
        tiled = writers.image_grid(np.asarray(grid), columns)
        writers.save_png(workdir.image_path(tag, step), tiled)
        writer.image(tag, tiled, step)


def train_and_evaluate(config, workdir) -> TrainResult:
    """Trains ``config`` in ``workdir`` (resuming what is there) and scores the test split.

    Per epoch: one compiled epoch, the NaN guard, a train record; every
    ``eval.every_epochs`` a validation score, image grids and model selection; a checkpoint
    by ``should_checkpoint``; early stopping and SIGINT/SIGTERM end the loop after a save.
    """
    cfg, workdir = config, as_workdir(workdir)
    config_lib.validate(cfg)
    workdir.path.mkdir(parents=True, exist_ok=True)
    with one_writer(workdir):
        return _train(cfg, workdir)


@contextlib.contextmanager
def one_writer(workdir: Workdir):
    """Holds the workdir's lock (taken by the primary process) for the whole run; every
    process fails together, with the holder named, when another run holds it."""
    error = None
    if parallel.is_primary():
        try:
            workdir.acquire_lock()
        except WorkdirLockedError as err:
            error = err
    if parallel.any_process(error is not None):
        raise error or WorkdirLockedError(f"{workdir.path} is in use by another run")
    try:
        yield
    finally:
        if parallel.is_primary():
            workdir.release_lock()


def _train(cfg, workdir: Workdir) -> TrainResult:
    """The body of ``train_and_evaluate``, run while holding the workdir's lock."""
    prepare_workdir(cfg, workdir)
    s = setup(cfg)
    ckpt = checkpoint.Checkpointer(workdir.checkpoints, cfg.train.keep_checkpoints)
    state, progress = resume(ckpt, s.state, workdir)
    log.info("devices: %d × %s in %d process(es); parameters: %d (encoder %d, decoder %d); "
             "workdir: %s", s.mesh.size, jax.devices()[0].platform, jax.process_count(),
             model_lib.count_params(state["params"]),
             model_lib.count_params(state["params"]["encoder"]),
             model_lib.count_params(state["params"]["decoder"]), workdir.path)
    _, data_key, train_key = parallel.replicate(
        tuple(jax.random.split(jax.random.key(cfg.seed), 3)), s.mesh)
    score = lambda params, eval_set: evaluation.evaluate(
        s.model, params, eval_set, batch_size=cfg.eval.batch_size, mesh=s.mesh,
        code_l2=cfg.model.code_l2)
    grid = min(cfg.train.image_grid_size, len(s.eval_set))
    grid_labels = None if s.eval_set.labels is None else s.eval_set.labels[:grid]
    examples_per_epoch = s.num_train // cfg.train.batch_size * cfg.train.batch_size

    primary = parallel.is_primary()
    writer = writers.MetricsWriter(workdir, enabled=primary)
    if progress.epoch == 0:
        writer.hparams(cfg)
    result = TrainResult(state, progress.epoch, stopped_early=progress.stopped_early)
    started = time.perf_counter() - progress.elapsed_s
    bar = tqdm(total=cfg.train.num_epochs, initial=progress.epoch, unit="epoch",
               disable=not (primary and sys.stderr.isatty()), desc="train")
    first_epoch = cfg.train.num_epochs if progress.stopped_early else progress.epoch
    with stop_requests() as stop:
        for epoch in range(first_epoch, cfg.train.num_epochs):
            first_step, tick = int(state["step"]), time.perf_counter()
            state, per_step = s.programs.train_epoch(state, *s.train_data, data_key,
                                                     train_key, epoch)
            per_step = jax.device_get(per_step)
            seconds = time.perf_counter() - tick
            check_finite(per_step["loss"], first_step, epoch, ckpt.latest_step(), cfg)
            step, progress.epoch = int(state["step"]), epoch + 1
            progress.elapsed_s = time.perf_counter() - started
            stamp = {"step": step, "epoch": epoch + 1, "elapsed_s": progress.elapsed_s}
            train_metrics = {k: float(np.mean(v)) for k, v in per_step.items()}
            writer.write({**stamp, "split": "train", **train_metrics,
                          "examples_per_s": examples_per_epoch / seconds,
                          "learning_rate": float(s.learning_rate(step - 1)),
                          "beta": float(objectives.kl_weight(step - 1, cfg.objective.beta,
                                                             cfg.objective.kl_warmup_steps))})
            # A signal stops every process at this epoch, wherever it was delivered.
            stopping = parallel.any_process(stop["signal"] is not None)
            bar.update(1)
            bar.set_postfix(loss=f"{train_metrics['loss']:.2f}",
                            ex_s=f"{examples_per_epoch / seconds:.0f}")
            if bar.disable:  # no terminal: plain log lines instead of the bar
                log.info("epoch %d/%d step %d: loss %.3f, %.0f examples/s", epoch + 1,
                         cfg.train.num_epochs, step, train_metrics["loss"],
                         examples_per_epoch / seconds)

            improved = False
            if ((epoch + 1) % cfg.eval.every_epochs == 0 or epoch + 1 == cfg.train.num_epochs
                    or stopping):
                tick = time.perf_counter()
                scores = score(state["params"], s.eval_set)
                writer.write({**stamp, "split": s.eval_split, "loss": scores["loss"],
                              **{k: scores[k] for k in ("elbo", "recon", "kl")},
                              "examples_per_s": len(s.eval_set) / (time.perf_counter() - tick)})
                if grid and primary:
                    log_images(s.model, jax.device_get(state["params"]),
                               s.eval_set.unit_interval(grid), grid_labels,
                               jax.random.key(cfg.seed), workdir, step, writer)
                improved = progress.record_evaluation(scores["elbo"])
            progress.stopped_early = progress.patience_exhausted(
                cfg.train.early_stopping_patience)
            result.stopped_early = progress.stopped_early
            if should_checkpoint(cfg, epoch + 1, improved=improved,
                                 stopping=stopping or result.stopped_early):
                ckpt.save(step, state, dataclasses.asdict(progress), best=improved)
            if stopping:
                reason = (f"{stop['signal']} received" if stop["signal"]
                          else "another process received a signal")
                log.warning("%s: saved step %d (epoch %d); rerun the same command to resume",
                            reason, step, epoch + 1)
                result.interrupted = True
                break
            if result.stopped_early:
                log.info("early stopping: validation ELBO has not improved for %d evaluations",
                         cfg.train.early_stopping_patience)
                break
    bar.close()

    result.state, result.epoch = state, progress.epoch
    if not result.interrupted:
        scores = score(state["params"], s.test_set)
        test_metrics = {"loss": scores["loss"], **{k: scores[k] for k in ("elbo", "recon", "kl")}}
        writer.write({"step": int(state["step"]), "epoch": progress.epoch, "split": "test",
                      **test_metrics, "examples_per_s": 0.0,
                      "elapsed_s": time.perf_counter() - started})
        result.final_metrics = test_metrics
        log.info("test ELBO %.3f nats (recon %.3f, kl %.3f)", test_metrics["elbo"],
                 test_metrics["recon"], test_metrics["kl"])
    writer.close()
    ckpt.close()
    result.traces = dict(s.programs.traces)
    return result
