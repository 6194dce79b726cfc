"""A latent diffusion model: a DiT trained by flow matching on a frozen tokenizer's code maps
(or, as the baseline at matched compute, on the images themselves) — a run of its own.

The run lives in its own workdir (by default ``TOKENIZER/latent_diffusion``) and names its
tokenizer run: ``latent.json`` records the tokenizer's directory and the SHA-256 of the
parameters it was trained on, the DiT's config, the code map's shape and the normaliser;
a rerun whose tokenizer's parameters changed is refused in one line. Beside it:
checkpoints (the EMA of the weights as ``params``, what is sampled; the online weights and
Adam's state to resume), metrics.jsonl and TensorBoard.

What the DiT models. The tokenizer encodes the training split once; every step draws
z ~ q(z|x) afresh for its batch (z = μ + σ ε: σ₀ for a collapsed tokenizer, the learned
σ(x) for a Gaussian one, 0 for an autoencoder) — the codes the decoder was trained to
read — and normalises it per channel, (z − shift_c) / scale_c with shift_c and scale_c²
the mean and variance of z over the split (Var μ_c + E σ_c², computed once from the
encodings and stored: Stable Diffusion's 0.18215, per channel). In pixel space the images
(binarized as the tokenizer's data are) are mapped to [−1, 1].

Same config, tokenizer and seed ⇒ the same numbers: step s draws its batch, noise, times
and dropped labels from ``fold_in(key(seed), s)``, so a resumed run is the uninterrupted
run, bit for bit.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cvae import data, evaluation
from cvae import progress as progress_lib
from cvae.models import dit, flow_matching
from cvae.runs import checkpoint, provenance, writers
from cvae.runs.restore import Restored, restore
from cvae.runs.workdir import Workdir, read_json, write_json_atomic
from cvae.schema import Field, check_fields, defaults
from cvae.training.guards import one_writer, stop_requests

log = logging.getLogger(__name__)

RECORD = "latent.json"  # what the run was trained on: tokenizer, config, shape, normaliser
DEFAULT_DIR = "latent_diffusion"  # the run's workdir inside its tokenizer's, by default
SPACES = ("latent", "pixels")
SAMPLE_CHUNK = 1000  # draws solved at once when sampling

LATENT_FIELDS = {
    "space": Field(
        "latent",
        "latent: the tokenizer's code maps | pixels: the images, at the same number of tokens",
        "choice",
        choices=SPACES,
    ),
    "patch": Field(
        0,
        "the DiT's patch p",
        "int",
        minimum=0,
        zero="1 over code maps; over pixels the image-to-code-map ratio (MNIST: 28/7 = 4), "
        "so both have the same tokens",
    ),
    "width": Field(128, "the tokens' width (a multiple of 4 and of heads)", "int", minimum=4),
    "depth": Field(4, "DiT blocks", "int", minimum=1),
    "heads": Field(4, "attention heads", "int", minimum=1),
    "conditional": Field(False, "condition on the label (classifier-free guidance)", "bool"),
    "label_dropout": Field(
        flow_matching.LABEL_DROPOUT,
        "the share of labels trained as the null label",
        "float",
        minimum=0.0,
        below=1.0,
    ),
    "batch_size": Field(128, "codes per step", "int", minimum=1),
    "num_steps": Field(20000, "optimizer steps in all", "int", minimum=1),
    "steps_per_call": Field(
        100,
        "steps per compiled call: records and checkpoints fall between calls",
        "int",
        minimum=1,
    ),
    "learning_rate": Field(3e-4, "AdamW's peak step size", "float", minimum=0.0, exclusive=True),
    "warmup_steps": Field(500, "linear warm-up steps, then cosine decay", "int", minimum=0),
    "weight_decay": Field(0.0, "AdamW's decoupled weight decay", "float", minimum=0.0),
    "grad_clip": Field(
        1.0, "the gradients' global norm is clipped to this", "float", minimum=0.0, zero="none"
    ),
    "ema_decay": Field(
        0.999, "the EMA of the weights (what is sampled)", "float", minimum=0.0, below=1.0
    ),
    "checkpoint_every": Field(1000, "steps between checkpoints (whole calls)", "int", minimum=1),
    "sampling_steps": Field(32, "Heun steps of the sampling ODE", "int", minimum=1),
    "max_examples": Field(
        0, "training images encoded", "int", minimum=0, zero="the whole training split"
    ),
    "seed": Field(0, "the PRNG seed of the initialisation and of every step", "int", minimum=0),
}
# What a rerun may change without starting over: how long it trains and how it samples.
RESUMABLE = ("num_steps", "steps_per_call", "checkpoint_every", "sampling_steps")


class LatentRunError(ValueError):
    """A latent run that cannot start or continue as asked; the message says why and what
    to do, in one line."""


def latent_config() -> ml_collections.ConfigDict:
    """The latent diffusion run's config: every field of ``LATENT_FIELDS`` at its default.

    Returns:
      The config.
    """
    return defaults(LATENT_FIELDS)


def validate_latent(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for the first field outside its range, then LatentRunError for the
    rules between fields (the warm-up within the steps, the width against the heads).

    Args:
      config: a latent run's config.
    """
    check_fields("config.", LATENT_FIELDS, config)
    if config.warmup_steps >= config.num_steps:
        raise LatentRunError(
            f"config.warmup_steps ({config.warmup_steps}) must be below config.num_steps "
            f"({config.num_steps}): the learning rate warms up, then decays over the rest"
        )
    if config.width % 4 or config.width % config.heads:
        raise LatentRunError(
            f"width {config.width} must be a multiple of 4 (the 2-D positions) and of heads "
            f"({config.heads})"
        )


@dataclasses.dataclass(frozen=True)
class Normaliser:
    """x = (z − shift) / scale per channel (the last axis), and back."""

    shift: np.ndarray
    scale: np.ndarray

    def forward(self, z):
        """Codes to what the DiT models.

        Args:
          z: codes (…, c).

        Returns:
          (z − shift) / scale.
        """
        return (z - self.shift) / self.scale

    def inverse(self, x):
        """What the DiT draws, back to codes.

        Args:
          x: normalised codes (…, c).

        Returns:
          shift + scale · x.
        """
        return self.shift + self.scale * x

    def as_record(self) -> dict:
        """The normaliser as JSON-ready lists.

        Returns:
          {"shift": […], "scale": […]}.
        """
        return {"shift": self.shift.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_record(cls, record: dict) -> Normaliser:
        """The normaliser of a record ``as_record`` wrote.

        Args:
          record: {"shift": […], "scale": […]}.

        Returns:
          The normaliser.
        """
        return cls(np.asarray(record["shift"], np.float32), np.asarray(record["scale"], np.float32))


@dataclasses.dataclass
class TrainingTable:
    """What each step draws its batch from, on the device: per example the posterior mean
    and scale of the code map (pixels: the image, and no scale), and the label."""

    mean: jax.Array  # (N, h, w, c)
    scale: jax.Array | None  # (N, h, w, c); None: nothing to draw (pixels, an autoencoder)
    labels: jax.Array  # (N,)


def _encoded_training_split(tokenizer: Restored, space: str, max_examples: int):
    """The training split, encoded by the tokenizer 1,000 images at a time (or the images
    themselves in pixel space): (mean, scale, labels) as host arrays."""
    binarize = tokenizer.config.data.binarize == "dynamic"
    eval_set = evaluation.EvalSet(data.role_source(tokenizer.config.data, "train"), binarize)
    if max_examples:
        eval_set = eval_set.head(max_examples)
    model, params = tokenizer.model, tokenizer.params
    (shape,) = model.layer_shapes
    means, scales, labels = [], [], []
    encode = jax.jit(lambda x, y: model.apply({"params": params}, x, y, method=model.encode))
    if space != "pixels":  # about a minute for MNIST on a CPU: said, bar or not
        log.info("encoding the %d training images with the tokenizer", len(eval_set))
    for images, y in progress_lib.bar(
        eval_set.unit_batches(1000),
        total=math.ceil(len(eval_set) / 1000),
        desc="encode the training split",
        unit="batch",
        enabled=space != "pixels",
    ):
        labels.append(y)
        if space == "pixels":
            means.append(2.0 * images - 1.0)
            continue
        posterior = encode(jnp.asarray(images), y if model.num_classes else None)
        means.append(np.asarray(posterior.mean).reshape(-1, *shape))
        (sigma0,) = model.sigma0s
        if sigma0 is None:  # a Gaussian tokenizer: its learned σ(x)
            sigma = np.exp(0.5 * np.asarray(posterior.log_var))
            scales.append(sigma.reshape(-1, *shape))
        elif sigma0 > 0:  # a collapsed one's σ₀ (an autoencoder's codes are drawn as they are)
            scales.append(np.full((len(images), *shape), float(sigma0), np.float32))
    mean = np.concatenate(means).astype(np.float32)
    scale = np.concatenate(scales).astype(np.float32) if scales else None
    return mean, scale, np.concatenate(labels).astype(np.int32)


def _normaliser(space: str, mean: np.ndarray, scale: np.ndarray | None) -> Normaliser:
    """Per channel: the mean of the codes and √(Var μ + E σ²), the spread of the draws z."""
    if space == "pixels":  # already in [−1, 1]
        return Normaliser(np.zeros((1,), np.float32), np.ones((1,), np.float32))
    axes = tuple(range(mean.ndim - 1))
    variance = mean.astype(np.float64).var(axis=axes)
    if scale is not None:
        variance = variance + np.mean(scale.astype(np.float64) ** 2, axis=axes)
    return Normaliser(
        mean.astype(np.float64).mean(axis=axes).astype(np.float32),
        np.sqrt(np.maximum(variance, 1e-12)).astype(np.float32),
    )


def build_dit(config, shape, tokens_grid: tuple[int, ...], num_classes: int) -> dit.DiT:
    """The DiT of a config over maps of ``shape``: patch 1 over code maps; over pixels the
    patch that gives the code map's grid of tokens (unless ``patch`` is set).

    Args:
      config: a latent run's config.
      shape: (H, W, C) of what it models.
      tokens_grid: the tokenizer's code-map grid (h, w).
      num_classes: the labels of a conditional model; ignored otherwise.

    Returns:
      The module.
    """
    if not config.patch and config.space == "pixels" and len(tokens_grid) < 2:
        raise LatentRunError(
            "the run's code is not a map, so no patch matches its tokens: set config.patch "
            "(e.g. 4 for 28×28 images: 49 tokens)"
        )
    patch = config.patch or (1 if config.space == "latent" else shape[0] // tokens_grid[0])
    dit.check_dit_shape(shape, patch, config.width, config.heads)
    return dit.DiT(
        tuple(shape),
        patch,
        config.width,
        config.depth,
        config.heads,
        num_classes if config.conditional else 0,
    )


def _optimizer(config) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, max(config.warmup_steps, 1), max(config.num_steps, 2)
    )
    clip = [optax.clip_by_global_norm(config.grad_clip)] if config.grad_clip else []
    return optax.chain(*clip, optax.adamw(schedule, weight_decay=config.weight_decay))


def _tokenizer_record(tokenizer: Restored) -> dict:
    return {
        "workdir": str(pathlib.Path(tokenizer.workdir).resolve()),
        "params_sha256": provenance.params_sha256(tokenizer.params),
        "step": int(tokenizer.meta.get("step", 0)),
    }


def _check_resume(saved: dict, config, tokenizer: dict, workdir: Workdir) -> None:
    """Refuses, in one line, a rerun on another tokenizer or with another model or data."""
    if saved["tokenizer"]["params_sha256"] != tokenizer["params_sha256"]:
        raise LatentRunError(
            f"{workdir.path} was trained on the tokenizer {saved['tokenizer']['workdir']} at "
            f"step {saved['tokenizer']['step']}, whose parameters have changed since (now step "
            f"{tokenizer['step']}): train a new latent run in another --workdir"
        )
    before = saved["config"]
    changed = sorted(
        name
        for name, value in before.items()
        if name not in RESUMABLE and config.get(name) != value
    )
    if changed:
        was = ", ".join(f"{name}={before[name]!r}" for name in changed)
        raise LatentRunError(
            f"{workdir.path} was trained with {was}; only {', '.join(RESUMABLE)} may change on "
            "a rerun: use another --workdir for another model"
        )


def train_latent(config, tokenizer_dir, workdir=None, *, progress: bool = True) -> dict:
    """Trains (or resumes) a latent diffusion run on a tokenizer run's codes.

    Args:
      config: the latent run's config (``latent_config()`` with overrides).
      tokenizer_dir: the tokenizer run's workdir (a model whose code is a map, for
        ``space = "latent"``; any run in pixel space, whose data it reads).
      workdir: the latent run's directory; None for ``TOKENIZER/latent_diffusion``.
      progress: show a progress bar.

    Returns:
      The last record: ``step``, ``loss`` (the last call's mean), ``examples_per_s``,
      ``elapsed_s``, ``stopped_by`` (a signal's name, or None).

    Raises:
      LatentRunError: a tokenizer without a code map, another tokenizer or config on a
        rerun, or a config the DiT cannot build.
    """
    validate_latent(config)
    tokenizer = restore(tokenizer_dir)
    wd = Workdir(workdir or pathlib.Path(tokenizer_dir) / DEFAULT_DIR)
    (shape, *upper) = tokenizer.model.layer_shapes
    if config.space == "latent" and (upper or len(shape) != 3):
        raise LatentRunError(
            f"{tokenizer_dir} is not a tokenizer: its code is "
            f"{'several layers' if upper else 'a vector'}, not a map; train one with "
            "model.arch=conv_map (e.g. experiments/configs/mnist_tokenizer.py)"
        )
    wd.path.mkdir(parents=True, exist_ok=True)
    with one_writer(wd), stop_requests() as stop:
        return _train(config, tokenizer, wd, stop, progress)


def _train(config, tokenizer: Restored, wd: Workdir, stop, progress: bool) -> dict:
    record = read_json(wd / RECORD)
    identity = _tokenizer_record(tokenizer)
    if record is not None:
        _check_resume(record, config, identity, wd)
    mean, scale, labels = _encoded_training_split(tokenizer, config.space, config.max_examples)
    if record is None:  # the normaliser is computed once, from the first run's encodings
        normaliser = _normaliser(config.space, mean, scale)
    else:
        normaliser = Normaliser.from_record(record["normaliser"])
    shape = mean.shape[1:]
    num_classes = tokenizer.info.num_classes
    module = build_dit(config, shape, tuple(tokenizer.model.layer_shapes[0][:-1]), num_classes)
    if config.conditional and num_classes == 0:
        raise LatentRunError("conditional=True needs a labelled data set; this one has none")
    written = {
        "tokenizer": identity,
        "config": config.to_dict(),
        "space": config.space,
        "shape": list(shape),
        "patch": module.patch,
        "tokens": module.grid[0] * module.grid[1],
        "num_classes": module.num_classes,
        "normaliser": normaliser.as_record(),
    }
    if written != record:  # a rerun that changes nothing rewrites nothing
        write_json_atomic(wd / RECORD, written)
    table = TrainingTable(
        jnp.asarray(normaliser.forward(mean)),
        None if scale is None else jnp.asarray(scale / normaliser.scale),
        jnp.asarray(labels),
    )
    tx = _optimizer(config)
    init_key, train_key = jax.random.split(jax.random.key(config.seed))
    params = dit.init_dit(module, init_key)
    state = {
        "params": params,  # the EMA: what is sampled
        "online": params,
        "opt_state": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
    }
    ckpt = checkpoint.Checkpointer(wd.checkpoints)
    restored = ckpt.restore(
        jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    )
    if restored is None:  # records of a start killed before its first save go
        wd.truncate_metrics(0)
    else:
        state = restored[0]
        wd.truncate_metrics(int(state["step"]))
        log.info("resumed from step %d in %s", int(state["step"]), wd.path)
    run_call = _compiled_call(module, tx, table, config, train_key)
    writer = writers.MetricsWriter(wd, required=writers.LATENT_METRIC_KEYS)
    start = int(state["step"])
    calls = math.ceil((config.num_steps - start) / config.steps_per_call)
    started = time.perf_counter()
    last: dict[str, Any] = {"step": start, "loss": float("nan")}
    bar = progress_lib.bar(
        total=config.num_steps, initial=start, desc="latent DiT", enabled=progress
    )
    every = progress_lib.log_every(calls)  # off a terminal: about ten lines a run
    try:
        for call in range(max(calls, 0)):
            tick = time.perf_counter()
            steps = min(config.steps_per_call, config.num_steps - int(state["step"]))
            state, losses = run_call(state, steps)
            loss = float(np.mean(jax.device_get(losses)))
            step = int(state["step"])
            if not math.isfinite(loss):
                raise LatentRunError(
                    f"the flow-matching loss is not finite by step {step}: lower learning_rate "
                    "(or set grad_clip) and rerun in another --workdir"
                )
            elapsed = time.perf_counter() - tick
            last = {
                "step": step,
                "split": "train",
                "loss": loss,
                "examples_per_s": steps * config.batch_size / elapsed,
                "elapsed_s": time.perf_counter() - started,
            }
            writer.write(last)
            bar.update(steps)
            bar.set_postfix(loss=f"{loss:.4f}")
            if bar.disable and progress and (call % every == 0 or call + 1 == calls):
                log.info(
                    "latent DiT step %d/%d: loss %.4f, %.0f examples/s",
                    step,
                    config.num_steps,
                    loss,
                    last["examples_per_s"],
                )
            done = step >= config.num_steps
            if done or step % config.checkpoint_every < steps or stop["signal"]:
                ckpt.save(step, state, {"step": step, "loss": loss})
            if stop["signal"]:
                break
    finally:
        bar.close()
        writer.close()
        ckpt.close()
    return {**last, "stopped_by": stop["signal"]}


def _compiled_call(module, tx, table: TrainingTable, config, key):
    """(state, steps) → (state, losses): ``steps`` optimizer steps in one compiled scan
    (compiled once per length: every call but perhaps the last has the same)."""
    n = table.mean.shape[0]
    labels_on = module.num_classes > 0

    def loss_of(params, step_key):
        rows_key, noise_key, loss_key = jax.random.split(step_key, 3)
        rows = jax.random.randint(rows_key, (config.batch_size,), 0, n)
        x1 = table.mean[rows]
        if table.scale is not None:  # a draw z ~ q(z|x), normalised
            x1 = x1 + table.scale[rows] * jax.random.normal(noise_key, x1.shape)
        labels = table.labels[rows] if labels_on else None
        return flow_matching.loss(
            module, params, x1, loss_key, labels, label_dropout=config.label_dropout
        )

    def one_step(state, _):
        step_key = jax.random.fold_in(key, state["step"])
        loss, grads = jax.value_and_grad(loss_of)(state["online"], step_key)
        updates, opt_state = tx.update(grads, state["opt_state"], state["online"])
        online = optax.apply_updates(state["online"], updates)
        ema = optax.incremental_update(online, state["params"], 1.0 - config.ema_decay)
        return {
            "params": ema,
            "online": online,
            "opt_state": opt_state,
            "step": state["step"] + 1,
        }, loss

    return jax.jit(
        lambda state, steps: jax.lax.scan(one_step, state, None, length=steps), static_argnums=1
    )


@dataclasses.dataclass
class LatentDiffusion:
    """A trained latent diffusion run, ready to sample (``load_latent``).

    Attributes:
      module: the DiT.
      params: the EMA of its weights.
      normaliser: the codes' per-channel normalisation.
      space: "latent" (samples are code maps) or "pixels" (images in [0, 1]).
      sampling_steps: Heun steps of the ODE.
      tokenizer: the tokenizer's record (workdir, params_sha256, step).
      meta: the checkpoint's record (step, loss).
    """

    module: dit.DiT
    params: dict
    normaliser: Normaliser
    space: str
    sampling_steps: int
    tokenizer: dict
    meta: dict

    def sample(self, key, n: int, labels=None, guidance: float = 0.0):
        """Code maps (latent space) or images (pixel space) from the ODE, started at noise
        drawn from ``key``.

        Args:
          key: the PRNG key of the draw, or an int seed.
          n: how many.
          labels: the class of each, for a conditional run; else None (a conditional run
            then samples p(x) with its null label).
          guidance: the classifier-free guidance weight w (with labels).

        Returns:
          (n, h, w, c) codes, or (n, H, W, C) images in [0, 1].
        """
        key = jax.random.key(key) if isinstance(key, int) else key
        classes = self.module.num_classes
        if labels is not None and not classes:
            raise ValueError("labels were given but this latent run was trained without labels")
        if labels is None and classes:
            labels = jnp.full((n,), classes)
        elif labels is not None:
            labels = jnp.broadcast_to(jnp.asarray(labels, jnp.int32), (n,))
        x0 = jax.random.normal(key, (n, *self.module.shape))
        if n > SAMPLE_CHUNK:  # minutes on a CPU: say so
            log.info(
                "drawing %d samples with the latent DiT (%d ODE steps), %d at a time",
                n,
                self.sampling_steps,
                SAMPLE_CHUNK,
            )
        # The ODE of each draw is its own: solved SAMPLE_CHUNK draws at a time, memory stays
        # bounded for any n (10,000 MNIST images at width 128 would hold ~1 GB at once).
        x1 = jnp.concatenate(
            [
                flow_matching.solve(
                    self.module,
                    self.params,
                    x0[start : start + SAMPLE_CHUNK],
                    None if labels is None else labels[start : start + SAMPLE_CHUNK],
                    float(guidance),
                    self.sampling_steps,
                )
                for start in range(0, n, SAMPLE_CHUNK)
            ]
        )
        if self.space == "pixels":
            return jnp.clip(0.5 * (x1 + 1.0), 0.0, 1.0)
        return self.normaliser.inverse(x1)


def load_latent(workdir, *, tokenizer_sha256: str | None = None) -> LatentDiffusion:
    """A trained latent diffusion run from its workdir (the EMA weights of its newest save).

    Args:
      workdir: the latent run's directory.
      tokenizer_sha256: the parameters of the tokenizer it will decode with; a run trained
        on other parameters is refused.

    Returns:
      The run.

    Raises:
      LatentRunError: no latent run there, or one trained on another tokenizer.
    """
    wd = Workdir(workdir)
    record = read_json(wd / RECORD)
    if record is None:
        raise LatentRunError(
            f"{wd.path} holds no latent diffusion run; train one with experiments.train_latent "
            "--tokenizer TOKENIZER_DIR"
        )
    if tokenizer_sha256 is not None and record["tokenizer"]["params_sha256"] != tokenizer_sha256:
        raise LatentRunError(
            f"the latent run {wd.path} was trained on other parameters of its tokenizer (step "
            f"{record['tokenizer']['step']}); retrain it: experiments.train_latent --tokenizer "
            f"{record['tokenizer']['workdir']} --workdir NEW_DIR"
        )
    config = ml_collections.ConfigDict(record["config"])
    module = dit.DiT(
        tuple(record["shape"]),
        record["patch"],
        config.width,
        config.depth,
        config.heads,
        record["num_classes"],
    )
    ckpt = checkpoint.Checkpointer(wd.checkpoints)
    restored = ckpt.restore_params("latest")
    ckpt.close()
    if restored is None:
        raise LatentRunError(f"{wd.path} has no checkpoint yet; let its training save one")
    params, meta = restored
    return LatentDiffusion(
        module,
        jax.tree_util.tree_map(jnp.asarray, params),
        Normaliser.from_record(record["normaliser"]),
        record["space"],
        config.sampling_steps,
        record["tokenizer"],
        meta,
    )
