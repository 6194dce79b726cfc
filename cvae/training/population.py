"""Many runs in one compiled program: ``train_population(configs, workdirs)``.

The members of a population share the config's structure (``population_structure``) and
differ only in ``steps.HYPERPARAMETERS``: the seed, σ₀, the code penalty, β, free bits,
the KL warm-up, the learning rate and the weight decay. Their states are stacked along a
leading member axis and one ``jax.vmap`` of the single run's step (``steps.make_step``)
trains them all: one compiled epoch for the population.

Each member draws exactly the keys its run alone would — init, epoch permutation,
binarization, reparameterisation and dropout all come from its own seed — and writes an
ordinary workdir through its own ``bookkeeping.RunBook`` (records, validation, model selection,
images, checkpoints, test score), so ``cvae.load_run`` and every script read it unchanged,
and its numbers equal ``train_and_evaluate``'s for the same config up to float rounding
(vmapped matmuls may round differently).

A member is *active* in an epoch when it still trains; the others end the epoch with the
state they began it with (``jnp.where`` on the member axis, once per epoch: selecting
every step cost a third of iwae/20's step on a CPU, a pass over the whole stacked state).
That mask makes everything per-member: a member whose loss turns NaN or infinite during an
epoch ends it with its state from before the epoch, and is marked failed (its last
checkpoint is its last good state) while the others go on; an early-stopped member stops;
after a crash, members resumed at different epochs catch up one epoch at a time before the
rest move on, so a resumed population equals the uninterrupted one.

Devices: the mesh is ``(member, data)`` (``parallel.make_population_mesh``); members shard
over ``member`` and each member's batch over ``data``, in one process or across several.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from cvae import config as config_lib
from cvae import parallel
from cvae.runs import checkpoint
from cvae.runs.workdir import Workdir, as_workdir
from cvae.training import bookkeeping, guards, inputs, steps
from cvae.training import setup as setup_lib

log = logging.getLogger("cvae")

# Config fields that describe where and how a run is kept, not what it computes: members
# may differ in them.
BOOKKEEPING = ("train.overwrite",)


class PopulationStructureError(ValueError):
    """The configs given to one population differ in a field that changes the program."""


def population_structure(cfg) -> dict:
    """What must be equal across a population's members: every field but the
    hyperparameters, plus two structural facts about hyperparameters — with Adam, whether
    weight decay is on at all (it adds a transformation to the optimizer), and whether
    the decoder-gradient penalty is (it adds a backward pass)."""
    flat = config_lib.flatten(cfg)
    structure = {
        k: v for k, v in flat.items() if k not in steps.HYPERPARAMETERS and k not in BOOKKEEPING
    }
    if cfg.train.optimizer == "adam":
        structure["train.weight_decay > 0"] = cfg.train.weight_decay > 0
    structure["model.gradient_penalty > 0"] = cfg.model.gradient_penalty > 0
    return structure


def structure_difference(a, b) -> str | None:
    """The first field in which configs ``a`` and ``b`` differ structurally, or None."""
    sa, sb = population_structure(a), population_structure(b)
    for key in sa:
        if sa[key] != sb.get(key):
            return f"{key} ({sa[key]!r} vs {sb.get(key)!r})"
    return None


def check_one_structure(configs) -> None:
    """Raises PopulationStructureError naming the first field that splits the configs."""
    for cfg in configs[1:]:
        difference = structure_difference(configs[0], cfg)
        if difference:
            raise PopulationStructureError(
                f"these runs cannot train in one program: they differ in {difference}, which "
                f"changes array shapes or the program; only {', '.join(steps.HYPERPARAMETERS)} "
                "may differ within a population (a sweep puts other fields in separate groups)"
            )


@dataclasses.dataclass
class MemberOutcome:
    """How one member's training ended: status is done | stopped_early | interrupted |
    failed; ``error`` says why a member failed."""

    status: str
    epoch: int
    step: int
    final_metrics: dict = dataclasses.field(default_factory=dict)
    error: str | None = None
    stop_signal: str | None = None  # what interrupted it; None: another process's signal


@dataclasses.dataclass
class PopulationResult:
    """What ``train_population`` returns: one outcome per member, the stacked final state
    (global arrays, member axis first) and the compilations of the population's epoch."""

    outcomes: list[MemberOutcome]
    state: dict
    traces: dict


def build_population_epoch(*, model, config, mesh: Mesh, d: inputs.TrainingData, total_steps: int):
    """The jitted epoch of a population: ``(state, active, images, labels, data_keys,
    train_keys, epochs, hyper) → (state, per-step scalars (steps, members))``.

    Every leaf of ``state``, the keys, ``epochs`` (each member's own epoch index) and each
    ``hyper`` entry carry the member axis first. Inactive members, and a member whose loss
    was not finite at some step, end the epoch with the state they began it with (the
    scan computes every member's steps; their results are dropped).
    """
    one_step = steps.make_step(
        model=model,
        config=config,
        preprocess=d.preprocess,
        total_steps=total_steps,
        batch_sharding=parallel.batch_sharded(mesh),
    )
    epoch_indices = steps.make_epoch_indices(
        num_train=d.num_train, batch_size=config.train.batch_size, class_table=d.class_table
    )
    # spmd_axis_name: the sharding constraint on a member's batch gains the member axis.
    member_step = jax.vmap(one_step, in_axes=(0, 0, None, None, 0, 0), spmd_axis_name="member")
    traces = {"train_epoch": 0}

    def train_epoch(state, active, images, labels, data_keys, train_keys, epochs, hyper):
        traces["train_epoch"] += 1  # runs only while tracing
        order = jax.vmap(epoch_indices)(data_keys, epochs)  # (members, steps, batch)

        def body(state, batch_indices):
            return member_step(state, batch_indices, images, labels, train_keys, hyper)

        trained, scalars = jax.lax.scan(body, state, jnp.swapaxes(order, 0, 1))
        keep = active & jnp.all(jnp.isfinite(scalars["loss"]), axis=0)
        choose = lambda new, old: jnp.where(keep.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
        return jax.tree_util.tree_map(choose, trained, state), scalars

    epoch = jax.jit(
        train_epoch,
        donate_argnums=(0,),
        out_shardings=(parallel.member_sharded(mesh), parallel.replicated(mesh)),
    )
    return epoch, traces


def member_state(state, index: int, mesh: Mesh):
    """Member ``index``'s state, replicated over the mesh (the layout of a single run's)."""
    return _take_member(mesh)(state, jnp.int32(index))


@functools.cache
def _take_member(mesh: Mesh):
    take = lambda state, i: jax.tree_util.tree_map(
        lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), state
    )
    return jax.jit(take, out_shardings=parallel.replicated(mesh))


def _stack(trees):
    return jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *trees)


def member_names(workdirs) -> list[str]:
    """Each member's name in log lines: its directory relative to the members' common
    parent ("sigma0=0.01/seed=3" in a sweep), or its own name for a population of one.

    Args:
      workdirs: the members' ``Workdir``s.

    Returns:
      One name per member.
    """
    paths = [w.path.resolve() for w in workdirs]
    root = pathlib.Path(os.path.commonpath(paths)) if len(paths) > 1 else paths[0].parent
    return [str(p.relative_to(root)) for p in paths]


def train_population(configs, workdirs) -> PopulationResult:
    """Trains ``configs[i]`` in ``workdirs[i]`` for every i, all in one compiled program.

    Rerunning resumes each member from its newest readable checkpoint. The configs must
    share a structure (``check_one_structure``). Each member holds its workdir's lock for
    the whole call. SIGINT/SIGTERM stop every member after the current epoch, saved; a
    diverging member is marked failed and frozen while the others finish.

    Args:
      configs: one config per member, differing only in traced hyperparameters
        (``cvae.training.steps.HYPERPARAMETERS``).
      workdirs: one run directory per member.

    Returns:
      The stacked final state and each member's outcome.

    Raises:
      PopulationStructureError: the configs differ in a field that changes the program.
    """
    configs, workdirs = list(configs), [as_workdir(w) for w in workdirs]
    if len(configs) != len(workdirs) or not configs:
        raise ValueError(
            f"train_population needs one workdir per config, got "
            f"{len(configs)} configs and {len(workdirs)} workdirs"
        )
    if len({str(w.path.resolve()) for w in workdirs}) != len(workdirs):
        raise ValueError("two members of a population share a workdir; give each its own")
    for cfg in configs:
        config_lib.validate(cfg)
    check_one_structure(configs)
    with contextlib.ExitStack() as locks:
        for workdir in workdirs:
            workdir.path.mkdir(parents=True, exist_ok=True)
            locks.enter_context(guards.one_writer(workdir))
        return _train_population(configs, workdirs)


def _train_population(configs, workdirs: list[Workdir]) -> PopulationResult:
    cfg0 = configs[0]
    changes = [setup_lib.prepare_workdir(cfg, workdir) for cfg, workdir in zip(configs, workdirs)]
    mesh = parallel.make_population_mesh(len(configs), cfg0.train.num_devices)
    eval_mesh = Mesh(mesh.devices.reshape(-1), ("data",))  # evaluation splits every batch
    d = inputs.load_training_data(cfg0, mesh.shape["data"])
    if d.pipeline != "device":
        raise config_lib.ConfigError(
            f"a population keeps its training data on the device, but {d.info.name}'s "
            "training split is streamed (data.pipeline, data.max_device_bytes): train its "
            "runs one by one with experiments.train, or raise data.max_device_bytes if the "
            "device has room"
        )
    total_steps = setup_lib.total_steps(cfg0, d)
    models = [setup_lib.build_model(cfg, d) for cfg in configs]
    books, states = [], []
    everywhere = parallel.replicated(mesh)
    names = member_names(workdirs)
    for cfg, model, workdir, name, changed in zip(
        configs, models, workdirs, names, changes, strict=True
    ):
        fresh = parallel.place(setup_lib.initial_state(model, cfg, total_steps), everywhere)
        ckpt = checkpoint.Checkpointer(workdir.checkpoints, cfg.train.keep_checkpoints)
        state, progress = setup_lib.resume(ckpt, fresh, workdir, cfg.train.num_epochs)
        setup_lib.record_config_changes(cfg, workdir, changed, int(state["step"]), progress.epoch)
        states.append(jax.device_get(state))
        books.append(
            bookkeeping.RunBook(
                cfg, workdir, model, d, eval_mesh, ckpt=ckpt, progress=progress, name=name
            )
        )
    setup_lib.log_setup(
        mesh,
        states[0]["params"],
        f"{len(configs)} members, "
        f"{mesh.shape['member']} × {mesh.shape['data']} (member × data) devices",
    )

    by_member = parallel.member_sharded(mesh)
    state = parallel.place(_stack(states), by_member)
    keys = [setup_lib.run_keys(cfg.seed) for cfg in configs]
    data_keys = parallel.place(jnp.stack([k[1] for k in keys]), by_member)
    train_keys = parallel.place(jnp.stack([k[2] for k in keys]), by_member)
    hyper = parallel.place(
        {
            name: np.asarray(values, np.float32)
            for name, values in _columns([steps.hyperparameters(c) for c in configs]).items()
        },
        by_member,
    )
    images, labels = steps.place_training_data(d.in_memory, mesh)
    train_epoch, traces = build_population_epoch(
        model=models[0], config=cfg0, mesh=mesh, d=d, total_steps=total_steps
    )

    outcomes = [
        MemberOutcome(
            "stopped_early" if b.progress.stopped_early else "running",
            b.progress.epoch,
            int(s["step"]),
        )
        for b, s in zip(books, states)
    ]
    trains = lambda i: (
        outcomes[i].status == "running" and books[i].progress.epoch < configs[i].train.num_epochs
    )
    with guards.stop_requests() as stop:
        while any(trains(i) for i in range(len(configs))):
            epoch = min(books[i].progress.epoch for i in range(len(configs)) if trains(i))
            active = [trains(i) and books[i].progress.epoch == epoch for i in range(len(configs))]
            epochs = [b.progress.epoch for b in books]
            tick = time.perf_counter()
            state, per_step = train_epoch(
                state,
                parallel.place(np.asarray(active), by_member),
                images,
                labels,
                data_keys,
                train_keys,
                parallel.place(np.asarray(epochs, np.int32), by_member),
                hyper,
            )
            per_step = jax.device_get(per_step)
            seconds = time.perf_counter() - tick
            stopping = parallel.any_process(stop["signal"] is not None)
            for i in np.flatnonzero(active).tolist():
                first_step = outcomes[i].step
                try:
                    books[i].after_epoch(
                        lambda i=i, s=state: member_state(s, i, mesh),
                        {k: v[:, i] for k, v in per_step.items()},
                        first_step,
                        epoch,
                        seconds,
                        stopping,
                    )
                except bookkeeping.TrainingDivergedError as err:
                    outcomes[i].status, outcomes[i].error = "failed", str(err)
                    log.warning("member %s failed and is frozen: %s", workdirs[i].path, err)
                    continue
                outcomes[i].epoch = books[i].progress.epoch
                outcomes[i].step = first_step + len(per_step["loss"])
                if books[i].progress.stopped_early:
                    outcomes[i].status = "stopped_early"
            log.info(
                "population epoch %d: %d members trained, %.0f examples/s in all",
                epoch + 1,
                sum(active),
                sum(active) * books[0].examples_per_epoch / seconds,
            )
            if stopping:
                log.warning(
                    "%s: saved every member; rerun the same command to resume",
                    f"{stop['signal']} received"
                    if stop["signal"]
                    else "another process received a signal",
                )
                for outcome in outcomes:
                    if outcome.status == "running":
                        outcome.status, outcome.stop_signal = "interrupted", stop["signal"]
                break

    for i, (book, outcome) in enumerate(zip(books, outcomes)):
        if outcome.status in ("running", "stopped_early"):
            outcome.final_metrics = book.finish(member_state(state, i, mesh))
            outcome.status = "done" if outcome.status == "running" else outcome.status
        book.close()
    return PopulationResult(outcomes, state, dict(traces))


def _columns(rows: list[dict]) -> dict:
    return {key: [row[key] for row in rows] for key in rows[0]}
