"""Importance weights and the IWAE bound (Burda et al., 2015):
log w = log p(x, z) − log q(z|x), L_k(x) = E[log (1/k) Σ_i w_i], z_i ~ q(z|x) i.i.d.;
L_1 is the ELBO (with Monte-Carlo KLs) and L_k rises towards log p(x) as k grows. Trained
as an annealed bound: each weight's latent part is tempered by β (per layer), so a KL
warm-up carries over. One formula each for a one-layer model and for a layered one, whose
weights take every layer from one joint draw in inference order.
"""

from __future__ import annotations

import math
from typing import cast

import jax
import jax.numpy as jnp

from cvae.models.objectives.common import per_layer, prior_log_prob, variables
from cvae.models.objectives.elbo import generative_log_probs


def weights_at(model, params, x, posterior, z, labels=None, *, train=False, rngs=None):
    """A one-layer model's log w = log p(x|z) + log p(z) − log q(z|x) at given samples.

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
        variables(params), z, labels, train=train, rngs=rngs or {}, method=model.decode
    )
    dropout_key = (rngs or {}).get("dropout")
    return (
        model.likelihood.log_prob(x, dec)
        + prior_log_prob(model, params, z, train=train, dropout_key=dropout_key)
        - posterior.log_prob(z)
    ), dec


def single_log_importance_weights(model, params, x, key, k: int | None, labels=None):
    """log w for k draws z ~ q(z|x) of a one-layer model (evaluation mode).

    Args:
      model: the VAE.
      params: its parameters.
      x: inputs (B, H, W, C).
      key: the PRNG key of the draws (all k from this one key).
      k: draws per example; None for one, without the leading axis.
      labels: int labels for a conditional model; else None.

    Returns:
      (k, B) log-weights ((B,) for k = None).
    """
    posterior = model.apply(variables(params), x, labels, method=model.encode)
    return weights_at(model, params, x, posterior, posterior.sample(key, k), labels)[0]


def single_iwae_loss(
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
    """Negative annealed IWAE bound of a one-layer model with k samples per example.

    The loss is −mean_x L_k^β, where each weight's latent part is tempered by β:
    log w_i^β = log p(x|z_i) + β (log p(z_i) − log q(z_i|x)). β = 1 is L_k itself (bitwise)
    and k = 1 the β-ELBO with a Monte-Carlo KL. The terms report the true L_k and the
    analytic-KL ELBO terms of the same samples.

    Args:
      model: the VAE.
      params: its parameters.
      x: inputs in [0, 1], (B, H, W, C).
      key: the PRNG key of the sample(s).
      k: samples per example.
      labels: int labels for a conditional model; else None.
      beta: β (``kl_weight`` for a warm-up); one number, or a tuple of one.
      train: training mode (dropout on).
      dropout_key: the dropout key when training.
      **unused: the ELBO's other options (free bits, code penalty), which do not apply.

    Returns:
      (loss, terms): −mean L_k^β and per-example "recon", "kl", "elbo", "iwae" (= L_k).
    """
    del unused  # free bits and code penalties do not apply to the IWAE bound
    (beta,) = per_layer(beta, 1)
    rngs = {"dropout": dropout_key} if dropout_key is not None else {}
    posterior = model.apply(
        variables(params), x, labels, train=train, rngs=rngs, method=model.encode
    )
    z = posterior.sample(key, k)
    log_w, dec = weights_at(model, params, x, posterior, z, labels, train=train, rngs=rngs)
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


def layered_log_weights(model, params, x, key, k: int | None):
    """(log p(x|z), log w, [log p(z_l|z_{>l}) − log q(z_l|·)]_l), each (k, B), for k joint
    draws per example of a layered model.

    Args:
      model: the hierarchy.
      params: its parameters.
      x: images in [0, 1], (B, H, W, C).
      key: the PRNG key of the draws.
      k: draws per example; None for one, without the leading axis.

    Returns:
      The reconstruction term, the log-weights and each layer's ratio, layer 1 first.
    """
    found, zs, dec, conditionals, top_log_p = cast(tuple, model.apply(variables(params), x, key, k))
    recon = model.likelihood.log_prob(x, dec)
    log_w, ratios = recon, []
    log_p = generative_log_probs(zs, conditionals, top_log_p)
    for i, (posterior, z) in enumerate(zip(found, zs, strict=True)):
        log_q = posterior.log_prob(z)
        log_w = log_w + log_p[i] - log_q
        ratios.append(log_p[i] - log_q)
    return recon, log_w, ratios


def layered_log_importance_weights(model, params, x, key, k: int | None, labels=None):
    """log w = log p(x, z₁…z_L) − log q(z₁…z_L | x) for k joint draws per example.

    Args:
      model: the hierarchy.
      params: its parameters.
      x: images in [0, 1], (B, H, W, C).
      key: the PRNG key of the draws.
      k: draws per example; None for one, without the leading axis.
      labels: must be None (a hierarchy is unconditional).

    Returns:
      (k, B) log-weights ((B,) for k = None).
    """
    model.check_labels(labels)
    return layered_log_weights(model, params, x, key, k)[1]


def layered_iwae_loss(model, params, x, key, *, k: int, labels=None, beta=1.0, **unused):
    """Negative annealed IWAE bound of a layered model with k joint draws per example.

    The loss is −mean_x L_k^β, L_k^β = log (1/k) Σ_i exp(log p(x|z₁ⁱ) + Σ_l β_l r_lⁱ) with
    r_l = log p(z_l|z_{>l}) − log q(z_l|·) (z_L's p the prior): β_l = 1 for every layer is
    the IWAE bound L_k itself, bitwise, and k = 1 is the β-ELBO with Monte-Carlo KL terms,
    so a KL warm-up of β_l carries over to the IWAE bound. The terms report the true bound
    whatever β: "recon" the k draws' mean log p(x|z), "kl" their mean log q − log p(z)
    (= recon − log w), and "iwae" = L_k.

    Args:
      model: the hierarchy.
      params: its parameters.
      x: images in [0, 1], (B, H, W, C).
      key: the PRNG key of the draws.
      k: draws per example.
      labels: must be None (a hierarchy is unconditional).
      beta: β_l: one number for every layer, or one per layer, z₁'s first
        (``kl_weight`` of each for a warm-up).
      **unused: the ELBO's other options (free bits), refused by the config's validation.

    Returns:
      (loss, terms): −mean L_k^β and per-example "recon", "kl", "elbo", "iwae".
    """
    del unused
    model.check_labels(labels)
    recon_k, log_w, ratios = layered_log_weights(model, params, x, key, k)
    annealed = log_w
    for b, ratio in zip(per_layer(beta, len(ratios)), ratios, strict=True):
        # log w − (1 − β_l) r_l rather than recon + Σ β_l r_l: exactly log w when β_l = 1.
        annealed = annealed - (1.0 - b) * ratio
    loss = -jnp.mean(jax.nn.logsumexp(annealed, axis=0) - math.log(k))
    bound = jax.nn.logsumexp(log_w, axis=0) - math.log(k)
    recon = jnp.mean(recon_k, axis=0)
    kl = jnp.mean(recon_k - log_w, axis=0)
    return loss, {"recon": recon, "kl": kl, "elbo": recon - kl, "iwae": bound}
