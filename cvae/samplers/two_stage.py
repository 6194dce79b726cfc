"""``two_stage``: the two-stage VAE of Dai & Wipf (2019): a second, small VAE trained on
the standardised codes — Gaussian decoder N(z; D(u), γ I) with a learned γ, prior
u ~ N(0, I) — and sampled through its own prior. Its ``log_prob`` is an importance-sampled
estimate."""

from __future__ import annotations

import dataclasses
import math
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from cvae.models.posteriors import diag_normal_log_prob
from cvae.samplers.kind import Kind, load_standardisation, save_standardisation


class _CodeVAE(nn.Module):
    """The second stage: an MLP VAE over d-dimensional codes, latent u of the same size."""

    dim: int
    width: int = 256

    def setup(self):
        self.encoder_trunk = [nn.Dense(self.width), nn.Dense(self.width)]
        self.encoder_mean, self.encoder_log_var = nn.Dense(self.dim), nn.Dense(self.dim)
        self.decoder_trunk = [nn.Dense(self.width), nn.Dense(self.width)]
        self.decoder_mean = nn.Dense(self.dim)
        self.log_gamma = self.param("log_gamma", nn.initializers.zeros, ())

    def encode(self, z):
        h = z
        for layer in self.encoder_trunk:
            h = nn.relu(layer(h))
        return self.encoder_mean(h), self.encoder_log_var(h)

    def decode(self, u):
        h = u
        for layer in self.decoder_trunk:
            h = nn.relu(layer(h))
        return self.decoder_mean(h)

    def __call__(self, z):
        mean, log_var = self.encode(z)
        return mean, log_var, self.decode(mean)


def _code_log_weights(module, params, z, key, k: int):
    """log p(z|u) + log p(u) − log q(u|z) for k draws u ~ q(u|z): shape (k, B)."""
    mean, log_var = module.apply({"params": params}, z, method=module.encode)
    u = mean + jnp.exp(0.5 * log_var) * jax.random.normal(key, (k,) + mean.shape)
    decoded = module.apply({"params": params}, u, method=module.decode)
    log_gamma = jnp.broadcast_to(params["log_gamma"], z.shape)
    return (
        diag_normal_log_prob(z, decoded, log_gamma)
        + diag_normal_log_prob(u, 0.0, jnp.zeros_like(u))
        - diag_normal_log_prob(u, mean, log_var)
    )


@dataclasses.dataclass
class TwoStageSampler:
    """z = shift + scale ⊙ D(u), u ~ N(0, I): the second-stage VAE's decoder mean, over
    standardised codes."""

    kind = "two_stage"
    params: dict
    dim: int
    width: int
    shift: np.ndarray
    scale: np.ndarray

    @property
    def module(self) -> _CodeVAE:
        return _CodeVAE(self.dim, self.width)

    def sample(self, key, num_samples: int):
        """u ~ N(0, I) through the second stage's decoder mean, the standardisation undone.

        Args:
          key: the PRNG key of the draw.
          num_samples: how many codes.

        Returns:
          (num_samples, d) codes.
        """
        u = jax.random.normal(key, (num_samples, self.dim))
        decoded = self.module.apply({"params": self.params}, u, method=_CodeVAE.decode)
        assert isinstance(decoded, jax.Array)  # apply returns (out, state) only when mutable
        return jnp.asarray(self.shift) + jnp.asarray(self.scale) * decoded

    def log_prob(self, z, key=None, k: int = 200):
        """Importance-sampled log p(z), the standardisation's Jacobian included.

        Args:
          z: codes (N, d).
          key: the PRNG key of the importance samples; None for key 0.
          k: importance samples per code.

        Returns:
          (N,) log-density estimates.
        """
        key = jax.random.key(0) if key is None else key
        standard = (jnp.asarray(z) - self.shift) / self.scale
        log_w = _code_log_weights(self.module, self.params, standard, key, k)
        return jax.nn.logsumexp(log_w, axis=0) - math.log(k) - float(np.sum(np.log(self.scale)))


def fit_two_stage(
    codes,
    key,
    *,
    width: int = 256,
    epochs: int = 100,
    warmup_epochs: int = 20,
    batch_size: int = 100,
    learning_rate: float = 1e-3,
) -> TwoStageSampler:
    """Trains the second stage of Dai & Wipf (2019) on the standardised codes.

    Adam, one-sample ELBO with the learned γ of Dai & Wipf, the whole fit one compiled
    ``lax.scan`` over epochs and batches. Standardising is what keeps it alive: on raw codes
    of variance ≈ 0.5, below the initial γ = 1, u bought less reconstruction than its KL cost
    and the second stage collapsed (every sample the mean code). The KL weight also warms up
    from 0 to 1 over ``warmup_epochs``.

    Args:
      codes: (N, d).
      key: the PRNG key of the initialisation, order and samples.
      width: the second VAE's hidden width.
      epochs: passes over the codes.
      warmup_epochs: epochs over which the KL weight rises from 0 to 1.
      batch_size: codes per step.
      learning_rate: Adam's step size.

    Returns:
      The fitted sampler.
    """
    codes = np.asarray(codes, np.float32)
    shift, scale = codes.mean(axis=0), codes.std(axis=0) + 1e-6
    standard = jnp.asarray((codes - shift) / scale)
    n, dim = codes.shape
    batch_size = min(batch_size, n)
    steps = n // batch_size
    warmup_steps = max(1, warmup_epochs * steps)
    module = _CodeVAE(dim, width)
    init_key, order_key, noise_key = jax.random.split(key, 3)
    params = module.init(init_key, standard[:1])["params"]
    tx = optax.adam(learning_rate)

    def loss(params, batch, key, kl_weight):
        bound = module.bind({"params": params})
        mean, log_var = bound.encode(batch)
        u = mean + jnp.exp(0.5 * log_var) * jax.random.normal(key, mean.shape)
        decoded = bound.decode(u)
        log_gamma = jnp.broadcast_to(params["log_gamma"], batch.shape)
        kl = 0.5 * jnp.sum(jnp.exp(log_var) + mean**2 - 1.0 - log_var, axis=-1)
        return -jnp.mean(diag_normal_log_prob(batch, decoded, log_gamma) - kl_weight * kl)

    def epoch(carry, e):
        params, opt_state = carry
        order = jax.random.permutation(jax.random.fold_in(order_key, e), n)[: steps * batch_size]

        def step(carry, s):
            params, opt_state = carry
            batch = standard[jax.lax.dynamic_slice_in_dim(order, s * batch_size, batch_size)]
            t = e * steps + s
            kl_weight = jnp.minimum(1.0, (t + 1) / warmup_steps)
            grads = jax.grad(loss)(params, batch, jax.random.fold_in(noise_key, t), kl_weight)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        return jax.lax.scan(step, (params, opt_state), jnp.arange(steps))[0], None

    (params, _), _ = jax.jit(lambda p, o: jax.lax.scan(epoch, (p, o), jnp.arange(epochs)))(
        params, tx.init(params)
    )
    return TwoStageSampler(jax.device_get(params), dim, width, shift, scale)


def _fit(codes, key, *, seed: int, progress: bool, labels, num_classes: int, budget: dict):
    del seed, progress, labels, num_classes  # one compiled program; fitted per class
    epochs = budget["two_stage_epochs"]
    return fit_two_stage(codes, key, epochs=epochs, warmup_epochs=max(1, epochs // 5))


def _save(sampler: TwoStageSampler, directory: pathlib.Path) -> dict:
    (directory / "params.msgpack").write_bytes(serialization.to_bytes(sampler.params))
    save_standardisation(directory, sampler.shift, sampler.scale)
    return {"dim": sampler.dim, "width": sampler.width}


def _load(directory: pathlib.Path, shape: dict) -> TwoStageSampler:
    template = _CodeVAE(shape["dim"], shape["width"]).init(
        jax.random.key(0), jnp.zeros((1, shape["dim"]))
    )["params"]
    params = serialization.from_bytes(template, (directory / "params.msgpack").read_bytes())
    shift, scale = load_standardisation(directory)
    return TwoStageSampler(jax.device_get(params), shape["dim"], shape["width"], shift, scale)


KIND = Kind("two_stage", _fit, ("two_stage_epochs",), _save, _load)
