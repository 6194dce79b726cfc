"""Setup and resume: from a config to everything the first epoch needs (mesh, data, model,
optimizer state, the compiled epoch), and from a workdir to the newest readable checkpoint.

Everything random in training descends from the run's three keys (``run_keys``): the
initial parameters, the order of the examples and the draws of each step.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cvae import config as config_lib
from cvae import data, parallel
from cvae.data import Stream
from cvae.models import vae as model_lib
from cvae.runs import checkpoint, provenance
from cvae.runs.workdir import Workdir
from cvae.training import steps
from cvae.training.inputs import TrainingData, load_training_data

log = logging.getLogger("cvae")


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
class Setup:
    """Everything the single-run loop needs, built from the config before the first epoch."""

    mesh: jax.sharding.Mesh
    model: nn.Module  # any model of cvae.models.protocol
    state: dict
    programs: steps.TrainPrograms
    train_data: tuple | None  # (images, labels) replicated on the mesh; None when streamed
    data: TrainingData
    stream: Stream | None = None  # the streaming pipeline's reader

    def run_epoch(self, state, data_key, train_key, epoch: int):
        """Epoch ``epoch``: (state, per-step scalars) through the run's pipeline — one
        compiled epoch over on-device data, or the streamed chunks of the same batches."""
        if self.stream is None:
            assert self.train_data is not None  # the device pipeline's arrays
            return self.programs.train_epoch(state, *self.train_data, data_key, train_key, epoch)
        order = self.epoch_order(data_key, epoch)
        per_chunk: list[dict] = []
        for images, labels in self.stream.chunks(order):
            batch = order.shape[1]
            state, scalars = self.programs.train_epoch(
                state,
                parallel.place_local_rows(images, self.mesh, batch),
                parallel.place_local_rows(labels, self.mesh, batch),
                train_key,
            )
            if per_chunk:  # back-pressure: dispatch is asynchronous, and without this wait
                jax.block_until_ready(per_chunk[-1])  # every chunk read would queue, with
            per_chunk.append(scalars)  # its images, behind the device: memory ∝ the split
        return state, jax.tree_util.tree_map(lambda *x: jnp.concatenate(x), *per_chunk)

    @functools.cached_property
    def epoch_order(self):
        """``(data_key, epoch) →`` the epoch's (steps, batch) example indices on the host:
        the on-device path's own function, so both paths read the same batches."""
        indices = jax.jit(
            steps.make_epoch_indices(
                num_train=self.data.num_train, batch_size=self.data.batch_size, class_table=None
            )
        )
        return lambda key, epoch: np.asarray(indices(key, epoch).addressable_data(0))


# Fields whose change makes a saved run a different experiment: resuming across them would
# silently mix two runs, so the trainer refuses unless train.overwrite is set.
RESUME_CRITICAL_PREFIXES = ("seed", "data.", "model.", "objective.", "train.batch_size")


def resume_conflicts(saved: dict, current: dict) -> list[str]:
    """Resume-critical fields that differ between a saved config and the current one.

    Args:
      saved: the saved config, flattened (fields it lacks take today's defaults).
      current: the current config, flattened.

    Returns:
      Their dotted names, sorted (seed, data, model, objective and batch size fields).
    """
    saved = {**config_lib.flatten(config_lib.base_config()), **saved}  # fields added since
    names = sorted(set(saved) | set(current))
    return [
        n
        for n in names
        if any(n == p or n.startswith(p) for p in RESUME_CRITICAL_PREFIXES)
        and saved.get(n) != current.get(n)
    ]


def state_structure_changes(saved: dict, current: dict) -> list[str]:
    """Training fields whose change would change what a checkpoint holds (the optimizer's
    state, the weights' average): the saved state could not be restored into the new one.

    Args:
      saved: the saved config, flattened, with today's defaults for the fields it lacks.
      current: the current config, flattened.

    Returns:
      Their dotted names, sorted.
    """

    def on(config, name):
        return float(config.get(name) or 0) > 0

    differs = {
        "train.optimizer": saved.get("train.optimizer") != current.get("train.optimizer"),
        "train.lr_schedule": saved.get("train.lr_schedule") != current.get("train.lr_schedule"),
        "train.grad_clip_norm": on(saved, "train.grad_clip_norm")
        != on(current, "train.grad_clip_norm"),
        "train.ema_decay": on(saved, "train.ema_decay") != on(current, "train.ema_decay"),
        # Adam's decay is a transformation of its own; AdamW's is a number
        "train.weight_decay": current.get("train.optimizer") == "adam"
        and on(saved, "train.weight_decay") != on(current, "train.weight_decay"),
    }
    return sorted(name for name, changed in differs.items() if changed)


def config_changes(saved: dict, current: dict) -> dict[str, list]:
    """Every field whose value differs between a saved config and the current one.

    Args:
      saved: the saved config, flattened, with today's defaults for the fields it lacks.
      current: the current config, flattened.

    Returns:
      {dotted name: [saved value, current value]}, sorted by name.
    """
    return {
        n: [saved.get(n), current.get(n)]
        for n in sorted(set(saved) | set(current))
        if saved.get(n) != current.get(n)
    }


def prepare_workdir(config, workdir: Workdir) -> dict[str, list]:
    """Refuses to resume a different experiment; honours train.overwrite; writes config.json
    for a new run.

    A resumed run's config.json is left as it is here: when the command changed fields that
    a run may change (the number of epochs, the learning rate, …), ``record_config_changes``
    records them once the resumed step is known. A rerun that changes nothing writes
    nothing.

    Every process reads the saved config before any process changes the workdir, so all of
    them take the same decision; only the primary one deletes and writes.

    Returns:
      The fields a resume changes, {name: [saved, current]}; empty for a new run.
    """
    conflicts: list[str] = []
    changes: dict[str, list] = {}
    resuming = workdir.config_path.exists() and workdir.has_checkpoint()
    if resuming:
        # fields added to the schema since the run was saved take today's defaults
        saved = {
            **config_lib.flatten(config_lib.base_config()),
            **config_lib.flatten(workdir.read_config_dict()),
        }
        current = config_lib.flatten(config)
        conflicts = resume_conflicts(saved, current) + state_structure_changes(saved, current)
        if conflicts and not config.train.overwrite:
            raise ConfigMismatchError(
                f"{workdir.path} holds a run whose config differs in {', '.join(conflicts)}; "
                "use another --workdir, or set --config.train.overwrite=True to discard it"
            )
        # train.overwrite only matters when there is something to discard
        changes = {
            n: v for n, v in config_changes(saved, current).items() if n != "train.overwrite"
        }
    parallel.barrier("workdir-read")
    if parallel.is_primary():
        if conflicts:
            log.warning(
                "train.overwrite: discarding the run in %s (it differed in %s)",
                workdir.path,
                ", ".join(conflicts),
            )
            workdir.clear_run()
            workdir.clear_config_history()
        if not resuming or conflicts:
            workdir.write_config(config)
            workdir.write_provenance(provenance.collect())
    parallel.barrier("workdir-ready")
    return {} if conflicts else changes


def record_config_changes(config, workdir: Workdir, changes: dict, step: int, epoch: int) -> None:
    """Announces and records a resume's config changes, then saves the new config.

    One line names every changed field with its old and new value; ``config_history.jsonl``
    gains {"step", "epoch", "changes", "provenance"}: the config in config.json governs from
    that step on, and the history says what governed before. The history is written before
    config.json, so a crash between the two repeats the record on the rerun instead of
    losing it.

    Args:
      config: the current config.
      workdir: the run directory.
      changes: ``prepare_workdir``'s {name: [saved, current]}.
      step: the step the run resumed from.
      epoch: the epoch it resumed from.
    """
    if not changes:
        return
    if step == 0:  # no save was readable: the run starts anew, under this config
        if parallel.is_primary():
            workdir.write_config(config)
            workdir.write_provenance(provenance.collect())
        return
    log.warning(
        "resuming %s at step %d with a changed config: %s (recorded in %s)",
        workdir.path,
        step,
        ", ".join(f"{n} {old!r} → {new!r}" for n, (old, new) in changes.items()),
        Workdir.CONFIG_HISTORY,
    )
    if parallel.is_primary():
        now = provenance.collect()  # git and library versions: collected once
        workdir.append_config_history(
            {"step": step, "epoch": epoch, "changes": changes, "provenance": now}
        )
        workdir.write_config(config)
        workdir.write_provenance(now)


def build_model(cfg, d: TrainingData) -> nn.Module:
    """The model of ``cfg`` for the data ``d``, its likelihood checked against the data."""
    info = d.info
    model = model_lib.build_model(
        cfg.model, info.shape, info.num_classes, binary_data=d.preprocess.binarize
    )
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
    # One program for the optimizer's state: run eagerly, each leaf's zeros compiles alone.
    opt_state = jax.jit(tx.init)(params)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": opt_state}
    if cfg.train.ema_decay > 0:  # the average starts at the initial weights
        state["online"] = params
    return jax.device_get(state)


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
        programs = steps.build_stream_program(
            model=model, config=cfg, mesh=mesh, preprocess=d.preprocess, total_steps=steps_total
        )
        reader = data.Stream(
            d.streamed,
            cfg.data.stream_chunk_steps,
            workers=cfg.data.stream_workers,
            rows=parallel.process_rows(cfg.train.batch_size),
        )
        return Setup(mesh, model, state, programs, None, d, reader)
    if steps.unroll_convolutions(cfg, mesh):  # a conv model's scanned epoch on a CPU
        log.warning(
            "model.arch=%r on CPU devices with the on-device pipeline: XLA:CPU runs the "
            "gradient convolutions of a scanned epoch without its fast kernels (measured "
            "15-50x slower); set data.pipeline=stream (and data.stream_chunk_steps=8) to "
            "train it unrolled",
            cfg.model.arch,
        )
    programs = steps.build_programs(
        model=model,
        config=cfg,
        mesh=mesh,
        num_train=d.num_train,
        total_steps=steps_total,
        preprocess=d.preprocess,
        class_table=d.class_table,
    )
    return Setup(mesh, model, state, programs, steps.place_training_data(d.in_memory, mesh), d)


def resume(ckpt: checkpoint.Checkpointer, state, workdir: Workdir, num_epochs: int):
    """(state, Progress) of the newest readable checkpoint, or the fresh ones given.

    metrics.jsonl is cut back to the resumed step; a run already finished (``num_epochs``
    reached, or stopped early) keeps its test record, so rerunning it changes no file."""
    restored = ckpt.restore(
        jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
        )
    )
    if restored is None:  # a fresh start; records of a run killed before its first save go
        if parallel.is_primary():
            workdir.truncate_metrics(0)
        return state, Progress()
    state, meta = restored
    progress = Progress(
        **{f.name: meta[f.name] for f in dataclasses.fields(Progress) if f.name in meta}
    )
    if parallel.is_primary():
        finished = progress.epoch >= num_epochs or progress.stopped_early
        workdir.truncate_metrics(int(state["step"]), finished)
    log.info(
        "resumed from step %d (epoch %d) in %s", int(state["step"]), progress.epoch, workdir.path
    )
    return state, progress


def log_setup(mesh, params, workdir: object) -> None:
    log.info(
        "devices: %d × %s in %d process(es); parameters: %d (encoder %d, decoder %d); workdir: %s",
        mesh.size,
        jax.devices()[0].platform,
        jax.process_count(),
        model_lib.count_params(params),
        _count_nets(params, "encoder", INFERENCE_NETS),
        _count_nets(params, "decoder", GENERATIVE_NETS),
        workdir,
    )


# The name prefixes of a hierarchy's per-layer nets on each side: bottom-up ``up_l``,
# top-down ``trunk_l`` and ``posterior_l`` infer; ``down_l`` and, in the residual design,
# ``prior_l``, ``expand_l`` and ``state_l`` generate.
INFERENCE_NETS = ("up_", "trunk_", "posterior_")
GENERATIVE_NETS = ("down_", "prior_", "expand_", "state_")


def _count_nets(params, name: str, layer_prefixes: tuple[str, ...]) -> int:
    """Scalars of the net ``name`` and, in a hierarchy, of the nets of its layers on the same
    side (``INFERENCE_NETS``, ``GENERATIVE_NETS``)."""
    return sum(
        model_lib.count_params(tree)
        for key, tree in params.items()
        if key == name or key.startswith(layer_prefixes)
    )
