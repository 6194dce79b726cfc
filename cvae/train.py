"""``train_and_evaluate(config, workdir)``: the training loop, read top to bottom.

Sections: config and workdir → mesh → data → model → optimizer and state → resume →
compiled programs → loop (train epoch, NaN guard, evaluate, log, checkpoint, early stop,
signals) → final test evaluation. Everything random is a function of (seed, epoch, step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import pathlib
import shutil
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from cvae import checkpoint, data, parallel, steps, writers
from cvae import config as config_lib
from cvae import model as model_lib

log = logging.getLogger("cvae")
EVAL_KEY_SEED = 0  # evaluation draws are fixed across runs so that scores are comparable


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the diverged state was not checkpointed."""


class ConfigMismatchError(ValueError):
    """The workdir holds a run whose config differs in a field that changes the experiment."""


@dataclasses.dataclass
class TrainResult:
    state: dict  # {"step", "params", "opt_state"}
    epoch: int
    interrupted: bool = False
    stopped_early: bool = False
    final_metrics: dict = dataclasses.field(default_factory=dict)
    traces: dict = dataclasses.field(default_factory=dict)  # compilations of each program


def prepare_workdir(config, workdir: pathlib.Path) -> None:
    """Refuses to resume a different experiment; honours train.overwrite; writes config.json.

    Every process reads the saved config before any process changes the workdir, so all of
    them take the same decision; only the primary one deletes and writes.
    """
    saved_path = workdir / "config.json"
    has_run = (workdir / "checkpoints").exists() or (workdir / "metrics.jsonl").exists()
    conflicts = []
    if saved_path.exists() and has_run:
        import json

        conflicts = config_lib.resume_conflicts(
            config_lib.flatten(json.loads(saved_path.read_text())), config_lib.flatten(config))
        if conflicts and not config.train.overwrite:
            raise ConfigMismatchError(
                f"{workdir} holds a run whose config differs in {', '.join(conflicts)}; use "
                "another --workdir, or set --config.train.overwrite=True to discard that run")
    parallel.barrier("workdir-read")
    if parallel.is_primary():
        if conflicts:
            log.warning("train.overwrite: discarding the run in %s (it differed in %s)",
                        workdir, ", ".join(conflicts))
            for name in ("checkpoints", "tb", "images", "metrics.jsonl", "eval.json"):
                target = workdir / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        writers.write_json_atomic(saved_path, config.to_dict())
    parallel.barrier("workdir-ready")


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


def evaluate_split(programs, params, padded, key) -> tuple[dict, np.ndarray]:
    """Mean ELBO terms over the real (unpadded) examples, and their posterior means."""
    images, labels, mask = padded
    out = jax.device_get(programs.evaluate(params, images, labels, key))
    valid = mask.reshape(-1)
    means = {k: float(np.mean(out[k].reshape(-1)[valid])) for k in ("elbo", "recon", "kl")}
    means["loss"] = -means["elbo"]
    return means, out["mean"].reshape((-1, out["mean"].shape[-1]))[valid]


def log_images(model, params, images01, labels, key, workdir, step, writer) -> None:
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
        writers.save_png(pathlib.Path(workdir) / "images" / f"{tag}_step{step:08d}.png", tiled)
        writer.image(tag, tiled, step)


def train_and_evaluate(config, workdir) -> TrainResult:
    # ------------------------------------------------------------ config and workdir
    config_lib.validate(config)
    cfg = config
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    prepare_workdir(cfg, workdir)

    # ----------------------------------------------------------------------- mesh
    mesh = parallel.make_mesh(cfg.train.num_devices)
    if cfg.train.batch_size % mesh.size:
        raise config_lib.ConfigError(
            f"train.batch_size = {cfg.train.batch_size} must be a multiple of the "
            f"{mesh.size} devices in the mesh (or set train.num_devices)")

    # ----------------------------------------------------------------------- data
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
    preprocess = data.Preprocessor(info.pixel_range[1], binarize, cfg.data.dequantize)
    class_table = None
    if cfg.data.class_balanced:
        if train_set.labels is None:
            raise config_lib.ConfigError("data.class_balanced = True needs labelled data")
        class_table = data.ClassTable.from_labels(train_set.labels, info.num_classes)

    # ---------------------------------------------------------------------- model
    model = model_lib.build_model(cfg.model, info.shape, info.num_classes,
                                  binary_data=cfg.data.binarize == "dynamic")
    model.likelihood.validate(train_set.images[:1000].astype(np.float32) / info.pixel_range[1])
    init_key, data_key, train_key = jax.random.split(jax.random.key(cfg.seed), 3)
    params = model_lib.init_params(model, init_key)

    # ----------------------------------------------------- optimizer and state
    steps_per_epoch = len(train_set) // cfg.train.batch_size
    tx = steps.make_optimizer(cfg.train, steps_per_epoch * cfg.train.num_epochs)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    state = parallel.replicate(state, mesh)

    # -------------------------------------------------------------------- resume
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", cfg.train.keep_checkpoints)
    record = {"epoch": 0, "best_elbo": -float("inf"), "evals_without_improvement": 0,
              "elapsed_s": 0.0}
    restored = ckpt.restore(jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state))
    if restored is not None:
        state, meta = restored
        record.update({k: meta[k] for k in record})
        if parallel.is_primary():
            writers.truncate_metrics(workdir / "metrics.jsonl", int(state["step"]))
        log.info("resumed from step %d (epoch %d) in %s", int(state["step"]), record["epoch"],
                 workdir)
    log.info("devices: %d × %s in %d process(es); parameters: %d (encoder %d, decoder %d); "
             "workdir: %s",
             mesh.size, jax.devices()[0].platform, jax.process_count(),
             model_lib.count_params(params),
             model_lib.count_params(params["encoder"]), model_lib.count_params(params["decoder"]),
             workdir)

    # ------------------------------------------------------- compiled programs
    programs = steps.build_programs(model=model, config=cfg, tx=tx, mesh=mesh,
                                    preprocess=preprocess, num_train=len(train_set),
                                    class_table=class_table)
    put = lambda x: parallel.replicate(x, mesh)
    train_images = put(train_set.images)
    train_labels = put(train_set.labels if train_set.labels is not None
                       else np.zeros(len(train_set), np.int32))
    eval_source = val_set if val_set is not None else train_set
    # Without a validation split, model selection evaluates on (a copy of) the training set.
    eval_split = "validation" if val_set is not None else "train_eval"

    def padded(ds):
        return steps.pad_for_evaluation(data.evaluation_images(ds, binarize), ds.labels,
                                        cfg.eval.batch_size, mesh.size)

    def on_devices(host_padded):
        images, labels, mask = host_padded
        return put(images), put(labels), mask

    eval_host = padded(eval_source)
    eval_padded = on_devices(eval_host)
    eval_key = put(jax.random.key(EVAL_KEY_SEED))
    data_key, train_key = put(data_key), put(train_key)
    grid = min(cfg.train.image_grid_size, len(eval_source))
    grid_images = data.to_unit_interval(eval_host[0].reshape((-1,) + info.shape)[:grid],
                                        data.evaluation_scale(eval_source, binarize))
    grid_labels = eval_host[1].reshape(-1)[:grid]

    # ---------------------------------------------------------------------- loop
    primary = parallel.is_primary()
    writer = writers.MetricsWriter(workdir, enabled=primary)
    result = TrainResult(state, record["epoch"])
    started = time.perf_counter() - record["elapsed_s"]
    bar = tqdm(total=cfg.train.num_epochs, initial=record["epoch"], unit="epoch",
               disable=not (primary and sys.stderr.isatty()), desc="train")
    with stop_requests() as stop:
        for epoch in range(record["epoch"], cfg.train.num_epochs):
            first_step = int(state["step"])
            tick = time.perf_counter()
            state, per_step = programs.train_epoch(state, train_images, train_labels, data_key,
                                                   train_key, epoch)
            per_step = jax.device_get(per_step)
            seconds = time.perf_counter() - tick
            bad = ~np.isfinite(per_step["loss"])
            if bad.any():
                raise TrainingDivergedError(
                    f"the loss became {per_step['loss'][bad.argmax()]} at step "
                    f"{first_step + int(bad.argmax())} (epoch {epoch + 1}); that state was not "
                    f"saved and the last checkpoint (step {ckpt.latest_step()}) is intact. "
                    f"Likely cause: train.learning_rate = {cfg.train.learning_rate:g} is too "
                    "high for this model; lower it or set train.grad_clip_norm")
            step = int(state["step"])
            record["epoch"] = epoch + 1
            record["elapsed_s"] = time.perf_counter() - started
            train_metrics = {k: float(np.mean(v)) for k, v in per_step.items()}
            throughput = steps_per_epoch * cfg.train.batch_size / seconds
            writer.write({"step": step, "epoch": epoch + 1, "split": "train", **train_metrics,
                          "examples_per_s": throughput, "elapsed_s": record["elapsed_s"]})
            # A signal stops every process at this epoch, wherever it was delivered.
            stopping = parallel.any_process(stop["signal"] is not None)
            bar.update(1)
            bar.set_postfix(loss=f"{train_metrics['loss']:.2f}", ex_s=f"{throughput:.0f}")
            if bar.disable:  # no terminal: plain log lines instead of the bar
                log.info("epoch %d/%d step %d: loss %.3f, %.0f examples/s", epoch + 1,
                         cfg.train.num_epochs, step, train_metrics["loss"], throughput)

            last = epoch + 1 == cfg.train.num_epochs
            improved = False
            if (epoch + 1) % cfg.eval.every_epochs == 0 or last or stopping:
                tick = time.perf_counter()
                eval_metrics, _ = evaluate_split(programs, state["params"], eval_padded,
                                                 eval_key)
                writer.write({"step": step, "epoch": epoch + 1, "split": eval_split,
                              **eval_metrics,
                              "examples_per_s": len(eval_source) / (time.perf_counter() - tick),
                              "elapsed_s": record["elapsed_s"]})
                if grid and primary:
                    log_images(model, jax.device_get(state["params"]), grid_images,
                               grid_labels, jax.random.key(cfg.seed), workdir, step, writer)
                improved = eval_metrics["elbo"] > record["best_elbo"]
                if improved:
                    record["best_elbo"], record["evals_without_improvement"] = \
                        eval_metrics["elbo"], 0
                else:
                    record["evals_without_improvement"] += 1
            patience = cfg.train.early_stopping_patience
            result.stopped_early = (patience > 0
                                    and record["evals_without_improvement"] >= patience)
            if ((epoch + 1) % cfg.train.checkpoint_every_epochs == 0 or last or improved
                    or stopping or result.stopped_early):
                ckpt.save(step, state, dict(record), best=improved)
            if stopping:
                reason = (f"{stop['signal']} received" if stop["signal"]
                          else "another process received a signal")
                log.warning("%s: saved step %d (epoch %d); rerun the same command to resume",
                            reason, step, epoch + 1)
                result.interrupted = True
                break
            if result.stopped_early:
                log.info("early stopping: validation ELBO has not improved for %d evaluations",
                         patience)
                break
    bar.close()

    # ------------------------------------------------------ final test evaluation
    result.state, result.epoch = state, record["epoch"]
    if not result.interrupted:
        test_metrics, _ = evaluate_split(programs, state["params"], on_devices(padded(test_set)),
                                         eval_key)
        writer.write({"step": int(state["step"]), "epoch": record["epoch"], "split": "test",
                      **test_metrics, "examples_per_s": 0.0,
                      "elapsed_s": time.perf_counter() - started})
        result.final_metrics = test_metrics
        log.info("test ELBO %.3f nats (recon %.3f, kl %.3f)", test_metrics["elbo"],
                 test_metrics["recon"], test_metrics["kl"])
    writer.close()
    ckpt.close()
    result.traces = dict(programs.traces)
    return result
