"""Observation models p(x|z): Bernoulli, Gaussian and continuous Bernoulli.

Each likelihood is a small frozen dataclass (hashable, so it can sit on a Flax module).
The decoder emits ``param_shape(event_shape)`` numbers per example; ``log_prob`` sums
log p(x|params) over the event axes (H, W, C) and returns nats per example.
``validate(x)`` runs on the host, before anything is compiled, and says what is wrong.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

NAMES = ("bernoulli", "gaussian", "continuous_bernoulli")


def _flat(a):
    """(…, H, W, C) → (…, H·W·C). Elementwise work and the sum then run over one contiguous
    axis: XLA:CPU vectorizes that, while summing over (H, W, C) with C = 1 innermost ran an
    order of magnitude slower for the (K, B, 28, 28, 1) arrays of importance sampling."""
    return a.reshape(a.shape[:-3] + (-1,))


_LOG_2PI = math.log(2 * math.pi)


def _check_unit_interval(name: str, x) -> None:
    x = np.asarray(x)
    lo, hi = float(np.min(x)), float(np.max(x))
    if lo < 0.0 or hi > 1.0 or not np.isfinite([lo, hi]).all():
        raise ValueError(
            f"likelihood {name!r} needs data in [0, 1], got values in [{lo:g}, {hi:g}]; "
            "scale 8-bit images by 1/255 (cvae.data does this) or use model.likelihood='gaussian'"
        )


@jax.custom_jvp
def softplus(y):
    """softplus(y) = log(1 + eʸ) = max(y, 0) + log1p(e^−|y|), stable for any y.

    Same values as ``jax.nn.softplus``; the derivative sigmoid(y) reuses the forward pass's
    e^−|y| (``jax.nn.softplus`` goes through ``logaddexp``, whose derivative takes a second
    exp), which cuts the likelihood's elementwise cost on a CPU by a third.

    Args:
      y: any array.

    Returns:
      softplus(y), elementwise.
    """
    return jnp.maximum(y, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(y)))


@softplus.defjvp
def _softplus_jvp(primals, tangents):
    (y,), (dy,) = primals, tangents
    e = jnp.exp(-jnp.abs(y))
    sigmoid = jnp.where(y >= 0, 1.0, e) / (1.0 + e)
    return jnp.maximum(y, 0.0) + jnp.log1p(e), sigmoid * dy


@dataclasses.dataclass(frozen=True)
class Bernoulli:
    """p(x|z) = ∏ Bernoulli(x_i; sigmoid(η_i)); the decoder emits logits η.

    log p(x|η) = Σ_i x_i η_i − softplus(η_i), exact and stable for any η.

    ``binary_targets``: the data are {0, 1} (binarized), where the same value is
    −Σ_i softplus((1 − 2x_i) η_i) — one fused elementwise op instead of two, several times
    cheaper on XLA:CPU (docs/performance.md); it is wrong for grey targets, so it is only
    switched on for binarized data sets.
    """

    name = "bernoulli"
    binary_targets: bool = False

    def param_shape(self, event_shape):
        """Decoder outputs per example: one logit per pixel.

        Args:
          event_shape: (H, W, C).

        Returns:
          (H, W, C).
        """
        return tuple(event_shape)

    def log_prob(self, x, logits):
        """log p(x|η) per example (summed over pixels), in nats.

        Args:
          x: data in [0, 1] (…, H, W, C).
          logits: η, the decoder's output.

        Returns:
          (…,) log-likelihoods.
        """
        x, logits = _flat(x), _flat(logits)
        if self.binary_targets:
            return -jnp.sum(softplus((1.0 - 2.0 * x) * logits), axis=-1)
        return jnp.sum(x * logits - softplus(logits), axis=-1)

    def mean(self, logits):
        """E[x|η] = sigmoid(η).

        Args:
          logits: η.

        Returns:
          Pixel means in [0, 1].
        """
        return jax.nn.sigmoid(logits)

    def sample(self, key, logits):
        """x ~ Bernoulli(sigmoid(η)).

        Args:
          key: the PRNG key of the draw.
          logits: η.

        Returns:
          {0, 1} pixels.
        """
        return jax.random.bernoulli(key, jax.nn.sigmoid(logits)).astype(logits.dtype)

    def validate(self, x) -> None:
        """Refuses data outside [0, 1] (host-side, before compiling).

        Args:
          x: a sample of the data, scaled to [0, 1].

        Raises:
          ValueError: a value lies outside [0, 1].
        """
        _check_unit_interval(self.name, x)


@dataclasses.dataclass(frozen=True)
class Gaussian:
    """p(x|z) = ∏ N(x_i; μ_i, σ_i²).

    ``scale > 0`` fixes σ; ``scale == 0`` learns a per-pixel σ = softplus(s) + 10⁻³ from a
    second decoder output, so params are stacked as (…, 2, H, W, C) = (μ, s).
    """

    scale: float = 0.0
    name = "gaussian"

    @property
    def learned_scale(self) -> bool:
        """True when σ is learned per pixel (``scale == 0``)."""
        return self.scale == 0.0

    def param_shape(self, event_shape):
        """Decoder outputs per example: μ per pixel, and a scale per pixel when learned.

        Args:
          event_shape: (H, W, C).

        Returns:
          (H, W, C), or (2, H, W, C) with a learned scale.
        """
        return ((2,) if self.learned_scale else ()) + tuple(event_shape)

    def _mean_and_scale(self, params):
        if self.learned_scale:
            return params[..., 0, :, :, :], jax.nn.softplus(params[..., 1, :, :, :]) + 1e-3
        return params, jnp.asarray(self.scale, params.dtype)

    def log_prob(self, x, params):
        """Σ_i log N(x_i; μ_i, σ_i²) per example, in nats.

        Args:
          x: data (…, H, W, C).
          params: the decoder's output (μ, and the scale when learned).

        Returns:
          (…,) log-likelihoods.
        """
        mu, sigma = self._mean_and_scale(params)
        x, mu = _flat(x), _flat(mu)
        sigma = _flat(sigma) if sigma.ndim >= 3 else sigma
        log_density = -0.5 * (((x - mu) / sigma) ** 2 + _LOG_2PI) - jnp.log(sigma)
        return jnp.sum(
            jnp.broadcast_to(log_density, jnp.broadcast_shapes(x.shape, mu.shape)), axis=-1
        )

    def mean(self, params):
        """E[x|z] = μ.

        Args:
          params: the decoder's output.

        Returns:
          μ.
        """
        return self._mean_and_scale(params)[0]

    def sample(self, key, params):
        """x = μ + σ ε, ε ~ N(0, I).

        Args:
          key: the PRNG key of the draw.
          params: the decoder's output.

        Returns:
          Pixels.
        """
        mu, sigma = self._mean_and_scale(params)
        return mu + sigma * jax.random.normal(key, mu.shape, mu.dtype)

    def validate(self, x) -> None:
        """Refuses NaN or infinite data.

        Args:
          x: a sample of the data.

        Raises:
          ValueError: a value is not finite.
        """
        if not np.isfinite(np.asarray(x)).all():
            raise ValueError("likelihood 'gaussian' needs finite data; the input has NaN or inf")


def continuous_bernoulli_log_norm(logits):
    """log C(λ) of the continuous Bernoulli, λ = sigmoid(η), computed from the logits η.

    C(λ) = 2 artanh(1 − 2λ) / (1 − 2λ) = η / tanh(η/2), which is 0/0 at λ = ½ (η = 0).
    Near η = 0 we use its Taylor series log 2 + η²/12 − 7η⁴/1440 (error O(η⁶)); elsewhere
    the closed form. The double ``where`` keeps gradients finite on both branches.

    Args:
      logits: η.

    Returns:
      log C elementwise.
    """
    small = jnp.abs(logits) < 1e-2
    safe = jnp.where(small, 1.0, logits)
    exact = jnp.log(jnp.abs(safe)) - jnp.log(jnp.abs(jnp.tanh(safe / 2.0)))
    taylor = math.log(2.0) + logits**2 / 12.0 - 7.0 * logits**4 / 1440.0
    return jnp.where(small, taylor, exact)


@dataclasses.dataclass(frozen=True)
class ContinuousBernoulli:
    """p(x|z) = ∏ C(λ_i) λ_i^{x_i} (1 − λ_i)^{1 − x_i} for x ∈ [0, 1] (Loaiza-Ganem &
    Cunningham, 2019); the decoder emits logits η, λ = sigmoid(η).

    log p(x|η) = x η − softplus(η) + log C(λ).
    """

    name = "continuous_bernoulli"

    def param_shape(self, event_shape):
        """Decoder outputs per example: one logit per pixel.

        Args:
          event_shape: (H, W, C).

        Returns:
          (H, W, C).
        """
        return tuple(event_shape)

    def log_prob(self, x, logits):
        """Σ_i log CB(x_i; λ_i) per example, in nats.

        Args:
          x: data in [0, 1] (…, H, W, C).
          logits: η, the decoder's output.

        Returns:
          (…,) log-likelihoods.
        """
        x, logits = _flat(x), _flat(logits)
        per_pixel = x * logits - jax.nn.softplus(logits) + continuous_bernoulli_log_norm(logits)
        return jnp.sum(per_pixel, axis=-1)

    def mean(self, logits):
        """E[x] = λ/(2λ − 1) + 1/(2 artanh(1 − 2λ)) = 1/(1 − e^{−η}) − 1/η, ½ at η = 0.

        Args:
          logits: η.

        Returns:
          Pixel means in [0, 1].
        """
        small = jnp.abs(logits) < 1e-3
        safe = jnp.where(small, 1.0, logits)
        exact = 1.0 / (-jnp.expm1(-safe)) - 1.0 / safe
        return jnp.where(small, 0.5 + logits / 12.0, exact)

    def sample(self, key, logits):
        """Inverse-CDF sampling: x = log1p(u (e^η − 1)) / η, u ~ U(0, 1); x = u at η = 0.

        Args:
          key: the PRNG key of the draw.
          logits: η.

        Returns:
          Pixels in [0, 1].
        """
        u = jax.random.uniform(key, logits.shape, logits.dtype)
        small = jnp.abs(logits) < 1e-3
        safe = jnp.where(small, 1.0, logits)
        exact = jnp.log1p(u * jnp.expm1(safe)) / safe
        return jnp.clip(jnp.where(small, u, exact), 0.0, 1.0)

    def validate(self, x) -> None:
        """Refuses data outside [0, 1].

        Args:
          x: a sample of the data, scaled to [0, 1].

        Raises:
          ValueError: a value lies outside [0, 1].
        """
        _check_unit_interval(self.name, x)


def make_likelihood(name: str, scale: float = 0.0, binary_data: bool = False):
    """The likelihood called ``name``.

    Args:
      name: "bernoulli", "gaussian" or "continuous_bernoulli".
      scale: the Gaussian's fixed σ; 0 = learned per pixel.
      binary_data: every input the model will score is in {0, 1} (the Bernoulli's cheaper
        binary form).

    Returns:
      The likelihood (a frozen dataclass).
    """
    if name == "bernoulli":
        return Bernoulli(binary_targets=binary_data)
    if name == "gaussian":
        if scale < 0:
            raise ValueError(f"model.likelihood_scale must be ≥ 0 (0 = learned), got {scale}")
        return Gaussian(float(scale))
    if name == "continuous_bernoulli":
        return ContinuousBernoulli()
    raise ValueError(f"model.likelihood must be one of {NAMES}, got {name!r}")
