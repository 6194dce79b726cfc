"""``gmm``: a full-covariance Gaussian mixture over codes, fitted by scikit-learn's EM and
sampled in JAX with an explicit key."""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from cvae.samplers.kind import Kind


@dataclasses.dataclass(frozen=True)
class LatentMixture:
    """A fitted mixture Σ_k π_k N(μ_k, Σ_k) over latent codes."""

    kind = "gmm"
    log_weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, d)
    cholesky: np.ndarray  # (K, d, d), Σ_k = L_k L_kᵀ

    def sample(self, key, num_samples: int):
        """z = μ_c + L_c ε with c ~ Categorical(π), ε ~ N(0, I).

        Args:
          key: the PRNG key of the draw.
          num_samples: how many codes.

        Returns:
          (num_samples, d) codes.
        """
        component_key, noise_key = jax.random.split(key)
        c = jax.random.categorical(
            component_key, jnp.asarray(self.log_weights), shape=(num_samples,)
        )
        eps = jax.random.normal(noise_key, (num_samples, self.means.shape[-1]))
        chol = jnp.asarray(self.cholesky)[c]
        return jnp.asarray(self.means)[c] + jnp.einsum("nij,nj->ni", chol, eps)

    def log_prob(self, z):
        """log Σ_k π_k N(z; μ_k, L_k L_kᵀ).

        Args:
          z: codes (N, d).

        Returns:
          (N,) log-densities.
        """
        z = jnp.asarray(z, jnp.float32)
        diff = z[:, None, :] - jnp.asarray(self.means)[None]  # (N, K, d)
        chol = jnp.asarray(self.cholesky)
        solved = jax.vmap(
            lambda L, r: jax.scipy.linalg.solve_triangular(L, r.T, lower=True).T,
            in_axes=(0, 1),
            out_axes=1,
        )(chol, diff)
        log_det = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        log_normal = (
            -0.5 * jnp.sum(solved**2, axis=-1) - log_det - 0.5 * z.shape[-1] * jnp.log(2 * jnp.pi)
        )
        return jax.nn.logsumexp(jnp.asarray(self.log_weights) + log_normal, axis=-1)


DEFAULT_COMPONENTS = 10  # the mixture's K unless a caller says otherwise


def check_enough_codes(codes, num_components: int = DEFAULT_COMPONENTS) -> None:
    """Raises ValueError, in one line, unless there are at least K·(d + 1) codes: each full
    covariance is non-singular only with more than d codes per component.

    Args:
      codes: (N, d).
      num_components: K.
    """
    needed = num_components * (np.shape(codes)[-1] + 1)
    if len(codes) < needed:
        raise ValueError(
            f"fitting a {num_components}-component mixture to {np.shape(codes)[-1]}-"
            f"dimensional codes needs at least {needed} training codes, got "
            f"{len(codes)}; use --sampler prior or train on more data"
        )


def fit_latent_mixture(
    codes, num_components: int = DEFAULT_COMPONENTS, seed: int = 0
) -> LatentMixture:
    """Fits a full-covariance Gaussian mixture to training codes with EM (scikit-learn).

    Args:
      codes: (N, d).
      num_components: K.
      seed: scikit-learn's ``random_state`` of the initialisation.

    Returns:
      The mixture, sampled in JAX with an explicit key.

    Raises:
      ValueError: fewer than K·(d + 1) codes (a full covariance would be singular).
    """
    # Imported here, not with the module: scikit-learn (and the SciPy it loads) would add
    # about 1.3 s to the start of every command, most of which never fits a mixture.
    from sklearn.mixture import GaussianMixture

    codes = np.asarray(codes, np.float64)
    check_enough_codes(codes, num_components)
    gmm = GaussianMixture(
        num_components, covariance_type="full", reg_covar=1e-6, random_state=seed
    ).fit(codes)
    return LatentMixture(
        np.log(gmm.weights_).astype(np.float32),
        gmm.means_.astype(np.float32),
        np.linalg.cholesky(gmm.covariances_).astype(np.float32),
    )


def _fit(codes, key, *, seed: int, progress: bool, labels, num_classes: int, budget: dict):
    del key, progress, labels, num_classes, budget  # EM from scikit-learn's integer seed
    return fit_latent_mixture(codes, seed=seed)


def _save(sampler: LatentMixture, directory: pathlib.Path) -> dict:
    np.savez(
        directory / "mixture.npz",
        log_weights=sampler.log_weights,
        means=sampler.means,
        cholesky=sampler.cholesky,
    )
    return {}


def _load(directory: pathlib.Path, shape: dict) -> LatentMixture:
    del shape
    with np.load(directory / "mixture.npz") as f:
        return LatentMixture(f["log_weights"], f["means"], f["cholesky"])


KIND = Kind("gmm", _fit, (), _save, _load, check_enough_codes)
