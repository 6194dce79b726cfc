"""WAE-MMD (Tolstikhin et al., 2018): the reconstruction and a kernel MMD² between a batch's
codes and the prior, in place of the KL; one-layer models only."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cvae.models.objectives.common import regulariser_per_dim, variables

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
    posterior, z, dec = model.apply(variables(params), x, code_key, labels, train=train, rngs=rngs)
    recon = model.likelihood.log_prob(x, dec)
    mmd = imq_mmd(z, jax.random.normal(prior_key, z.shape, z.dtype))
    kl = jnp.sum(regulariser_per_dim(posterior, code_l2), axis=-1)
    loss = -jnp.mean(recon) + mmd_weight * mmd
    return loss, {"recon": recon, "kl": kl, "elbo": recon - kl, "mmd": mmd}
