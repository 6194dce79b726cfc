"""Training objectives: the ELBO (with β, KL warm-up and free bits; for a deterministic
encoder the RAE's code and decoder-gradient penalties), the IWAE bound and WAE-MMD.

Pure functions of (model, params, batch, key): safe under jit and vmap. Each returns the
scalar loss to minimise and a dict of per-example terms in nats:
``{"recon": E_q log p(x|z), "kl": KL(q(z|x) ‖ p(z)), "elbo": recon − kl, …}`` (a layered
model adds each layer's ``kl_l``).

One file per family of bound — ``elbo``, ``iwae``, ``wae`` — each with its formula for a
model with one posterior over its code and, where it has one, for a model whose layers are
drawn jointly in inference order. Which formula scores a model is decided here, once, by
what the model declares: its ``bound_family`` (``cvae.models.protocol``), "single" or
"layered". No caller asks which class a model is.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax

from cvae.models.objectives.common import (
    decoder_gradient_penalty,
    kl_weight,
    per_layer,
    prior_log_prob,
    regulariser_per_dim,
)
from cvae.models.objectives.elbo import layered_elbo_loss, single_elbo_loss
from cvae.models.objectives.iwae import (
    layered_iwae_loss,
    layered_log_importance_weights,
    single_iwae_loss,
    single_log_importance_weights,
    weights_at,
)
from cvae.models.objectives.wae import MMD_SCALES, imq_mmd, wae_mmd_loss

__all__ = [
    "MMD_SCALES",
    "decoder_gradient_penalty",
    "elbo_loss",
    "elbo_terms",
    "imq_mmd",
    "iwae_bound",
    "iwae_loss",
    "kl_weight",
    "log_importance_weights",
    "per_layer",
    "prior_log_prob",
    "regulariser_per_dim",
    "wae_mmd_loss",
    "weights_at",
]


@dataclasses.dataclass(frozen=True)
class BoundFamily:
    """The formulas that score one family of model; None where the family has none."""

    elbo: Callable
    iwae: Callable
    log_importance_weights: Callable
    wae_mmd: Callable | None


FAMILIES = {
    "single": BoundFamily(
        single_elbo_loss, single_iwae_loss, single_log_importance_weights, wae_mmd_loss
    ),
    "layered": BoundFamily(
        layered_elbo_loss, layered_iwae_loss, layered_log_importance_weights, None
    ),
}


def formulas(model) -> BoundFamily:
    """The formulas of the family ``model`` declares (``model.bound_family``).

    Args:
      model: any model of ``cvae.models.protocol``.

    Returns:
      Its family's formulas.
    """
    return FAMILIES[model.bound_family]


def elbo_loss(model, params, x, key, **options):
    """Negative β-ELBO with one (joint) draw per example: ``single_elbo_loss`` or
    ``layered_elbo_loss``, by the model's family; see those for the maths and options.

    Args:
      model: the model.
      params: its parameters.
      x: inputs in [0, 1], (B, H, W, C).
      key: the PRNG key of the draw.
      **options: labels, beta, free_bits, code_l2, gradient_penalty, train, dropout_key.

    Returns:
      (loss, terms): the scalar loss and the per-example terms.
    """
    return formulas(model).elbo(model, params, x, key, **options)


def iwae_loss(model, params, x, key, *, k: int, **options):
    """Negative annealed IWAE bound with k (joint) draws per example: ``single_iwae_loss``
    or ``layered_iwae_loss``, by the model's family.

    Args:
      model: the model.
      params: its parameters.
      x: inputs in [0, 1], (B, H, W, C).
      key: the PRNG key of the draws.
      k: draws per example.
      **options: labels, beta, train, dropout_key.

    Returns:
      (loss, terms): −mean L_k^β and per-example "recon", "kl", "elbo", "iwae" (= L_k).
    """
    return formulas(model).iwae(model, params, x, key, k=k, **options)


def wae_mmd(model, params, x, key, **options):
    """WAE-MMD's loss (``wae.wae_mmd_loss``) for a model whose family has it.

    Raises:
      ValueError: a layered model (its codes are not drawn from one posterior).
    """
    loss = formulas(model).wae_mmd
    if loss is None:
        raise ValueError("WAE-MMD scores one-layer models only; use objective.kind='elbo'")
    return loss(model, params, x, key, **options)


def log_importance_weights(model, params, x, key, k: int | None, labels=None):
    """log w = log p(x, z) − log q(z|x) for k draws per example (every layer of a layered
    model from one joint draw); evaluation mode.

    Args:
      model: the model.
      params: its parameters.
      x: inputs in [0, 1], (B, H, W, C).
      key: the PRNG key of the draws.
      k: draws per example; None for one, without the leading axis.
      labels: int labels for a conditional model; else None.

    Returns:
      (k, B) log-weights ((B,) for k = None).
    """
    return formulas(model).log_importance_weights(model, params, x, key, k, labels)


def iwae_bound(model, params, x, key, k: int, labels=None):
    """The per-example IWAE bound L_k(x) = log (1/k) Σ_i w_i (evaluation mode: no dropout);
    with large k the importance-sampled estimate of log p(x).

    Args:
      model: the model.
      params: its parameters.
      x: inputs in [0, 1], (B, H, W, C).
      key: the PRNG key of the draws.
      k: draws per example.
      labels: int labels for a conditional model; else None.

    Returns:
      (B,) L_k(x) in nats.
    """
    log_w = log_importance_weights(model, params, x, key, k, labels)
    return jax.nn.logsumexp(log_w, axis=0) - math.log(k)


def elbo_terms(model, params, x, key, labels=None) -> dict:
    """Per-example ELBO terms with one (joint) draw, β = 1: "recon", "kl", "elbo" and each
    layer's "kl_l" (a one-layer model's "kl_1" is its "kl").

    Args:
      model: the model.
      params: its parameters.
      x: inputs in [0, 1], (B, H, W, C).
      key: the PRNG key of the draw.
      labels: int labels for a conditional model; else None.

    Returns:
      The terms, each (B,) nats.
    """
    terms = elbo_loss(model, params, x, key, labels=labels)[1]
    if len(model.layer_dims) == 1:
        terms = {"recon": terms["recon"], "kl_1": terms["kl"], **terms}
    return terms
