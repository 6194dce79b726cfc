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
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cvae import config as config_lib
from cvae import data, parallel
from cvae.models import objectives
from cvae.models.validation import num_layers

# Fields that may differ between the members of one compiled population (cvae.training.population):
# they change values, never array shapes or the program's structure, so they enter the
# step as traced numbers. Everything else in a config is structure. ``model.dropout_rate``
# is structure too: Flax's Dropout decides in Python whether to draw a mask at all.
HYPERPARAMETERS = (
    "seed",
    "model.sigma0",
    "model.upper_sigma0s",
    "model.code_l2",
    "model.gradient_penalty",
    "objective.beta",
    "objective.upper_betas",
    "objective.free_bits",
    "objective.kl_warmup_steps",
    "objective.mmd_weight",
    "train.learning_rate",
    "train.weight_decay",
)


def hyperparameters(cfg) -> dict:
    """The traced hyperparameters of ``cfg`` (all of HYPERPARAMETERS but the seed), by
    their last name: the numbers ``make_step`` reads instead of the config's. Each is a
    float but ``upper_sigma0s`` and ``upper_betas``, tuples with one σ₀ and one β per
    layer above the first (empty fields spelled out as ``model.sigma0`` and
    ``objective.beta`` for each)."""
    flat = config_lib.flatten(cfg)
    hyper: dict[str, float | tuple[float, ...]] = {
        name.split(".")[-1]: float(flat[name])
        for name in HYPERPARAMETERS[1:]
        if name not in ("model.upper_sigma0s", "objective.upper_betas")
    }
    m, upper = cfg.model, num_layers(cfg.model) - 1
    hyper["upper_sigma0s"] = tuple(float(s) for s in m.upper_sigma0s or (m.sigma0,) * upper)
    betas = cfg.objective.upper_betas or (cfg.objective.beta,) * upper
    hyper["upper_betas"] = tuple(float(b) for b in betas)
    return hyper


def learning_rate(train_cfg, total_steps: int, peak=None) -> optax.Schedule:
    """Step → learning rate: constant, or optax's linear warm-up then cosine decay.

    ``peak`` (default ``train_cfg.learning_rate``) may be a traced number."""
    peak = train_cfg.learning_rate if peak is None else peak
    if train_cfg.lr_schedule == "warmup_cosine":
        decay_steps = max(total_steps, train_cfg.lr_warmup_steps + 1)
        if isinstance(peak, (int, float)):
            return optax.warmup_cosine_decay_schedule(
                0.0, peak, train_cfg.lr_warmup_steps, decay_steps
            )
        # optax tests the peak in Python; the schedule is linear in it, so a population
        # member's traced peak scales the unit schedule (equal to within a float32 ulp).
        unit = optax.warmup_cosine_decay_schedule(0.0, 1.0, train_cfg.lr_warmup_steps, decay_steps)
        return lambda step: peak * unit(step)
    return optax.constant_schedule(peak)


def make_optimizer(
    train_cfg, total_steps: int, *, learning_rate_value=None, weight_decay=None
) -> optax.GradientTransformation:
    """Adam or AdamW, a constant or warm-up + cosine learning rate, optional clipping.

    The optimizer's structure (and so its state's) comes from ``train_cfg``; the learning
    rate and weight decay may be given as traced numbers instead of the config's values.
    With Adam, whether weight decay is on at all (> 0) is structure: members of one
    population agree on it (``cvae.training.sweep`` groups them so).
    """
    peak = train_cfg.learning_rate if learning_rate_value is None else learning_rate_value
    decay = train_cfg.weight_decay if weight_decay is None else weight_decay
    lr = (
        peak if train_cfg.lr_schedule == "constant" else learning_rate(train_cfg, total_steps, peak)
    )
    if train_cfg.optimizer == "adamw":
        opt = optax.adamw(lr, weight_decay=decay)
    else:
        opt = optax.adam(lr)
        if train_cfg.weight_decay > 0:  # L2 regularisation through the gradient
            opt = optax.chain(optax.add_decayed_weights(decay), opt)
    if train_cfg.grad_clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip_norm), opt)
    return opt


def make_objective(model, config, hyper: dict):
    """(params, x, key, labels, beta, dropout_key, train) → (loss, per-example terms).

    ``hyper`` (see ``hyperparameters``) supplies σ₀ (every layer's), the
    free bits, the penalties' weights and λ of WAE-MMD, as Python floats for one run or
    traced numbers for a population member; ``config`` decides which objective, and whether
    the gradient penalty is on."""
    upper = hyper["upper_sigma0s"]
    depth = len(model.layer_dims)
    model = model.with_sigma0s((hyper["sigma0"], *(upper[i] for i in range(depth - 1))))
    kind = config.objective.kind
    if kind == "iwae":
        return functools.partial(objectives.iwae_loss, model, k=config.objective.k)
    if kind == "wae_mmd":
        return functools.partial(
            objectives.wae_mmd, model, mmd_weight=hyper["mmd_weight"], code_l2=hyper["code_l2"]
        )
    gradient_penalty = hyper["gradient_penalty"] if config.model.gradient_penalty > 0 else None

    def elbo(params, x, key, *, labels=None, beta=1.0, train=False, dropout_key=None, **balance):
        return objectives.elbo_loss(
            model,
            params,
            x,
            key,
            labels=labels,
            beta=beta,
            free_bits=hyper["free_bits"],
            code_l2=hyper["code_l2"],
            gradient_penalty=gradient_penalty,
            train=train,
            dropout_key=dropout_key,
            **balance,  # kl_balance, for a hierarchy that asks for it
        )

    return elbo


def compute_dtype(train_cfg):
    """The dtype a training step computes in (``train.precision``): bf16 or f32, "auto"
    choosing bf16 on GPUs and TPUs (whose matrix units run it at several times the f32 rate)
    and f32 on CPUs (where bf16 arithmetic is emulated and slower)."""
    precision = train_cfg.precision
    if precision == "auto":
        precision = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    return jnp.bfloat16 if precision == "bfloat16" else jnp.float32


def in_precision(objective, dtype):
    """``objective`` computed in ``dtype``: mixed precision. The f32 params and images are
    cast on the way in (the cast is differentiable, so gradients arrive in f32 for the f32
    optimizer state), every layer then runs in ``dtype``, and the loss and per-example
    terms come back as f32 (JAX sums bf16 arrays in f32). f32: ``objective`` itself."""
    if dtype == jnp.float32:
        return objective

    def low(params, x, key, **kwargs):
        params = jax.tree_util.tree_map(
            lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params
        )
        loss, terms = objective(params, x.astype(dtype), key, **kwargs)
        return loss.astype(jnp.float32), {k: v.astype(jnp.float32) for k, v in terms.items()}

    return low


def make_step(
    *, model, config, preprocess: data.Preprocessor, total_steps: int, batch_sharding=None
):
    """One optimizer step of one run: ``(state, batch_indices, images, labels, train_key,
    hyper) → (state, scalars)``. Pure: ``build_programs`` scans it over an epoch, and
    ``cvae.training.population`` vmaps that over members, each with its own keys and ``hyper``."""
    cfg = config
    conditional = model.num_classes > 0

    def one_step(state, batch_indices, images, labels, train_key, hyper):
        step = state["step"]
        sample_key, binarize_key, dropout_key = jax.random.split(
            jax.random.fold_in(train_key, step), 3
        )
        if batch_sharding is not None:
            batch_indices = jax.lax.with_sharding_constraint(batch_indices, batch_sharding)
        x = preprocess(binarize_key, gather_rows(images, batch_indices))
        y = labels[batch_indices] if conditional else None
        # A β per layer, z₁'s first, all warmed up alike.
        upper = hyper["upper_betas"]
        beta = (objectives.kl_weight(step, hyper["beta"], hyper["kl_warmup_steps"]),) + tuple(
            objectives.kl_weight(step, upper[i], hyper["kl_warmup_steps"])
            for i in range(len(model.layer_dims) - 1)
        )
        objective = in_precision(make_objective(model, cfg, hyper), compute_dtype(cfg.train))
        tx = make_optimizer(
            cfg.train,
            total_steps,
            learning_rate_value=hyper["learning_rate"],
            weight_decay=hyper["weight_decay"],
        )

        # NVAE's KL balancing acts while β warms up (objective.kl_balance)
        balance = (
            {"kl_balance": step < hyper["kl_warmup_steps"]} if cfg.objective.kl_balance else {}
        )

        def loss_fn(params):
            return objective(
                params,
                x,
                sample_key,
                labels=y,
                beta=beta,
                train=True,
                dropout_key=dropout_key,
                **balance,
            )

        trained = trained_weights(state)
        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained)
        updates, opt_state = tx.update(grads, state["opt_state"], trained)
        new_state = {"step": step + 1, "params": optax.apply_updates(trained, updates)}
        if cfg.train.ema_decay > 0:  # "params" is the average of the "online" weights
            online = new_state["params"]
            average = optax.incremental_update(online, state["params"], 1.0 - cfg.train.ema_decay)
            new_state = {**new_state, "online": online, "params": average}
        new_state["opt_state"] = opt_state
        scalars = {"loss": loss, **{k: jnp.mean(v) for k, v in terms.items()}}
        if cfg.train.skip_grad_norm > 0:
            new_state, scalars = _skip_large_updates(
                state, new_state, scalars, optax.tree.norm(grads), cfg.train.skip_grad_norm
            )
        return new_state, scalars

    return one_step


def trained_weights(state: dict):
    """The weights the optimizer trains: ``state["online"]`` when the run keeps a moving
    average of them (``train.ema_decay``; ``state["params"]`` is then the average, what
    evaluation and checkpoints' readers use), else ``state["params"]``."""
    return state.get("online", state["params"])


def _skip_large_updates(state, new_state, scalars, grad_norm, threshold: float):
    """The update skip of very deep VAEs: where the gradient's global norm exceeds
    ``threshold``, params and optimizer state keep their values (the step still advances,
    so keys and schedules are those of the run without the rule). A NaN norm is not above
    any threshold: the NaN guard stops such a run instead. Adds ``grad_norm`` and
    ``skipped`` (0 or 1) to the step's scalars."""
    skip = grad_norm > threshold
    names = [name for name in new_state if name != "step"]  # weights, average, optimizer
    kept = jax.tree_util.tree_map(
        lambda old, new: jnp.where(skip, old, new),
        {name: state[name] for name in names},
        {name: new_state[name] for name in names},
    )
    scalars = {**scalars, "grad_norm": grad_norm, "skipped": skip.astype(jnp.float32)}
    return {**new_state, **kept}, scalars


def gather_rows(images, indices):
    """``images[indices]``, gathered as rows of a 2-D view.

    Exactly the same values; XLA:CPU runs a gather of (1, H, W, C) slices element by
    element in all four dimensions, several times slower than the same bytes as
    (1, H·W·C) rows (docs/performance.md has the measurement)."""
    rows = images.reshape(images.shape[0], -1)[indices]
    return rows.reshape(indices.shape + images.shape[1:])


def make_epoch_indices(*, num_train: int, batch_size: int, class_table: data.ClassTable | None):
    """``(data_key, epoch) → (steps, batch)`` example indices of one epoch."""
    steps_per_epoch = num_train // batch_size

    def epoch_indices(data_key, epoch):
        if class_table is None:
            order = data.epoch_permutation(data_key, epoch, num_train)
        else:
            order = data.class_balanced_indices(
                jax.random.fold_in(data_key, epoch),
                jnp.asarray(class_table.indices),
                jnp.asarray(class_table.counts),
                num_train,
            )
        return order[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)

    return epoch_indices


@dataclasses.dataclass
class TrainPrograms:
    """The jitted training epoch, with a trace counter (for retrace tests)."""

    train_epoch: Callable
    traces: dict


def build_programs(
    *,
    model,
    config,
    mesh,
    preprocess: data.Preprocessor,
    num_train: int,
    class_table: data.ClassTable | None,
    total_steps: int,
) -> TrainPrograms:
    """The jitted epoch (see the module docstring) for this model, config and mesh.

    The same object for the same arguments while it is among the last 8 built in this
    process: a second run of a config (in a notebook, a test suite, a sweep run member by
    member) reuses the traced program instead of tracing and lowering it again (0.3 s of a
    0.45 s tiny digits run). Its ``traces`` then count the compilations of every run that
    used it. The program keeps a frozen copy of ``config``: changing the caller's config
    afterwards changes neither it nor a later trace of it."""
    return _build_epoch(
        model,
        ml_collections.FrozenConfigDict(config),
        mesh,
        preprocess,
        num_train,
        class_table,
        total_steps,
    )


@functools.lru_cache(maxsize=8)
def _build_epoch(
    model,
    config: ml_collections.FrozenConfigDict,
    mesh,
    preprocess: data.Preprocessor,
    num_train: int,
    class_table: data.ClassTable | None,
    total_steps: int,
) -> TrainPrograms:
    cfg = config
    one_step = make_step(
        model=model,
        config=cfg,
        preprocess=preprocess,
        total_steps=total_steps,
        batch_sharding=parallel.batch_sharded(mesh),
    )
    epoch_indices = make_epoch_indices(
        num_train=num_train, batch_size=cfg.train.batch_size, class_table=class_table
    )
    hyper = hyperparameters(cfg)
    traces = {"train_epoch": 0}

    def train_epoch(state, images, labels, data_key, train_key, epoch):
        traces["train_epoch"] += 1  # runs only while tracing
        return jax.lax.scan(
            lambda s, idx: one_step(s, idx, images, labels, train_key, hyper),
            state,
            epoch_indices(data_key, epoch),
        )

    # Outputs come back replicated: every process can read the whole of them (in a
    # multi-process run a batch-sharded result would not be addressable from one host).
    everywhere = parallel.replicated(mesh)
    return TrainPrograms(
        jax.jit(train_epoch, donate_argnums=(0,), out_shardings=everywhere), traces
    )


def unroll_convolutions(config, mesh) -> bool:
    """True where a loop of training steps must be unrolled: a convolutional model on the
    CPU devices of ``mesh``.

    XLA:CPU rewrites the gradient convolutions into the form its fast (Eigen) kernels take
    only outside loops; inside a ``lax.scan`` body it runs them as naive loops, an order of
    magnitude slower (jax-ml/jax#12868; docs/performance.md, Streaming input). Unrolled, the
    steps of a chunk are compiled in line (compile time grows with the chunk: keep
    ``data.stream_chunk_steps`` small for such models on a CPU).
    """
    return config.model.arch != "mlp" and mesh.devices.flat[0].platform == "cpu"


def build_stream_program(
    *, model, config, mesh, preprocess: data.Preprocessor, total_steps: int
) -> TrainPrograms:
    """The streaming path's program: ``(state, images, labels, train_key) → (state,
    scalars)`` over a chunk of batches read by ``cvae.data.stream`` (images (n, B, H, W, C)
    uint8, sharded along the batch axis). The same ``make_step`` as the compiled epoch,
    given each batch as its own tiny data set (indices 0 … B−1): the same keys and the
    same arithmetic as the on-device path's step."""
    cfg = config
    one_step = make_step(
        model=model,
        config=cfg,
        preprocess=preprocess,
        total_steps=total_steps,
        batch_sharding=parallel.batch_sharded(mesh),
    )
    hyper = hyperparameters(cfg)
    traces = {"train_epoch": 0}
    unroll = unroll_convolutions(cfg, mesh)

    def train_chunk(state, images, labels, train_key):
        traces["train_epoch"] += 1  # runs only while tracing
        in_batch = jnp.arange(images.shape[1])
        if not unroll:
            return jax.lax.scan(
                lambda s, batch: one_step(s, in_batch, batch[0], batch[1], train_key, hyper),
                state,
                (images, labels),
            )
        # The steps in line, without lax.scan: even fully unrolled, a scan of one step is
        # lowered as a loop that XLA removes only after it has chosen the slow kernels
        # (measured: 13.4 s a step of mnist_deep against 0.95 s in line).
        per_step = []
        for i in range(images.shape[0]):
            state, scalars = one_step(state, in_batch, images[i], labels[i], train_key, hyper)
            per_step.append(scalars)
        return state, jax.tree_util.tree_map(lambda *x: jnp.stack(x), *per_step)

    everywhere = parallel.replicated(mesh)
    return TrainPrograms(
        jax.jit(train_chunk, donate_argnums=(0,), out_shardings=everywhere), traces
    )


def place_training_data(train_set: data.Dataset, mesh):
    """The training images (uint8) and labels (zeros when unlabelled), replicated on every
    device of ``mesh``: each device gathers its own slice of each batch in the program."""
    labels = (
        train_set.labels if train_set.labels is not None else np.zeros(len(train_set), np.int32)
    )
    return parallel.replicate((train_set.images, labels), mesh)
