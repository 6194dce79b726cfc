"""Training objectives: the ELBO (with β, KL warm-up and free bits; for a deterministic
encoder the RAE's code and decoder-gradient penalties), the IWAE bound and WAE-MMD.

Pure functions of (model, params, batch, key): safe under jit and vmap. Each returns the
scalar loss to minimise and a dict of per-example terms in nats:
``{"recon": E_q log p(x|z), "kl": KL(q(z|x) ‖ p(z)), "elbo": recon − kl, …}``.
The ELBO and IWAE losses of a hierarchy (``cvae.models.hierarchy.Hierarchy``) are its
own, with the same signature and the same terms plus a KL term per layer.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from cvae.models import hierarchy
from cvae.models.posteriors import DeterministicPosterior


def _variables(params):
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


def elbo_loss(
    model,
    params,
    x,
    key,
    *,
    labels=None,
    beta=1.0,
    free_bits: float = 0.0,
    code_l2: float = 0.0,
    gradient_penalty=None,
    train: bool = False,
    dropout_key=None,
):
    """Negative β-ELBO with one reparameterised sample per example.

    ELBO(x) = E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)), the KL in closed form for the N(0, I)
    prior and estimated by log q(z|x) − log p(z) at the sample for the VampPrior. The loss is
    −mean_x E_q log p(x|z) + β Σ_j max(λ, mean_x KL_j): with free bits λ > 0 each latent
    dimension's batch-mean KL is floored at λ nats (Kingma et al., 2016, eq. 15), so
    dimensions under the floor receive no gradient pushing them to collapse.
    For a deterministic posterior the "kl" slot holds the code penalty and "elbo" is not
    a bound on log p(x); a ``gradient_penalty`` weight λ (None = off, which saves the extra
    backward pass) adds λ · mean ``decoder_gradient_penalty`` — the RAE-GP of Ghosh et
    al. (2020) — reported as the term "gp".

    Args:
      model: the VAE.
      params: its parameters.
      x: inputs in [0, 1], (B, H, W, C).
      key: the PRNG key of the sample(s).
      labels: int labels for a conditional model; else None.
      beta: β, the KL weight (``kl_weight`` for a warm-up); for a hierarchy one number or
        one per layer.
      free_bits: λ, the per-dimension KL floor in nats (0 = off).
      code_l2: the RAE code penalty's λ (deterministic posteriors).
      gradient_penalty: the RAE-GP weight, or None.
      train: training mode (dropout on).
      dropout_key: the dropout key when training.

    Returns:
      (loss, terms): the scalar loss and per-example "recon", "kl", "elbo" (and "gp"; for
      a hierarchy "kl_1" … "kl_L", see ``hierarchy.elbo_loss``).
    """
    if isinstance(model, hierarchy.Hierarchy):
        return hierarchy.elbo_loss(
            model, params, x, key, labels=labels, beta=beta, free_bits=free_bits
        )
    rngs = {"dropout": dropout_key} if dropout_key is not None else {}
    posterior, z, dec = model.apply(_variables(params), x, key, labels, train=train, rngs=rngs)
    recon = model.likelihood.log_prob(x, dec)
    if model.prior == "vamp":  # no closed form: the one-sample estimate log q(z|x) − log p(z)
        kl = posterior.log_prob(z) - prior_log_prob(
            model, params, z, train=train, dropout_key=dropout_key
        )
        penalty = jnp.mean(kl)
    else:
        kl_dims = regulariser_per_dim(posterior, code_l2)
        kl = jnp.sum(kl_dims, axis=-1)
        # Branch-free (free_bits may be a traced population hyperparameter); λ = 0 selects
        # the plain mean KL, exactly as without free bits.
        floored = jnp.sum(jnp.maximum(free_bits, jnp.mean(kl_dims, axis=0)))
        penalty = jnp.where(jnp.asarray(free_bits) > 0, floored, jnp.mean(kl))
    loss = -jnp.mean(recon) + beta * penalty
    terms = {"recon": recon, "kl": kl, "elbo": recon - kl}
    if gradient_penalty is not None:
        terms["gp"] = decoder_gradient_penalty(
            model, params, posterior.mean, labels, train=train, rngs=rngs
        )
        loss = loss + gradient_penalty * jnp.mean(terms["gp"])
    return loss, terms


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
            _variables(params), codes, labels, train=train, rngs=rngs or {}, method=model.decode
        )
        return jnp.sum(model.likelihood.mean(dec))

    return jnp.sum(jax.grad(decoded_sum)(z) ** 2, axis=-1)


# The inverse multiquadratics kernel's scales relative to C = 2 · d · σ_z² (σ_z = 1):
# Tolstikhin et al. (2018) sum the kernel over these to cover several length scales.
MMD_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def imq_mmd(a, b, scales=MMD_SCALES):
    """MMD² between two samples with the inverse-multiquadratics kernel.

    k(u, v) = Σ_s C_s / (C_s + ‖u − v‖²), C_s = 2 d s (Tolstikhin et al., 2018):
    [Σ_{i≠j} k(a_i, a_j) + Σ_{i≠j} k(b_i, b_j)] / (n(n−1)) − 2 Σ_{i,j} k(a_i, b_j) / n²,
    unbiased within each sample, ≈ 0 when both come from one distribution.

    Args:
      a: (n, d) samples.
      b: (n, d) samples.
      scales: the kernel's scales s relative to 2d.

    Returns:
      The scalar MMD² estimate.
    """
    n, d = a.shape

    def kernel(u, v):
        sq = jnp.sum((u[:, None, :] - v[None, :, :]) ** 2, axis=-1)
        return sum(2.0 * d * s / (2.0 * d * s + sq) for s in scales)

    off_diagonal = 1.0 - jnp.eye(n, dtype=a.dtype)
    within = jnp.sum((kernel(a, a) + kernel(b, b)) * off_diagonal) / (n * (n - 1))
    return within - 2.0 * jnp.mean(kernel(a, b))


def wae_mmd_loss(
    model,
    params,
    x,
    key,
    *,
    labels=None,
    mmd_weight=10.0,
    code_l2=0.0,
    train: bool = False,
    dropout_key=None,
    **unused,
):
    """WAE-MMD (Tolstikhin et al., 2018): −mean_x log p(x|z) + λ · MMD²(codes, N(0, I)).

    The codes are one draw z ~ q(z|x) per example (μ(x) itself for a deterministic
    encoder); the prior sample has the batch's size and is drawn from its own key, split
    from ``key``. "kl" reports the KL (collapsed) or code penalty (deterministic) of the
    codes, which the loss does not contain; "mmd" is the batch's MMD².

    Args:
      model: the VAE.
      params: its parameters.
      x: inputs in [0, 1], (B, H, W, C).
      key: the PRNG key of the sample(s).
      labels: int labels for a conditional model; else None.
      mmd_weight: λ.
      code_l2: the code penalty reported as "kl" for a deterministic encoder.
      train: training mode (dropout on).
      dropout_key: the dropout key when training.
      **unused: the ELBO's options (β, free bits), which do not apply.

    Returns:
      (loss, terms): the scalar loss and "recon", "kl", "elbo" per example, "mmd".
    """
    del unused  # β and free bits belong to the ELBO
    rngs = {"dropout": dropout_key} if dropout_key is not None else {}
    code_key, prior_key = jax.random.split(key)
    posterior, z, dec = model.apply(_variables(params), x, code_key, labels, train=train, rngs=rngs)
    recon = model.likelihood.log_prob(x, dec)
    mmd = imq_mmd(z, jax.random.normal(prior_key, z.shape, z.dtype))
    kl = jnp.sum(regulariser_per_dim(posterior, code_l2), axis=-1)
    loss = -jnp.mean(recon) + mmd_weight * mmd
    return loss, {"recon": recon, "kl": kl, "elbo": recon - kl, "mmd": mmd}


def prior_log_prob(model, params, z, *, train=False, dropout_key=None):
    """log p(z) under the model's prior (N(0, I) or the VampPrior).

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
    return model.apply(_variables(params), z, train=train, rngs=rngs, method=model.prior_log_prob)


def log_importance_weights(model, params, x, posterior, z, labels=None, *, train=False, rngs=None):
    """log w = log p(x|z) + log p(z) − log q(z|x) for k samples of each example.

    Args:
      model: the VAE.
      params: its parameters.
      x: inputs (B, H, W, C).
      posterior: q(z|x) of the batch.
      z: samples (k, B, d).
      labels: int labels for a conditional model; else None.
      train: training mode (dropout on).
      rngs: Flax rngs (the dropout key) when training.

    Returns:
      (log w (k, B), the decoder's outputs for the samples).
    """
    dec = model.apply(
        _variables(params), z, labels, train=train, rngs=rngs or {}, method=model.decode
    )
    dropout_key = (rngs or {}).get("dropout")
    return (
        model.likelihood.log_prob(x, dec)
        + prior_log_prob(model, params, z, train=train, dropout_key=dropout_key)
        - posterior.log_prob(z)
    ), dec


def iwae_loss(
    model,
    params,
    x,
    key,
    *,
    k: int,
    labels=None,
    beta=1.0,
    train: bool = False,
    dropout_key=None,
    **unused,
):
    """Negative annealed IWAE bound (Burda et al., 2015) with k samples per example.

    L_k(x) = E[log (1/k) Σ_i p(x, z_i) / q(z_i|x)],  z_i ~ q(z|x) i.i.d.;
    L_1 is the ELBO (with a Monte-Carlo KL) and L_k rises towards log p(x) as k grows.
    The loss is −mean_x L_k^β, where each weight's latent part is tempered by β:
    log w_i^β = log p(x|z_i) + β (log p(z_i) − log q(z_i|x)). β = 1 is L_k itself (bitwise)
    and k = 1 the β-ELBO with a Monte-Carlo KL, so a KL warm-up carries over to the bound.
    The terms report the true L_k and the analytic-KL ELBO terms of the same samples.

    Args:
      model: the VAE.
      params: its parameters.
      x: inputs in [0, 1], (B, H, W, C).
      key: the PRNG key of the sample(s).
      k: samples per example.
      labels: int labels for a conditional model; else None.
      beta: β (``kl_weight`` for a warm-up); for a hierarchy one number or one per layer.
      train: training mode (dropout on).
      dropout_key: the dropout key when training.
      **unused: the ELBO's other options (free bits, code penalty), which do not apply.

    Returns:
      (loss, terms): −mean L_k^β and per-example "recon", "kl", "elbo", "iwae" (= L_k).
    """
    del unused  # free bits and code penalties do not apply to the IWAE bound
    if isinstance(model, hierarchy.Hierarchy):
        return hierarchy.iwae_loss(model, params, x, key, k=k, labels=labels, beta=beta)
    rngs = {"dropout": dropout_key} if dropout_key is not None else {}
    posterior = model.apply(
        _variables(params), x, labels, train=train, rngs=rngs, method=model.encode
    )
    z = posterior.sample(key, k)
    log_w, dec = log_importance_weights(
        model, params, x, posterior, z, labels, train=train, rngs=rngs
    )
    bound = jax.nn.logsumexp(log_w, axis=0) - math.log(k)
    recon_k = model.likelihood.log_prob(x, dec)
    # log w − (1 − β)(log p(z) − log q) rather than recon + β(…): exactly log w when β = 1.
    annealed = log_w - (1.0 - beta) * (log_w - recon_k)
    loss = -jnp.mean(jax.nn.logsumexp(annealed, axis=0) - math.log(k))
    recon = jnp.mean(recon_k, axis=0)
    if model.prior == "vamp":  # the k samples' mean of log q − log p = log p(x|z) − log w
        kl = jnp.mean(recon_k - log_w, axis=0)
    else:
        kl = jnp.sum(posterior.kl_per_dim(), axis=-1)
    return loss, {"recon": recon, "kl": kl, "elbo": recon - kl, "iwae": bound}


def iwae_bound(model, params, x, key, k: int, labels=None):
    """The per-example IWAE bound L_k(x) (evaluation mode: no dropout).

    Args:
      model: the VAE.
      params: its parameters.
      x: inputs in [0, 1], (B, H, W, C).
      key: the PRNG key of the sample(s).
      k: samples per example.
      labels: int labels for a conditional model; else None.

    Returns:
      (B,) L_k(x) in nats.
    """
    return iwae_loss(model, params, x, key, k=k, labels=labels)[1]["iwae"]
