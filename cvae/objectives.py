"""Training objectives: the ELBO (with β, KL warm-up and free bits) and the IWAE bound.

Pure functions of (model, params, batch, key): safe under jit and vmap. Each returns the
scalar loss to minimise and a dict of per-example terms in nats:
``{"recon": E_q log p(x|z), "kl": KL(q(z|x) ‖ p(z)), "elbo": recon − kl, …}``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from cvae.posteriors import DeterministicPosterior, standard_normal_log_prob


def _variables(params):
    return {"params": params}


def kl_weight(step, beta: float, warmup_steps: int):
    """β_t = β · min(1, t / warmup_steps): the KL warm-up of Sønderby et al. (2016);
    β itself when ``warmup_steps`` ≤ 0. Branch-free, so β and the warm-up may be traced
    (a population's members differ in them)."""
    ramp = jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / jnp.maximum(warmup_steps, 1))
    return beta * jnp.where(jnp.asarray(warmup_steps) > 0, ramp, 1.0).astype(jnp.float32)


def regulariser_per_dim(posterior, code_l2: float = 0.0):
    """The per-dimension KL(q ‖ N(0, I)); for a point mass, the RAE code penalty (λ/2)·μ²."""
    if isinstance(posterior, DeterministicPosterior):
        return 0.5 * code_l2 * posterior.mean**2
    return posterior.kl_per_dim()


def elbo_loss(model, params, x, key, *, labels=None, beta=1.0, free_bits: float = 0.0,
              code_l2: float = 0.0, train: bool = False, dropout_key=None):
    """Negative β-ELBO with one reparameterised sample per example.

    ELBO(x) = E_q[log p(x|z)] − KL(q(z|x) ‖ N(0, I)), the KL in closed form. The loss is
    −mean_x E_q log p(x|z) + β Σ_j max(λ, mean_x KL_j): with free bits λ > 0 each latent
    dimension's batch-mean KL is floored at λ nats (Kingma et al., 2016, eq. 15), so
    dimensions under the floor receive no gradient pushing them to collapse.
    For a deterministic posterior the "kl" slot holds the code penalty and "elbo" is not
    a bound on log p(x).
    """
    rngs = {"dropout": dropout_key} if dropout_key is not None else {}
    posterior, _, dec = model.apply(_variables(params), x, key, labels, train=train, rngs=rngs)
    recon = model.likelihood.log_prob(x, dec)
    kl_dims = regulariser_per_dim(posterior, code_l2)
    kl = jnp.sum(kl_dims, axis=-1)
    # Branch-free (free_bits may be a traced population hyperparameter); λ = 0 selects
    # the plain mean KL, exactly as without free bits.
    floored = jnp.sum(jnp.maximum(free_bits, jnp.mean(kl_dims, axis=0)))
    penalty = jnp.where(jnp.asarray(free_bits) > 0, floored, jnp.mean(kl))
    loss = -jnp.mean(recon) + beta * penalty
    return loss, {"recon": recon, "kl": kl, "elbo": recon - kl}


def log_importance_weights(model, params, x, posterior, z, labels=None, *, train=False,
                           rngs=None):
    """log w = log p(x|z) + log p(z) − log q(z|x) for samples z of shape (k, B, d)."""
    dec = model.apply(_variables(params), z, labels, train=train, rngs=rngs or {},
                      method=model.decode)
    return (model.likelihood.log_prob(x, dec) + standard_normal_log_prob(z)
            - posterior.log_prob(z)), dec


def iwae_loss(model, params, x, key, *, k: int, labels=None, train: bool = False,
              dropout_key=None, **unused):
    """Negative IWAE bound (Burda et al., 2015) with k samples per example.

    L_k(x) = E[log (1/k) Σ_i p(x, z_i) / q(z_i|x)],  z_i ~ q(z|x) i.i.d.;
    L_1 is the ELBO (with a Monte-Carlo KL) and L_k rises towards log p(x) as k grows.
    Also reports the analytic-KL ELBO terms of the same samples.
    """
    del unused  # β, free bits and code penalties do not apply to the IWAE bound
    rngs = {"dropout": dropout_key} if dropout_key is not None else {}
    posterior = model.apply(_variables(params), x, labels, train=train, rngs=rngs,
                            method=model.encode)
    z = posterior.sample(key, k)
    log_w, dec = log_importance_weights(model, params, x, posterior, z, labels, train=train,
                                        rngs=rngs)
    bound = jax.nn.logsumexp(log_w, axis=0) - math.log(k)
    recon = jnp.mean(model.likelihood.log_prob(x, dec), axis=0)
    kl = jnp.sum(posterior.kl_per_dim(), axis=-1)
    return -jnp.mean(bound), {"recon": recon, "kl": kl, "elbo": recon - kl, "iwae": bound}


def iwae_bound(model, params, x, key, k: int, labels=None):
    """The per-example IWAE bound L_k(x) (evaluation mode: no dropout)."""
    return iwae_loss(model, params, x, key, k=k, labels=labels)[1]["iwae"]
