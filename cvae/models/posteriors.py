"""Families of approximate posteriors q(z|x), and the standard-normal prior.

* ``gaussian``: q(z|x) = N(μ(x), diag σ²(x)) with a learned log-variance head.
* ``collapsed``: q(z|x) = N(μ(x), σ₀² I) with a fixed σ₀ > 0: the randomness is collapsed to
  one fixed scale, so the encoder has a mean head only and the KL to N(0, I) is
  ½‖μ‖² + (d/2)(σ₀² − 1 − log σ₀²).
* ``deterministic``: σ₀ = 0, a point mass at μ(x): the autoencoder. It has no density and
  no finite KL; its regulariser is an optional L2 penalty on codes (the RAE of Ghosh et
  al., 2020).

Each posterior is a pytree (``flax.struct.dataclass``) of its parameters for a batch and
offers ``sample(key, num_samples)``, ``log_prob(z)`` and ``kl_per_dim()``. Every random draw
takes its key as an argument.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

FAMILIES = ("gaussian", "collapsed", "deterministic")
DEFAULT_SIGMA0 = 0.01  # the collapsed posterior's σ₀ unless a config says otherwise
_LOG_2PI = math.log(2 * math.pi)


def _log(x):
    """log x: in double precision for a Python number (a run's σ₀), else traced (a
    population member's σ₀, see cvae.training.population)."""
    return math.log(x) if isinstance(x, (int, float)) else jnp.log(x)


def _draw(key, mean, scale, num_samples):
    """mean + scale · ε, ε ~ N(0, I) drawn in f32 and rounded to the mean's dtype: a
    mixed-precision step (``train.precision``) draws the f32 run's noise, not other noise."""
    shape = mean.shape if num_samples is None else (num_samples,) + mean.shape
    return mean + scale * jax.random.normal(key, shape, jnp.float32).astype(mean.dtype)


def diag_normal_log_prob(z, mean, log_var):
    """log N(z; mean, diag exp(log_var)), summed over the last axis.

    Args:
      z: points (…, d).
      mean: (…, d).
      log_var: (…, d) log-variances.

    Returns:
      (…,) log-densities in nats.
    """
    return -0.5 * jnp.sum(_LOG_2PI + log_var + (z - mean) ** 2 * jnp.exp(-log_var), axis=-1)


def diag_normal_kl_per_dim(mean_q, log_var_q, mean_p, log_var_p):
    """KL(N(mean_q, diag e^log_var_q) ‖ N(mean_p, diag e^log_var_p)) per dimension:
    ½[log σ_p² − log σ_q² + (σ_q² + (μ_q − μ_p)²) / σ_p² − 1].

    Args:
      mean_q: (…, d) means of the first Gaussian.
      log_var_q: (…, d) its log-variances.
      mean_p: (…, d) means of the second.
      log_var_p: (…, d) its log-variances.

    Returns:
      (…, d) nats, ≥ 0; their sum over the last axis is the KL.
    """
    return 0.5 * (
        log_var_p
        - log_var_q
        + (jnp.exp(log_var_q) + (mean_q - mean_p) ** 2) * jnp.exp(-log_var_p)
        - 1.0
    )


def standard_normal_log_prob(z):
    """log N(z; 0, I), summed over the last axis: the prior p(z).

    Args:
      z: points (…, d).

    Returns:
      (…,) log-densities in nats.
    """
    return -0.5 * jnp.sum(_LOG_2PI + z**2, axis=-1)


@struct.dataclass
class GaussianPosterior:
    """q(z|x) = N(mean, diag exp(log_var))."""

    mean: jax.Array
    log_var: jax.Array
    has_density = True

    def sample(self, key, num_samples: int | None = None):
        """z = μ + σ ε, ε ~ N(0, I) (reparameterised).

        Args:
          key: the PRNG key of the draw.
          num_samples: draws per example; None for one, without the leading axis.

        Returns:
          z of shape (…, d), or (num_samples, …, d).
        """
        return _draw(key, self.mean, jnp.exp(0.5 * self.log_var), num_samples)

    def log_prob(self, z):
        """log q(z|x) = log N(z; μ, diag σ²), summed over latent dimensions.

        Args:
          z: points (…, d), broadcast against the batch.

        Returns:
          Log-densities in nats.
        """
        return diag_normal_log_prob(z, self.mean, self.log_var)

    def kl_per_dim(self):
        """KL(q ‖ N(0, I)) per dimension: ½(μ² + σ² − 1 − log σ²)."""
        return 0.5 * (self.mean**2 + jnp.exp(self.log_var) - 1.0 - self.log_var)


@struct.dataclass
class CollapsedPosterior:
    """q(z|x) = N(mean, σ₀² I) with a fixed, non-learned σ₀ > 0."""

    mean: jax.Array
    sigma0: float = struct.field(pytree_node=False, default=DEFAULT_SIGMA0)
    has_density = True

    @property
    def log_var(self):
        """log σ₀², the same for every dimension and example."""
        return jnp.full_like(self.mean, 2.0 * _log(self.sigma0))

    def sample(self, key, num_samples: int | None = None):
        """z = μ + σ₀ ε, ε ~ N(0, I), with the fixed σ₀.

        Args:
          key: the PRNG key of the draw.
          num_samples: draws per example; None for one, without the leading axis.

        Returns:
          z of shape (…, d), or (num_samples, …, d).
        """
        return _draw(key, self.mean, self.sigma0, num_samples)

    def log_prob(self, z):
        """log N(z; μ, σ₀² I), summed over latent dimensions.

        Args:
          z: points (…, d), broadcast against the batch.

        Returns:
          Log-densities in nats.
        """
        return diag_normal_log_prob(z, self.mean, self.log_var)

    def kl_per_dim(self):
        """½(μ_j² + σ₀² − 1 − log σ₀²): summed, ½‖μ‖² + (d/2)(σ₀² − 1 − log σ₀²)."""
        s2 = self.sigma0**2
        return 0.5 * (self.mean**2 + s2 - 1.0 - _log(s2))


@struct.dataclass
class DeterministicPosterior:
    """A point mass at ``mean`` (σ₀ = 0): the encoder of a plain or regularised autoencoder."""

    mean: jax.Array
    has_density = False
    log_var = None

    def sample(self, key, num_samples: int | None = None):
        """The mean itself (repeated ``num_samples`` times if asked): the key is unused.

        Args:
          key: the PRNG key of the draw.
          num_samples: draws per example; None for one, without the leading axis.

        Returns:
          z of shape (…, d), or (num_samples, …, d).
        """
        del key  # a point mass needs no randomness; the argument keeps the interface uniform
        if num_samples is None:
            return self.mean
        return jnp.broadcast_to(self.mean, (num_samples,) + self.mean.shape)

    def log_prob(self, z):
        """A point mass has no density: always raises.

        Args:
          z: unused.

        Returns:
          Never returns.

        Raises:
          ValueError: always (use the ELBO terms or an ex-post density instead).
        """
        raise ValueError(
            "a deterministic posterior is a point mass and has no density; "
            "use model.posterior='collapsed' with a small sigma0 for a density"
        )

    def kl_per_dim(self):
        """Infinite for a point mass: always raises."""
        raise ValueError(
            "KL(point mass ‖ N(0, I)) is infinite; deterministic models use the "
            "code penalty model.code_l2 instead"
        )


Posterior = GaussianPosterior | CollapsedPosterior | DeterministicPosterior


def make_posterior(family: str, mean, log_var=None, sigma0: float = DEFAULT_SIGMA0) -> Posterior:
    """The posterior of ``family`` from the encoder's heads.

    Args:
      family: "gaussian", "collapsed" or "deterministic".
      mean: μ(x), (…, d).
      log_var: log σ²(x) for the gaussian family; else None.
      sigma0: the collapsed family's fixed σ₀.

    Returns:
      The posterior object (a pytree).
    """
    if family == "gaussian":
        return GaussianPosterior(mean, log_var)
    if family == "collapsed":
        return CollapsedPosterior(mean, sigma0)
    if family == "deterministic":
        return DeterministicPosterior(mean)
    raise ValueError(f"model.posterior must be one of {FAMILIES}, got {family!r}")


def has_variance_head(family: str) -> bool:
    """Whether the encoder needs a log-variance head: only the gaussian family learns one.

    Args:
      family: a posterior family.

    Returns:
      True for "gaussian".
    """
    return family == "gaussian"
