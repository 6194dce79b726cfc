"""Evaluation metrics: importance-sampled log-likelihood and posterior-collapse diagnostics.

* ``importance_sampled_log_likelihood``: log p(x) ≈ log (1/K) Σ_{i≤K} p(x, z_i)/q(z_i|x),
  z_i ~ q(z|x) (for a hierarchy, joint draws of every layer), evaluated ``chunk_size``
  samples at a time with a running log-sum-exp, so memory is bounded for any K. Sample i
  is drawn from ``fold_in(key, i)``, so the estimate does not depend on how K is chunked.
* ``active_units``: dimension j is active when Cov_x(E_q[z_j]) > 0.01 (Burda et al., 2015);
  ``RunningMoments`` gives that variance for a split read batch by batch.
* ``kl_per_dimension``: mean over data of KL(q(z_j|x) ‖ N(0, 1)).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def importance_sampled_log_likelihood(
    model, params, x, key, num_samples: int = 5000, chunk_size: int = 250, labels=None
):
    """Per-example estimate of log p(x) in nats from K importance samples.

    log p̂(x) = log (1/K) Σ_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x). By Jensen's inequality its
    expectation lies below log p(x) and above the ELBO, and it approaches log p(x) as K
    grows. K need not be a multiple of ``chunk_size``: samples past K in the last chunk are
    masked out.

    Args:
      model: the VAE.
      params: its parameters.
      x: inputs in [0, 1], N×H×W×C.
      key: the PRNG key of the samples.
      num_samples: K.
      chunk_size: samples evaluated at once (bounds memory).
      labels: int labels for a conditional model; else None.

    Returns:
      (N,) log p̂(x).
    """
    if num_samples < 1 or chunk_size < 1:
        raise ValueError(f"num_samples and chunk_size must be ≥ 1, got {num_samples}, {chunk_size}")
    if model.posterior_family not in ("gaussian", "collapsed"):
        raise ValueError(
            "the importance-sampled log-likelihood needs a posterior with a "
            f"density; {model.posterior_family!r} has none"
        )
    chunk_size = min(chunk_size, num_samples)
    num_chunks = math.ceil(num_samples / chunk_size)

    def log_weights(indices):  # draw i from fold_in(key, i), for every layer jointly
        return jax.vmap(
            lambda i: model.log_importance_weights(
                params, x, jax.random.fold_in(key, i), None, labels
            )
        )(indices)

    def one_chunk(running, chunk_index):
        indices = chunk_index * chunk_size + jnp.arange(chunk_size)
        log_w = log_weights(indices)
        log_w = jnp.where((indices < num_samples)[:, None], log_w, -jnp.inf)
        return jnp.logaddexp(running, jax.nn.logsumexp(log_w, axis=0)), None

    start = jnp.full(x.shape[:1], -jnp.inf, jnp.float32)
    total, _ = jax.lax.scan(one_chunk, start, jnp.arange(num_chunks))
    return total - math.log(num_samples)


ACTIVE_THRESHOLD = 0.01


def active_units(posterior_means, threshold: float = ACTIVE_THRESHOLD):
    """Active latent dimensions (Burda et al., 2015): Cov_x(E_q[z_j]) above a threshold.

    Args:
      posterior_means: E_q[z] of every example, (N, d).
      threshold: the variance above which a dimension counts as active.

    Returns:
      (number of active dimensions, (d,) variance of each E_q[z_j] over the data).
    """
    variances = np.var(np.asarray(posterior_means, np.float64), axis=0)
    return int(np.sum(variances > threshold)), variances


class RunningMoments:
    """Per-dimension count, mean and variance of rows added batch by batch, in float64.

    Batches merge by Chan et al.'s pairwise update: with counts n_a, n_b, means μ_a, μ_b
    and summed squared deviations M_a, M_b, the union has
    M = M_a + M_b + (μ_b − μ_a)² n_a n_b / (n_a + n_b) — no sum of squares of raw values,
    so no cancellation when the mean is large. Memory is one row, whatever the split.
    """

    def __init__(self):
        self.count, self.mean, self.squares = 0, 0.0, 0.0

    def add(self, rows) -> None:
        """Adds a batch of rows to the running mean and variance (Chan et al.'s merge, float64).

        Args:
          rows: (n, d) values, e.g. a batch's posterior means.
        """
        rows = np.asarray(rows, np.float64)
        n = len(rows)
        if n == 0:
            return
        mean = rows.mean(axis=0)
        squares = ((rows - mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = mean - self.mean
        self.squares = self.squares + squares + delta**2 * self.count * n / total
        self.mean = self.mean + delta * n / total
        self.count = total

    @property
    def variance(self) -> np.ndarray:
        """The population variance (``np.var``'s) of everything added."""
        return np.asarray(self.squares / max(self.count, 1))

    def active_units(self, threshold: float = ACTIVE_THRESHOLD) -> int:
        """Dimensions whose variance exceeds ``threshold`` (``active_units``'s count).

        Args:
          threshold: the variance above which a dimension counts as active.

        Returns:
          The count.
        """
        return int(np.sum(self.variance > threshold))


def kl_per_dimension(posterior):
    """Mean over the batch of each dimension's KL(q(z_j|x) ‖ N(0, 1)).

    Args:
      posterior: a posterior of a batch (``VAE.encode``).

    Returns:
      (d,) KL in nats.
    """
    return jnp.mean(posterior.kl_per_dim(), axis=0)
