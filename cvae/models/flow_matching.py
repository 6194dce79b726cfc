"""Flow matching for arrays of any shape: the training loss, the guided velocity and the
ODE sampler of a velocity network v_θ(x, t, y) (``cvae.models.dit.DiT``, or any module
called as ``module.apply({"params": p}, x, t, labels)``).

Conditional flow matching on the linear (rectified-flow) path (Lipman et al., 2023; Liu et
al., 2023): with x₁ a data point and x₀ ~ N(0, I) of its shape,

    x_t = (1 − t) x₀ + t x₁,   t ~ U(0, 1),   L(θ) = E mean_j (v_θ(x_t, t, y) − (x₁ − x₀))_j²,

and samples solve dx/dt = v_θ(x, t, y) from t = 0 (noise) to t = 1 (data) with Heun's
second-order method in ``num_steps`` equal steps (2 network calls a step), in one
compiled loop. With labels, a share of them (``label_dropout``) is replaced by the null
label ``num_classes`` in training, and classifier-free guidance (Ho & Salimans, 2022)
samples with v = v(x, t, ∅) + (1 + w)(v(x, t, y) − v(x, t, ∅)): w = 0 is the conditional
model itself (its unguided velocity, one network call), w > 0 sharper classes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

LABEL_DROPOUT = 0.1  # the share of labels trained as the null label (classifier-free guidance)


def init_params(module, key, shape) -> dict:
    """A velocity network's fresh parameters, traced on one zero point of ``shape`` (also
    the template saved parameters are read into).

    Args:
      module: the network, called as ``(x, t, labels)``; labels when it has ``num_classes``.
      key: the PRNG key of the initialisation.
      shape: one data point's shape: (d,) or (H, W, C).

    Returns:
      The params pytree.
    """
    labels = jnp.zeros((1,), jnp.int32) if module.num_classes else None
    x = jnp.zeros((1, *shape), jnp.float32)
    return module.init(key, x, jnp.zeros((1,)), labels)["params"]


def _along(t, x):
    """Times (B,) shaped to broadcast against x (B, …)."""
    return t.reshape((-1,) + (1,) * (x.ndim - 1))


def loss(module, params, x1, key, labels=None, *, label_dropout: float = LABEL_DROPOUT):
    """The flow-matching loss of one batch: the mean over examples and elements of
    (v_θ(x_t, t, y) − (x₁ − x₀))².

    Args:
      module: the velocity network (its ``num_classes`` names the null label).
      params: its parameters.
      x1: data (B, …).
      key: the PRNG key of the noise x₀, the times t and the dropped labels.
      labels: (B,) int labels for a class-conditional network; else None.
      label_dropout: the share of labels replaced by the null label.

    Returns:
      The scalar loss.
    """
    noise_key, time_key, drop_key = jax.random.split(key, 3)
    x0 = jax.random.normal(noise_key, x1.shape, x1.dtype)
    t = jax.random.uniform(time_key, (x1.shape[0],), x1.dtype)
    xt = (1.0 - _along(t, x1)) * x0 + _along(t, x1) * x1
    y = None
    if labels is not None:
        dropped = jax.random.bernoulli(drop_key, label_dropout, labels.shape)
        y = jnp.where(dropped, module.num_classes, labels)
    v = module.apply({"params": params}, xt, t, y)
    return jnp.mean((v - (x1 - x0)) ** 2)


def velocity(module, params, x, t, labels=None, guidance: float = 0.0):
    """v(x, t), guided when labels are given and w ≠ 0 (the null label's velocity mixed in).

    Args:
      module: the velocity network.
      params: its parameters.
      x: points (B, …).
      t: the time, a scalar.
      labels: (B,) int labels (the null label for p(x)); None for an unconditional network.
      guidance: the guidance weight w.

    Returns:
      (B, …) velocities.
    """
    times = jnp.full((x.shape[0],), t, x.dtype)
    conditional = module.apply({"params": params}, x, times, labels)
    if labels is None or guidance == 0.0:
        return conditional
    null = jnp.full_like(labels, module.num_classes)
    unconditional = module.apply({"params": params}, x, times, null)
    return unconditional + (1.0 + guidance) * (conditional - unconditional)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def solve(module, params, x0, labels, guidance: float, num_steps: int):
    """Heun's method for dx/dt = v(x, t, y) from t = 0 to 1 in ``num_steps`` equal steps.

    Args:
      module: the velocity network (static: compiled once per module).
      params: its parameters.
      x0: the starting noise (B, …).
      labels: (B,) int labels, or None.
      guidance: the guidance weight w (static).
      num_steps: Heun steps (static).

    Returns:
      (B, …) samples at t = 1.
    """
    dt = 1.0 / num_steps
    v = functools.partial(velocity, module, params, labels=labels, guidance=guidance)

    def step(i, x):
        t = i * dt
        slope = v(x, t)
        predicted = x + dt * slope
        return x + 0.5 * dt * (slope + v(predicted, t + dt))

    return jax.lax.fori_loop(0, num_steps, step, x0)
