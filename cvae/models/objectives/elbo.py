"""The ELBO, ELBO(x) = E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)), with β per layer, free bits and
(one layer, deterministic encoder) the RAE's penalties: one formula for a model with one
posterior over its code (``single_elbo_loss``), one for a model whose layers are drawn
jointly in inference order (``layered_elbo_loss``; see ``cvae.models.hierarchy``).
"""

from __future__ import annotations

from typing import cast

import jax
import jax.numpy as jnp

from cvae.models import posteriors
from cvae.models.objectives.common import (
    decoder_gradient_penalty,
    per_layer,
    prior_log_prob,
    regulariser_per_dim,
    variables,
)


def single_elbo_loss(
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
    """Negative β-ELBO of a one-layer model with one reparameterised sample per example.

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
      beta: β, the KL weight (``kl_weight`` for a warm-up); one number, or a tuple of one.
      free_bits: λ, the per-dimension KL floor in nats (0 = off).
      code_l2: the RAE code penalty's λ (deterministic posteriors).
      gradient_penalty: the RAE-GP weight, or None.
      train: training mode (dropout on).
      dropout_key: the dropout key when training.

    Returns:
      (loss, terms): the scalar loss and per-example "recon", "kl", "elbo" (and "gp").
    """
    (beta,) = per_layer(beta, 1)
    rngs = {"dropout": dropout_key} if dropout_key is not None else {}
    posterior, z, dec = model.apply(variables(params), x, key, labels, train=train, rngs=rngs)
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


def generative_log_probs(zs, conditionals, top_log_prob) -> list:
    """log p(z_l | z_{>l}) for l < L (from the conditionals' (mean, log-variance)), then
    log p(z_L).

    Args:
      zs: per-layer draws, z₁ first.
      conditionals: the L − 1 conditionals' (mean, log_var), layer 1 first.
      top_log_prob: log p(z_L) of the draws.

    Returns:
      A list of L arrays of log-densities, layer 1 first.
    """
    terms = [
        posteriors.diag_normal_log_prob(z, *params)
        for z, params in zip(zs[:-1], conditionals, strict=True)
    ]
    return terms + [top_log_prob]


def _layered_parts(model, params, x, key):
    """(log p(x|z), the KL terms of layers 1 … L) for one joint draw: a layer's term is its
    closed-form KL per dimension, (B, d_l), where it has one (the top layer under N(0, I);
    every lower layer of a top-down model), else the one-sample estimate log q − log p, (B,)."""
    found, zs, dec, conditionals, top_log_p = cast(tuple, model.apply(variables(params), x, key))
    recon = model.likelihood.log_prob(x, dec)
    log_p = generative_log_probs(zs, conditionals, top_log_p)
    if model.closed_form_layer_kls:
        parts = [
            posteriors.diag_normal_kl_per_dim(q.mean, q.log_var, *p)
            for q, p in zip(found[:-1], conditionals, strict=True)
        ]
    else:
        parts = [found[i].log_prob(zs[i]) - log_p[i] for i in range(len(zs) - 1)]
    if model.prior == "vamp":  # no closed form against a mixture
        return recon, [*parts, found[-1].log_prob(zs[-1]) - log_p[-1]]
    return recon, [*parts, found[-1].kl_per_dim()]


def _layer_total(kl):
    """A layer's KL term per example, (B,), from per-dimension terms or a total."""
    return jnp.sum(kl, axis=-1) if kl.ndim == 2 else kl


def balance_coefficients(kls, layer_dims):
    """NVAE's KL balancing coefficients (Vahdat & Kautz, 2020): γ_l ∝ (mean_x KL_l + 0.01)
    / α_l with α_l = d_l / Σ d, normalised to mean 1, without gradient. A layer whose KL per
    dimension is small gets a small weight, so that during the warm-up no layer collapses
    while others carry the code.

    Args:
      kls: each layer's per-example KL, (B,) each.
      layer_dims: d₁, …, d_L.

    Returns:
      (L,) coefficients, mean 1.
    """
    dims = jnp.asarray(layer_dims, jnp.float32)
    means = jnp.stack([jnp.mean(kl) for kl in kls]) + 0.01
    coefficients = means / (dims / jnp.sum(dims))
    return jax.lax.stop_gradient(coefficients / jnp.mean(coefficients))


def layered_elbo_loss(
    model,
    params,
    x,
    key,
    *,
    labels=None,
    beta=1.0,
    free_bits=0.0,
    kl_balance=False,
    **unused,
):
    """Negative β-ELBO of a layered model with one joint draw per example, β and free bits
    per layer.

    loss = −mean_x log p(x|z) + Σ_l β_l · penalty_l, with ELBO = log p(x|z) − Σ_l KL_l and
    per layer KL_L = KL(q(z_L | ·) ‖ N(0, I)) in closed form (under a VampPrior the one-sample
    log q(z_L | x) − log p(z_L)); for l < L, when q and p condition on the same draw above
    (top-down), KL(q(z_l | z_{>l}, x) ‖ p(z_l | z_{>l})) in closed form, else (bottom-up) the
    one-sample estimate log q(z_l | z_{l−1}) − log p(z_l | z_{l+1}). Without free bits
    penalty_l is layer l's batch-mean KL term. With free bits λ > 0 a layer whose KL is in
    closed form pays Σ_j max(λ, mean_x KL_j) over its dimensions (as ``single_elbo_loss``:
    one layer is the VAE's loss exactly), and a bottom-up lower layer, whose KL has no
    per-dimension terms, max(λ d_l, mean_x KL_l): the layer is one group of free bits
    (Kingma et al., 2016, eq. 15 with a group per layer).

    Args:
      model: the hierarchy.
      params: its parameters.
      x: images in [0, 1], (B, H, W, C).
      key: the PRNG key of the draw.
      labels: must be None (a hierarchy is unconditional).
      beta: β_l, the KL weights: one number for every layer, or one per layer, z₁'s first
        (``kl_weight`` of each for a warm-up).
      free_bits: λ, nats per latent dimension (0 = off).
      kl_balance: whether each layer's KL weight is also scaled by its
        ``balance_coefficients`` γ_l (a Python or traced bool: the trainer sets it while
        β warms up).
      **unused: ``single_elbo_loss``'s options that a hierarchy does not have (code and
        gradient penalties, dropout): refused by the config's validation.

    Returns:
      (loss, terms): the scalar loss and per-example "recon", "kl_1" … "kl_L", "kl" (their
      sum) and "elbo" = recon − kl.
    """
    del unused
    model.check_labels(labels)
    recon, parts = _layered_parts(model, params, x, key)
    kls = [_layer_total(part) for part in parts]
    floors = [
        jnp.sum(jnp.maximum(free_bits, jnp.mean(part, axis=0)))
        if part.ndim == 2
        else jnp.maximum(free_bits * d, jnp.mean(part))
        for d, part in zip(model.layer_dims, parts, strict=True)
    ]
    betas = per_layer(beta, len(kls))
    if kl_balance is not False:  # branch-free inside: the flag may be traced
        gammas = jnp.where(kl_balance, balance_coefficients(kls, model.layer_dims), 1.0)
        betas = tuple(b * gammas[i] for i, b in enumerate(betas))
    # Branch-free (free_bits may be traced); λ = 0 selects the plain mean KL.
    freed = jnp.asarray(free_bits) > 0
    loss = -jnp.mean(recon)
    for b, floor, term in zip(betas, floors, kls, strict=True):
        loss = loss + b * jnp.where(freed, floor, jnp.mean(term))
    kl = sum(kls[1:], kls[0])
    terms = {f"kl_{i + 1}": term for i, term in enumerate(kls)}
    return loss, {"recon": recon, **terms, "kl": kl, "elbo": recon - kl}
