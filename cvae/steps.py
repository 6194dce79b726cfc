"""The compiled program of training: the optimizer and one training epoch.

A training epoch is one ``jax.jit``-compiled ``lax.scan`` over its batches: the data set
lives on the device(s), batches are gathered and binarized inside the program, and only
per-step scalars come back. Params are replicated over the ``data`` mesh axis and each
batch is sharded along it, so the same program runs on 1 CPU, 8 CPU devices or a GPU.

Randomness: the permutation of epoch e comes from ``fold_in(data_key, e)``; step s uses
``fold_in(train_key, s)``, split into the reparameterisation, binarization and dropout
keys. Both depend only on (seed, epoch, step), so a resumed run draws what an
uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cvae import data, objectives, parallel


def learning_rate(train_cfg, total_steps: int) -> optax.Schedule:
    """Step → learning rate: constant, or optax's linear warm-up then cosine decay."""
    if train_cfg.lr_schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, train_cfg.learning_rate, train_cfg.lr_warmup_steps,
            max(total_steps, train_cfg.lr_warmup_steps + 1))
    return optax.constant_schedule(train_cfg.learning_rate)


def make_optimizer(train_cfg, total_steps: int) -> optax.GradientTransformation:
    """Adam or AdamW, a constant or warm-up + cosine learning rate, optional clipping."""
    lr = (train_cfg.learning_rate if train_cfg.lr_schedule == "constant"
          else learning_rate(train_cfg, total_steps))
    if train_cfg.optimizer == "adamw":
        opt = optax.adamw(lr, weight_decay=train_cfg.weight_decay)
    else:
        opt = optax.adam(lr)
        if train_cfg.weight_decay > 0:  # L2 regularisation through the gradient
            opt = optax.chain(optax.add_decayed_weights(train_cfg.weight_decay), opt)
    if train_cfg.grad_clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip_norm), opt)
    return opt


def make_objective(model, objective_cfg, model_cfg):
    """(params, x, key, labels, beta, dropout_key, train) → (loss, per-example terms)."""
    if objective_cfg.kind == "iwae":
        return functools.partial(objectives.iwae_loss, model, k=objective_cfg.k)

    def elbo(params, x, key, *, labels=None, beta=1.0, train=False, dropout_key=None):
        return objectives.elbo_loss(model, params, x, key, labels=labels, beta=beta,
                                    free_bits=objective_cfg.free_bits,
                                    code_l2=model_cfg.code_l2, train=train,
                                    dropout_key=dropout_key)
    return elbo


@dataclasses.dataclass
class TrainPrograms:
    """The jitted training epoch, with a trace counter (for retrace tests)."""

    train_epoch: callable
    traces: dict


def build_programs(*, model, config, tx, mesh, preprocess: data.Preprocessor,
                   num_train: int, class_table: data.ClassTable | None) -> TrainPrograms:
    """The jitted epoch (see the module docstring) for this model, optimizer and mesh."""
    cfg = config
    batch_size = cfg.train.batch_size
    steps_per_epoch = num_train // batch_size
    objective = make_objective(model, cfg.objective, cfg.model)
    batch_sharding = parallel.batch_sharded(mesh)
    traces = {"train_epoch": 0}
    conditional = model.num_classes > 0

    def epoch_indices(data_key, epoch):
        if class_table is None:
            order = data.epoch_permutation(data_key, epoch, num_train)
        else:
            order = data.class_balanced_indices(
                jax.random.fold_in(data_key, epoch), jnp.asarray(class_table.indices),
                jnp.asarray(class_table.counts), num_train)
        return order[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)

    def train_epoch(state, images, labels, data_key, train_key, epoch):
        traces["train_epoch"] += 1  # runs only while tracing

        def one_step(state, batch_indices):
            step = state["step"]
            sample_key, binarize_key, dropout_key = jax.random.split(
                jax.random.fold_in(train_key, step), 3)
            batch_indices = jax.lax.with_sharding_constraint(batch_indices, batch_sharding)
            x = preprocess(binarize_key, images[batch_indices])
            y = labels[batch_indices] if conditional else None
            beta = objectives.kl_weight(step, cfg.objective.beta, cfg.objective.kl_warmup_steps)

            def loss_fn(params):
                return objective(params, x, sample_key, labels=y, beta=beta, train=True,
                                 dropout_key=dropout_key)

            (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
            updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
            new_state = {"step": step + 1,
                         "params": optax.apply_updates(state["params"], updates),
                         "opt_state": opt_state}
            scalars = {"loss": loss, **{k: jnp.mean(v) for k, v in terms.items()}}
            return new_state, scalars

        return jax.lax.scan(one_step, state, epoch_indices(data_key, epoch))

    # Outputs come back replicated: every process can read the whole of them (in a
    # multi-process run a batch-sharded result would not be addressable from one host).
    everywhere = parallel.replicated(mesh)
    return TrainPrograms(jax.jit(train_epoch, donate_argnums=(0,), out_shardings=everywhere),
                         traces)


def place_training_data(train_set: data.Dataset, mesh):
    """The training images (uint8) and labels (zeros when unlabelled), replicated on every
    device of ``mesh``: each device gathers its own slice of each batch in the program."""
    labels = (train_set.labels if train_set.labels is not None
              else np.zeros(len(train_set), np.int32))
    return parallel.replicate((train_set.images, labels), mesh)
