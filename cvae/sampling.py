"""Drawing latents from an ex-post Gaussian mixture (the prior's own draws are the
model's: ``VAE.sample_prior``, N(0, I) or the VampPrior).

Collapsed and deterministic models are not trained to make their aggregate posterior
match N(0, I), so prior samples fall where the decoder has seen no codes. Ghosh et al.
(2020) fit a density to the training codes after training instead; we fit scikit-learn's
``GaussianMixture`` (full covariances) and sample it in JAX with an explicit key.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

SAMPLERS = ("prior", "gmm", "flow", "two_stage")  # the last three: cvae.ex_post


@dataclasses.dataclass(frozen=True)
class LatentMixture:
    """A fitted mixture Σ_k π_k N(μ_k, Σ_k) over latent codes."""

    log_weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, d)
    cholesky: np.ndarray  # (K, d, d), Σ_k = L_k L_kᵀ

    def sample(self, key, num_samples: int):
        """z = μ_c + L_c ε with c ~ Categorical(π), ε ~ N(0, I)."""
        component_key, noise_key = jax.random.split(key)
        c = jax.random.categorical(component_key, jnp.asarray(self.log_weights),
                                   shape=(num_samples,))
        eps = jax.random.normal(noise_key, (num_samples, self.means.shape[-1]))
        chol = jnp.asarray(self.cholesky)[c]
        return jnp.asarray(self.means)[c] + jnp.einsum("nij,nj->ni", chol, eps)

    def log_prob(self, z):
        """log Σ_k π_k N(z; μ_k, L_k L_kᵀ) for z (N, d)."""
        z = jnp.asarray(z, jnp.float32)
        diff = z[:, None, :] - jnp.asarray(self.means)[None]  # (N, K, d)
        chol = jnp.asarray(self.cholesky)
        solved = jax.vmap(lambda L, r: jax.scipy.linalg.solve_triangular(L, r.T, lower=True).T,
                          in_axes=(0, 1), out_axes=1)(chol, diff)
        log_det = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        log_normal = (-0.5 * jnp.sum(solved**2, axis=-1) - log_det
                      - 0.5 * z.shape[-1] * jnp.log(2 * jnp.pi))
        return jax.nn.logsumexp(jnp.asarray(self.log_weights) + log_normal, axis=-1)


def fit_latent_mixture(codes, num_components: int = 10, seed: int = 0) -> LatentMixture:
    """Fits a full-covariance Gaussian mixture to training codes (N, d) with EM."""
    from sklearn.mixture import GaussianMixture

    codes = np.asarray(codes, np.float64)
    # Each full covariance is non-singular only with more than d codes per component.
    needed = num_components * (codes.shape[-1] + 1)
    if len(codes) < needed:
        raise ValueError(f"fitting a {num_components}-component mixture to {codes.shape[-1]}-"
                         f"dimensional codes needs at least {needed} training codes, got "
                         f"{len(codes)}; use --sampler prior or train on more data")
    gmm = GaussianMixture(num_components, covariance_type="full", reg_covar=1e-6,
                          random_state=seed).fit(codes)
    return LatentMixture(np.log(gmm.weights_).astype(np.float32), gmm.means_.astype(np.float32),
                         np.linalg.cholesky(gmm.covariances_).astype(np.float32))


def default_sampler(posterior_family: str) -> str:
    """gmm for collapsed and deterministic models, prior for the gaussian VAE."""
    return "prior" if posterior_family == "gaussian" else "gmm"
