"""What every family of bound shares: the KL weight's warm-up, β per layer, the prior's
log-density, the per-dimension regulariser and the RAE's decoder-gradient penalty."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cvae.models.posteriors import DeterministicPosterior


def variables(params) -> dict:
    """Flax's variable dict of a model's parameters."""
    return {"params": params}


def kl_weight(step, beta: float, warmup_steps: int):
    """β_t = β · min(1, t / warmup_steps): the KL warm-up of Sønderby et al. (2016).

    β itself when ``warmup_steps`` ≤ 0. Branch-free, so β and the warm-up may be traced (a
    population's members differ in them).

    Args:
      step: the optimizer step t.
      beta: β.
      warmup_steps: the steps over which the weight rises from 0 to β.

    Returns:
      β_t as float32.
    """
    ramp = jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / jnp.maximum(warmup_steps, 1))
    return beta * jnp.where(jnp.asarray(warmup_steps) > 0, ramp, 1.0).astype(jnp.float32)


def per_layer(beta, depth: int) -> tuple:
    """β_l for each of ``depth`` layers, z₁'s first: ``beta`` itself if one per layer, else
    the one number repeated.

    Args:
      beta: one KL weight, or a tuple or list of ``depth`` of them.
      depth: the model's stochastic layers.

    Returns:
      ``depth`` weights.

    Raises:
      ValueError: a sequence of weights whose length is not ``depth``.
    """
    if not isinstance(beta, tuple | list):
        return (beta,) * depth
    if len(beta) != depth:
        raise ValueError(f"got {len(beta)} KL weights for a model of {depth} stochastic layers")
    return tuple(beta)


def regulariser_per_dim(posterior, code_l2: float = 0.0):
    """The per-dimension KL(q ‖ N(0, I)); for a point mass, the RAE code penalty (λ/2)·μ².

    Args:
      posterior: a batch's posterior.
      code_l2: λ of the code penalty (deterministic posteriors only).

    Returns:
      (B, d) nats.
    """
    if isinstance(posterior, DeterministicPosterior):
        return 0.5 * code_l2 * posterior.mean**2
    return posterior.kl_per_dim()


def prior_log_prob(model, params, z, *, train=False, dropout_key=None):
    """log p(z) under a one-layer model's prior (N(0, I) or the VampPrior).

    The VampPrior's pseudo-inputs pass the encoder with a dropout key of their own.

    Args:
      model: the VAE.
      params: its parameters.
      z: codes (…, d).
      train: training mode (dropout on).
      dropout_key: the dropout key when training.

    Returns:
      log p(z), one value per code.
    """
    rngs = {"dropout": jax.random.fold_in(dropout_key, 1)} if dropout_key is not None else {}
    return model.apply(variables(params), z, train=train, rngs=rngs, method=model.prior_log_prob)


def decoder_gradient_penalty(model, params, z, labels=None, *, train=False, rngs=None):
    """‖∇_z Σ_i D_i(z)‖² per example: the RAE-GP penalty of Ghosh et al. (2020).

    The squared norm of the gradient of the decoded image D(z) = E[x|z] (summed over pixels)
    at the codes z, computed as their implementation does, with one backward pass (the
    gradient of the summed output) rather than the full Jacobian. Examples do not interact
    in the decoder, so one gradient of the batch's sum gives every example's row.

    Args:
      model: the VAE.
      params: its parameters.
      z: codes (B, d).
      labels: int labels for a conditional model; else None.
      train: training mode (dropout on).
      rngs: Flax rngs (the dropout key) when training.

    Returns:
      (B,) penalties.
    """

    def decoded_sum(codes):
        dec = model.apply(
            variables(params), codes, labels, train=train, rngs=rngs or {}, method=model.decode
        )
        return jnp.sum(model.likelihood.mean(dec))

    return jnp.sum(jax.grad(decoded_sum)(z) ** 2, axis=-1)
