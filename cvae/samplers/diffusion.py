"""``diffusion``: a flow-matching model over latent codes, sampled by solving its ODE.

Conditional flow matching with the linear (rectified-flow) path (Lipman et al., 2023;
Liu et al., 2023). With z₁ a standardised training code and z₀ ~ N(0, I),

    z_t = (1 − t) z₀ + t z₁,   t ~ U(0, 1),

and a network v_θ(z_t, t, y) regresses the path's velocity z₁ − z₀:

    L(θ) = E ‖v_θ(z_t, t, y) − (z₁ − z₀)‖².

Samples solve dz/dt = v_θ(z, t, y) from t = 0 (noise) to t = 1 (codes); the same ODE,
run backwards with the divergence of v_θ, gives the exact log-density of a code (the
instantaneous change of variables of continuous normalising flows):

    log p₁(z₁) = log N(z₀; 0, I) − ∫₀¹ ∇·v_θ(z_t, t) dt.

Why this rather than DDPM's noise-prediction objective: one regression loss with no noise
schedule to choose, a deterministic sampler whose number of steps is the only knob, and a
log-density from the same network, so the sampler keeps the ``log_prob`` of the others.

For a conditional model the network also sees the label; during training the label is
dropped (replaced by a null class) for 10% of the codes, so one network learns p(z|y) and
p(z), and sampling with classifier-free guidance (Ho & Salimans, 2022) uses

    v = v(z, t, ∅) + (1 + w) (v(z, t, y) − v(z, t, ∅)),

w = 0 the plain conditional model, w > 0 sharper classes. The ODE is solved with Heun's
second-order method at a fixed number of steps (``num_steps``), all in one compiled loop
(``cvae.models.flow_matching.solve``, which the latent DiT shares).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from cvae import progress as progress_lib
from cvae.models import flow_matching
from cvae.samplers.kind import Kind, load_standardisation, save_standardisation

LABEL_DROPOUT = 0.1  # the share of codes trained as unconditional (classifier-free guidance)


class VelocityNet(nn.Module):
    """v_θ(z, t, y): a residual MLP over the code, with the time (sinusoidal features) and
    the label (an embedding; class ``num_classes`` is the null label) added to each block."""

    dim: int
    width: int = 256
    depth: int = 3
    num_classes: int = 0

    @nn.compact
    def __call__(self, z, t, labels=None):
        frequencies = jnp.exp(jnp.linspace(0.0, math.log(1000.0), self.width // 2))
        angles = t[:, None] * frequencies[None]
        context = nn.Dense(self.width)(jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], -1))
        if self.num_classes:
            context = context + nn.Embed(self.num_classes + 1, self.width)(labels)
        h = nn.Dense(self.width)(z)
        for _ in range(self.depth):
            block = nn.LayerNorm()(h) + context
            block = nn.Dense(self.width)(nn.silu(block))
            h = h + nn.Dense(self.width)(nn.silu(block))
        return nn.Dense(self.dim, kernel_init=nn.initializers.zeros)(nn.silu(nn.LayerNorm()(h)))


def initial_params(module: VelocityNet, key) -> dict:
    """The velocity network's freshly initialised params (also the template a saved
    sampler's params are read into).

    Args:
      module: the network.
      key: the PRNG key of the initialisation.

    Returns:
      The params pytree.
    """
    return flow_matching.init_params(module, key, (module.dim,))


@dataclasses.dataclass
class DiffusionSampler:
    """z = shift + scale ⊙ ODE(v_θ; z₀ ~ N(0, I)): the flow-matching model over the
    standardised codes."""

    kind = "diffusion"
    params: dict
    dim: int
    width: int
    depth: int
    num_classes: int
    shift: np.ndarray
    scale: np.ndarray
    num_steps: int = 32  # Heun steps of the sampling ODE (2 network calls each)

    @property
    def module(self) -> VelocityNet:
        """The velocity network."""
        return VelocityNet(self.dim, self.width, self.depth, self.num_classes)

    def sample(self, key, num_samples: int, labels=None, guidance: float = 0.0):
        """Codes from the ODE, started at z₀ ~ N(0, I) drawn from ``key``.

        Args:
          key: the PRNG key of the draw.
          num_samples: how many codes.
          labels: the class of each code, for a model fitted with labels; else None.
          guidance: the classifier-free guidance weight w (with labels).

        Returns:
          (num_samples, d) codes.
        """
        if labels is not None and not self.num_classes:
            raise ValueError("labels were given but this sampler was fitted without labels")
        if labels is None and self.num_classes:
            labels = jnp.full((num_samples,), self.num_classes)  # the null label: p(z)
        z0 = jax.random.normal(key, (num_samples, self.dim))
        labels = None if labels is None else jnp.asarray(labels, jnp.int32)
        z1 = flow_matching.solve(
            self.module, self.params, z0, labels, float(guidance), self.num_steps
        )
        return jnp.asarray(self.shift) + jnp.asarray(self.scale) * z1

    def log_prob(self, z, num_steps: int | None = None):
        """Exact log p(z) of the unconditional model: the ODE run back to t = 0 with the
        divergence of v_θ (Heun steps), plus the standardisation's Jacobian.

        Args:
          z: codes (N, d).
          num_steps: Heun steps of the backward ODE (default: the sampler's).

        Returns:
          (N,) log-densities.
        """
        standard = (jnp.asarray(z, jnp.float32) - self.shift) / self.scale
        log_p = _log_density(
            self.module, self.params, standard, num_steps or self.num_steps, self.num_classes
        )
        return log_p - float(np.sum(np.log(self.scale)))


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _log_density(module, params, z1, num_steps, num_classes):
    """log p₁(z₁): Heun steps from t = 1 back to 0 of (z, −∫∇·v), the exact divergence."""
    null = jnp.full((1,), num_classes) if num_classes else None  # p(z): the null label

    def velocity_and_divergence(z, t):
        def one(zi):
            f = lambda x: module.apply({"params": params}, x[None], jnp.full((1,), t), null)[0]
            return f(zi), jnp.trace(jax.jacfwd(f)(zi))

        return jax.vmap(one)(z)

    dt = 1.0 / num_steps

    def step(i, carry):
        z, integral = carry
        t = 1.0 - i * dt
        v1, d1 = velocity_and_divergence(z, t)
        predicted = z - dt * v1
        v2, d2 = velocity_and_divergence(predicted, t - dt)
        return z - 0.5 * dt * (v1 + v2), integral + 0.5 * dt * (d1 + d2)

    z0, integral = jax.lax.fori_loop(0, num_steps, step, (z1, jnp.zeros(z1.shape[0])))
    log_normal = -0.5 * jnp.sum(z0**2 + math.log(2 * math.pi), axis=-1)
    return log_normal - integral


def fit_diffusion(
    codes,
    key,
    labels=None,
    num_classes: int = 0,
    *,
    width: int = 256,
    depth: int = 3,
    num_updates: int | None = None,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    progress: bool = False,
) -> DiffusionSampler:
    """Fits the flow-matching model to the standardised codes.

    Adam with a cosine-decayed learning rate, each update on ``batch_size`` codes drawn
    with replacement; the updates run as compiled ``lax.scan`` blocks of 250 (a progress
    bar counts the blocks). The codes sit on the device once (N × d floats: 60,000 codes of
    16 dimensions are 3.8 MB); every batch is a gather from them.

    Args:
      codes: (N, d).
      key: the PRNG key of the initialisation, the batches, the noise and the times.
      labels: (N,) int labels for a class-conditional sampler; else None.
      num_classes: the number of classes when labels are given.
      width: the velocity network's width.
      depth: its residual blocks.
      num_updates: optimizer steps, rounded up to a whole block of 250; None for 200
        passes over the codes, at least 1,000 updates and at most 8,000.
      batch_size: codes per step.
      learning_rate: Adam's peak step size.
      progress: show a progress bar.

    Returns:
      The fitted sampler.
    """
    codes = np.asarray(codes, np.float32)
    if labels is not None and num_classes < 1:
        raise ValueError("labels need num_classes ≥ 1")
    num_classes = num_classes if labels is not None else 0
    shift, scale = codes.mean(axis=0), codes.std(axis=0) + 1e-6
    standard = jnp.asarray((codes - shift) / scale)
    y_all = None if labels is None else jnp.asarray(labels, jnp.int32)
    n, dim = codes.shape
    if num_updates is None:
        num_updates = min(8000, max(1000, 200 * n // batch_size))
    module = VelocityNet(dim, width, depth, num_classes)
    init_key, train_key = jax.random.split(key)
    params = initial_params(module, init_key)
    block = 250
    blocks = math.ceil(num_updates / block)
    tx = optax.adam(optax.cosine_decay_schedule(learning_rate, blocks * block))

    def loss(params, step_key):
        rows_key, noise_key, time_key, drop_key = jax.random.split(step_key, 4)
        rows = jax.random.randint(rows_key, (batch_size,), 0, n)
        z1 = standard[rows]
        z0 = jax.random.normal(noise_key, z1.shape)
        t = jax.random.uniform(time_key, (batch_size,))
        zt = (1.0 - t[:, None]) * z0 + t[:, None] * z1
        y = None
        if y_all is not None:
            dropped = jax.random.bernoulli(drop_key, LABEL_DROPOUT, (batch_size,))
            y = jnp.where(dropped, num_classes, y_all[rows])
        v = module.bind({"params": params})(zt, t, y)
        return jnp.mean(jnp.sum((v - (z1 - z0)) ** 2, axis=-1))

    @jax.jit
    def run_block(params, opt_state, start):
        def update(carry, i):
            params, opt_state = carry
            value, grads = jax.value_and_grad(loss)(params, jax.random.fold_in(train_key, i))
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        (params, opt_state), values = jax.lax.scan(
            update, (params, opt_state), start + jnp.arange(block)
        )
        return params, opt_state, values

    opt_state = tx.init(params)
    for b in progress_lib.bar(range(blocks), desc="fit diffusion", unit="block", enabled=progress):
        params, opt_state, _ = run_block(params, opt_state, b * block)
    return DiffusionSampler(jax.device_get(params), dim, width, depth, num_classes, shift, scale)


def _fit(codes, key, *, seed: int, progress: bool, labels, num_classes: int, budget: dict):
    del seed
    return fit_diffusion(
        codes,
        key,
        labels,
        num_classes,
        num_updates=budget["diffusion_updates"] or None,
        progress=progress,
    )


def _save(sampler: DiffusionSampler, directory: pathlib.Path) -> dict:
    (directory / "params.msgpack").write_bytes(serialization.to_bytes(sampler.params))
    save_standardisation(directory, sampler.shift, sampler.scale)
    return {
        "dim": sampler.dim,
        "width": sampler.width,
        "depth": sampler.depth,
        "num_classes": sampler.num_classes,
    }


def _load(directory: pathlib.Path, shape: dict) -> DiffusionSampler:
    module = VelocityNet(shape["dim"], shape["width"], shape["depth"], shape["num_classes"])
    template = initial_params(module, jax.random.key(0))
    params = serialization.from_bytes(template, (directory / "params.msgpack").read_bytes())
    shift, scale = load_standardisation(directory)
    return DiffusionSampler(
        jax.device_get(params),
        shape["dim"],
        shape["width"],
        shape["depth"],
        shape["num_classes"],
        shift,
        scale,
    )


KIND = Kind("diffusion", _fit, ("diffusion_updates",), _save, _load)
