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
import functools
import logging
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from cvae import (
    checkpoint,
    data,
    evaluation,
    objectives,
    parallel,
    provenance,
    steps,
    stream,
    writers,
)
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
    """Everything the single-run loop needs, built from the config before the first epoch."""

    mesh: jax.sharding.Mesh
    model: model_lib.VAE
    state: dict
    programs: steps.TrainPrograms
    train_data: tuple | None  # (images, labels) replicated on the mesh; None when streamed
    data: TrainingData
    stream: stream.Stream | None = None  # the streaming pipeline's reader

    def run_epoch(self, state, data_key, train_key, epoch: int):
        """Epoch ``epoch``: (state, per-step scalars) through the run's pipeline — one
        compiled epoch over on-device data, or the streamed chunks of the same batches."""
        if self.stream is None:
            return self.programs.train_epoch(state, *self.train_data, data_key, train_key,
                                             epoch)
        order = self.epoch_order(data_key, epoch)
        per_chunk = []
        for images, labels in self.stream.chunks(order):
            batch = order.shape[1]
            state, scalars = self.programs.train_epoch(
                state, parallel.place_local_rows(images, self.mesh, batch),
                parallel.place_local_rows(labels, self.mesh, batch), train_key)
            if per_chunk:  # back-pressure: dispatch is asynchronous, and without this wait
                jax.block_until_ready(per_chunk[-1])  # every chunk read would queue, with
            per_chunk.append(scalars)  # its images, behind the device: memory ∝ the split
        return state, jax.tree_util.tree_map(lambda *x: jnp.concatenate(x), *per_chunk)

    @functools.cached_property
    def epoch_order(self):
        """``(data_key, epoch) →`` the epoch's (steps, batch) example indices on the host:
        the on-device path's own function, so both paths read the same batches."""
        indices = jax.jit(steps.make_epoch_indices(
            num_train=self.data.num_train, batch_size=self.data.batch_size, class_table=None))
        return lambda key, epoch: np.asarray(indices(key, epoch).addressable_data(0))


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


@dataclasses.dataclass
class TrainingData:
    """The splits of a run, checked against its config, ready for the compiled epoch."""

    train_set: data.Dataset | None  # in host memory (the device pipeline); None if streamed
    eval_set: evaluation.EvalSet  # validation split, or the training split without one
    eval_split: str
    test_set: evaluation.EvalSet
    class_table: data.ClassTable | None
    preprocess: data.Preprocessor
    train_source: object = None  # the stream pipeline's source (cvae.stream)
    batch_size: int = 0

    @property
    def pipeline(self) -> str:
        return "device" if self.train_set is not None else "stream"

    @property
    def info(self) -> data.DatasetInfo:
        return (self.train_set if self.train_set is not None else self.train_source).info

    @property
    def num_train(self) -> int:
        return len(self.train_set if self.train_set is not None else self.train_source)

    def steps_per_epoch(self, batch_size: int) -> int:
        return self.num_train // batch_size

    def first_images(self, n: int) -> np.ndarray:
        """Up to ``n`` raw training images (for checks of the data against the model)."""
        if self.train_set is not None:
            return self.train_set.images[:n]
        return self.train_source.read(np.arange(min(n, self.num_train)))[0]


def load_training_data(cfg, num_devices: int) -> TrainingData:
    """Loads and checks the splits of ``cfg.data`` for batches split over ``num_devices``."""
    if cfg.train.batch_size % num_devices:
        raise config_lib.ConfigError(
            f"train.batch_size = {cfg.train.batch_size} must be a multiple of the "
            f"{num_devices} devices in the mesh (or set train.num_devices)")
    source = stream.open_source(cfg.data, "train")
    pipeline = choose_pipeline(cfg.data, source)
    # Evaluation reads its splits batch by batch from their sources, whichever pipeline
    # trains: neither the test nor a validation split is ever held whole.
    test_source = stream.role_source(cfg.data, "test")
    val_source = (stream.role_source(cfg.data, "validation") if cfg.data.validation_split
                  else None)
    if pipeline == "device":  # the whole split in host memory (TFDS: decoded once, cached)
        train_set, carved = data.split_validation(stream.in_memory(source, cfg.data),
                                                  cfg.data.validation_size)
        train_source = None
        carved = None if carved is None else stream.ArraySource(carved)
    else:  # the same examples, read as training goes
        source = stream.streaming_source(source, cfg.data)
        train_set, train_source, carved = None, source, None
        if cfg.data.validation_size:
            train_idx, val_idx = data.validation_indices(len(source), cfg.data.validation_size)
            train_source = stream.Subset(source, train_idx)
            carved = stream.Subset(source, val_idx)
    val_source = val_source if val_source is not None else carved
    num_train = len(train_set if train_set is not None else train_source)
    info = source.info
    if cfg.train.batch_size > num_train:
        raise config_lib.ConfigError(
            f"train.batch_size = {cfg.train.batch_size} exceeds the {num_train} "
            "training examples; choose a smaller batch")
    binarize = cfg.data.binarize == "dynamic"
    class_table = None
    if cfg.data.class_balanced and train_set is None:
        raise config_lib.ConfigError(
            "data.class_balanced = True is not supported by the streaming pipeline yet; "
            "set data.pipeline='device' (raise data.max_device_bytes if needed)")
    if cfg.data.class_balanced:
        if train_set.labels is None:
            raise config_lib.ConfigError("data.class_balanced = True needs labelled data")
        class_table = data.ClassTable.from_labels(train_set.labels, info.num_classes)
    # Without a validation split, model selection evaluates on the training set (when
    # streamed, on its first 10,000 examples).
    if val_source is not None:
        eval_source, eval_split = val_source, "validation"
    elif train_set is not None:
        eval_source, eval_split = stream.ArraySource(train_set), "train_eval"
    else:
        eval_source = stream.Subset(train_source, np.arange(min(num_train, 10000)))
        eval_split = "train_eval"
    return TrainingData(train_set, evaluation.EvalSet(eval_source, binarize), eval_split,
                        evaluation.EvalSet(test_source, binarize),
                        class_table,
                        data.Preprocessor(info.pixel_range[1], binarize, cfg.data.dequantize),
                        train_source, cfg.train.batch_size)


def choose_pipeline(data_cfg, source) -> str:
    """``data.pipeline``, with "auto" resolved by the split's size against
    ``data.max_device_bytes``; "device" refuses a split over that limit."""
    nbytes = stream.split_nbytes(source)
    fits = nbytes <= data_cfg.max_device_bytes
    if data_cfg.pipeline == "device" and not fits:
        raise config_lib.ConfigError(
            f"{source.info.name} needs {nbytes / 2**30:.2f} GiB on the device, over "
            f"data.max_device_bytes = {data_cfg.max_device_bytes / 2**30:.2f} GiB: set "
            "data.pipeline='stream' (or 'auto') to read it as training goes, or raise the "
            "limit if the device has room")
    if data_cfg.pipeline == "auto":
        pipeline = "device" if fits else "stream"
        if pipeline == "stream":
            log.info("data: %.2f GiB of training images exceed data.max_device_bytes "
                     "(%.2f GiB): streaming them", nbytes / 2**30,
                     data_cfg.max_device_bytes / 2**30)
        return pipeline
    return data_cfg.pipeline


def build_model(cfg, d: TrainingData) -> model_lib.VAE:
    """The model of ``cfg`` for the data ``d``, its likelihood checked against the data."""
    info = d.info
    model = model_lib.build_model(cfg.model, info.shape, info.num_classes,
                                  binary_data=d.preprocess.binarize)
    model.likelihood.validate(d.first_images(1000).astype(np.float32) / info.pixel_range[1])
    return model


def run_keys(seed: int):
    """(init, data, train) keys of a run: everything random in training descends from them."""
    return tuple(jax.random.split(jax.random.key(seed), 3))


def initial_state(model, cfg, total_steps: int) -> dict:
    """The step-0 state of ``cfg``'s seed, on the host: {"step", "params", "opt_state"}."""
    init_key, _, _ = run_keys(cfg.seed)
    params = model_lib.init_params(model, init_key)
    tx = steps.make_optimizer(cfg.train, total_steps)
    return jax.device_get({"step": jnp.zeros((), jnp.int32), "params": params,
                           "opt_state": tx.init(params)})


def total_steps(cfg, d: TrainingData) -> int:
    return d.steps_per_epoch(cfg.train.batch_size) * cfg.train.num_epochs


def setup(cfg) -> Setup:
    """Mesh, data, model, optimizer state and the compiled epoch, in that order."""
    mesh = parallel.make_mesh(cfg.train.num_devices)
    d = load_training_data(cfg, mesh.size)
    model = build_model(cfg, d)
    steps_total = total_steps(cfg, d)
    state = parallel.replicate(initial_state(model, cfg, steps_total), mesh)
    if d.pipeline == "stream":
        programs = steps.build_stream_program(model=model, config=cfg, mesh=mesh,
                                              preprocess=d.preprocess, total_steps=steps_total)
        reader = stream.Stream(d.train_source, cfg.data.stream_chunk_steps,
                               workers=cfg.data.stream_workers,
                               rows=parallel.process_rows(cfg.train.batch_size))
        return Setup(mesh, model, state, programs, None, d, reader)
    programs = steps.build_programs(
        model=model, config=cfg, mesh=mesh, num_train=d.num_train,
        total_steps=steps_total, preprocess=d.preprocess, class_table=d.class_table)
    return Setup(mesh, model, state, programs, steps.place_training_data(d.train_set, mesh), d)


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
            f"(epoch {epoch + 1}); that state was not saved and "
            + ("nothing had been saved yet" if last_saved is None else
               f"the last checkpoint (step {last_saved}) is intact")
            + ". Likely cause: train.learning_rate = "
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
    z = model.apply({"params": params}, key, n, method=model.sample_prior)
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


class RunBook:
    """The host side of one run between its compiled epochs: the train record, validation
    and model selection, image grids, early stopping, checkpoints and the final test score.

    The single-run loop keeps one; ``cvae.population`` keeps one per member, so a member
    records exactly what its run alone would. ``state_of()`` arguments are callables that
    produce the run's state only when needed (a population slices out one member).
    """

    def __init__(self, cfg, workdir: Workdir, model, d: TrainingData, mesh, *,
                 ckpt: checkpoint.Checkpointer, progress: Progress):
        self.cfg, self.workdir, self.model, self.data = cfg, workdir, model, d
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

    def score(self, params, eval_set: evaluation.EvalSet) -> dict:
        return evaluation.evaluate(self.model, params, eval_set,
                                   batch_size=self.cfg.eval.batch_size, mesh=self.eval_mesh,
                                   code_l2=self.cfg.model.code_l2)

    def after_epoch(self, state_of, per_step: dict, first_step: int, epoch: int,
                    seconds: float, stopping: bool) -> dict:
        """Everything after epoch ``epoch``'s compiled program; returns its train record.

        Raises TrainingDivergedError (before anything is written) when a loss is not finite.
        """
        cfg, progress = self.cfg, self.progress
        state_of = functools.cache(state_of)  # evaluation and checkpoint share one fetch
        check_finite(per_step["loss"], first_step, epoch, self.ckpt.latest_step(), cfg)
        step = first_step + len(per_step["loss"])
        progress.epoch, progress.elapsed_s = epoch + 1, time.perf_counter() - self.started
        stamp = {"step": step, "epoch": epoch + 1, "elapsed_s": progress.elapsed_s}
        record = {**stamp, "split": "train",
                  **{k: float(np.mean(v, dtype=np.float64)) for k, v in per_step.items()},
                  "examples_per_s": self.examples_per_epoch / seconds,
                  "learning_rate": float(self.learning_rate(step - 1)),
                  "beta": float(objectives.kl_weight(step - 1, cfg.objective.beta,
                                                     cfg.objective.kl_warmup_steps))}
        self.writer.write(record)
        improved = False
        if ((epoch + 1) % cfg.eval.every_epochs == 0 or epoch + 1 == cfg.train.num_epochs
                or stopping):
            tick = time.perf_counter()
            state = state_of()
            scores = self.score(state["params"], self.data.eval_set)
            self.writer.write({**stamp, "split": self.data.eval_split, "loss": scores["loss"],
                               **{k: scores[k] for k in ("elbo", "recon", "kl")},
                               "examples_per_s": len(self.data.eval_set)
                               / (time.perf_counter() - tick)})
            if self.grid and self.primary:
                images, labels = self.data.eval_set.first(self.grid)
                log_images(self.model, jax.device_get(state["params"]), images, labels,
                           jax.random.key(cfg.seed), self.workdir, step, self.writer)
            improved = progress.record_evaluation(scores["elbo"])
        progress.stopped_early = progress.patience_exhausted(cfg.train.early_stopping_patience)
        if should_checkpoint(cfg, epoch + 1, improved=improved,
                             stopping=stopping or progress.stopped_early):
            self.ckpt.save(step, state_of(), dataclasses.asdict(progress), best=improved)
        return record

    def finish(self, state) -> dict:
        """Scores the test split with the final params and writes the test record."""
        scores = self.score(state["params"], self.data.test_set)
        test_metrics = {"loss": scores["loss"], **{k: scores[k] for k in ("elbo", "recon", "kl")}}
        self.writer.write({"step": int(state["step"]), "epoch": self.progress.epoch,
                           "split": "test", **test_metrics, "examples_per_s": 0.0,
                           "elapsed_s": time.perf_counter() - self.started})
        return test_metrics

    def close(self) -> None:
        self.writer.close()
        self.ckpt.close()


def log_setup(mesh, params, workdir: Workdir) -> None:
    log.info("devices: %d × %s in %d process(es); parameters: %d (encoder %d, decoder %d); "
             "workdir: %s", mesh.size, jax.devices()[0].platform, jax.process_count(),
             model_lib.count_params(params), model_lib.count_params(params["encoder"]),
             model_lib.count_params(params["decoder"]), workdir)


def _train(cfg, workdir: Workdir) -> TrainResult:
    """The body of ``train_and_evaluate``, run while holding the workdir's lock."""
    prepare_workdir(cfg, workdir)
    s = setup(cfg)
    ckpt = checkpoint.Checkpointer(workdir.checkpoints, cfg.train.keep_checkpoints)
    state, progress = resume(ckpt, s.state, workdir)
    log_setup(s.mesh, state["params"], workdir.path)
    _, data_key, train_key = parallel.replicate(run_keys(cfg.seed), s.mesh)
    book = RunBook(cfg, workdir, s.model, s.data, s.mesh, ckpt=ckpt, progress=progress)
    result = TrainResult(state, progress.epoch, stopped_early=progress.stopped_early)
    bar = tqdm(total=cfg.train.num_epochs, initial=progress.epoch, unit="epoch",
               disable=not (book.primary and sys.stderr.isatty()), desc="train")
    first_epoch = cfg.train.num_epochs if progress.stopped_early else progress.epoch
    with stop_requests() as stop:
        for epoch in range(first_epoch, cfg.train.num_epochs):
            first_step, tick = int(state["step"]), time.perf_counter()
            state, per_step = s.run_epoch(state, data_key, train_key, epoch)
            per_step = jax.device_get(per_step)
            seconds = time.perf_counter() - tick
            # A signal stops every process at this epoch, wherever it was delivered.
            stopping = parallel.any_process(stop["signal"] is not None)
            record = book.after_epoch(lambda s=state: s, per_step, first_step, epoch, seconds,
                                      stopping)
            result.stopped_early = progress.stopped_early
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.2f}", ex_s=f"{record['examples_per_s']:.0f}")
            if bar.disable:  # no terminal: plain log lines instead of the bar
                log.info("epoch %d/%d step %d: loss %.3f, %.0f examples/s", epoch + 1,
                         cfg.train.num_epochs, record["step"], record["loss"],
                         record["examples_per_s"])
            if stopping:
                reason = (f"{stop['signal']} received" if stop["signal"]
                          else "another process received a signal")
                log.warning("%s: saved step %d (epoch %d); rerun the same command to resume",
                            reason, record["step"], epoch + 1)
                result.interrupted = True
                break
            if result.stopped_early:
                log.info("early stopping: validation ELBO has not improved for %d evaluations",
                         cfg.train.early_stopping_patience)
                break
    bar.close()

    result.state, result.epoch = state, progress.epoch
    if not result.interrupted:
        result.final_metrics = book.finish(state)
        log.info("test ELBO %.3f nats (recon %.3f, kl %.3f)", result.final_metrics["elbo"],
                 result.final_metrics["recon"], result.final_metrics["kl"])
    book.close()
    result.traces = dict(s.programs.traces)
    return result
