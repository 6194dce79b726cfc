"""A VAE with several stochastic layers and bottom-up inference (Burda et al., 2015).

Layers are numbered from the data up, z₁ next to x and z_L on top:

* inference  q(z₁, …, z_L | x) = q(z₁|x) · Π_{l>1} q(z_l | z_{l−1}), each factor a posterior
  family of its own (``gaussian``, ``collapsed`` with its own σ₀, or ``deterministic``);
* generation p(x, z₁, …, z_L) = p(x|z₁) · Π_{l<L} p(z_l | z_{l+1}) · p(z_L), with p(z_L) = N(0, I)
  and each p(z_l | z_{l+1}) a diagonal Gaussian whose mean and log-variance an MLP computes.

The layer-l inference net and the generative net into layer l−1 have the same widths (Burda
et al.'s two-layer MNIST model: x → 200 → 200 → z₁ (100) → 100 → 100 → z₂ (50), tanh, and the
mirror image down). One layer is ``cvae.models.vae.VAE`` with an MLP: the same parameter
names, hence the same initial parameters from a key, and the same ELBO, bit for bit.

The bounds, for samples z ~ q drawn ancestrally from the bottom up (they need every layer's
density: a ``deterministic`` layer, a point mass, makes them raise, as for ``VAE``):

* log w = log p(x|z₁) + Σ_{l<L} log p(z_l | z_{l+1}) + log p(z_L) − Σ_l log q(z_l | z_{l−1});
  the ELBO is E_q[log w], the IWAE bound E[log (1/k) Σ_i w_i], the importance-sampled
  log-likelihood the same with large k;
* per layer, the ELBO's KL terms: KL_L = KL(q(z_L | z_{L−1}) ‖ N(0, I)) in closed form at the
  sampled z_{L−1}, and for l < L the one-sample estimate log q(z_l | z_{l−1}) − log p(z_l | z_{l+1})
  (z_{l+1} is drawn from z_l, so no closed form applies). ELBO = log p(x|z₁) − Σ_l KL_l.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp

from cvae.models import nets, posteriors, vae


@dataclasses.dataclass(frozen=True)
class StochasticLayer:
    """One stochastic layer: its size, the widths of the nets into it, its posterior family.

    Attributes:
      latent_dim: the dimension of z_l.
      widths: the hidden widths of the inference net into z_l (from x or z_{l−1}); the
        generative net out of z_l (into x or z_{l−1}) has them reversed.
      posterior: "gaussian", "collapsed" or "deterministic".
      sigma0: σ₀ of a collapsed posterior.
    """

    latent_dim: int
    widths: tuple[int, ...]
    posterior: str = "gaussian"
    sigma0: float = posteriors.DEFAULT_SIGMA0


def _as_image(z):
    """Latents (…, d) as 1×1×d images, the input ``nets.MLPEncoder`` flattens: the nets
    between layers are the image encoder's MLP (trunk, mean and log-variance heads)."""
    return z[..., None, None, :]


class BottomUpVAE(nn.Module):
    """Stochastic layers with bottom-up inference; see the module docstring.

    Attributes:
      layers: the stochastic layers, z₁ (next to x) first.
      likelihood: p(x|z₁) (``cvae.models.likelihoods``).
      event_shape: (H, W, C) of the images.
      activation: the nets' nonlinearity (Burda et al.: tanh).
    """

    layers: tuple[StochasticLayer, ...]
    likelihood: Any
    event_shape: tuple[int, int, int]
    activation: str = "tanh"

    def setup(self):
        """The nets: ``encoder`` (x → z₁) and ``decoder`` (z₁ → x) named as in ``VAE``, then
        ``up_l`` (z_{l−1} → z_l) and ``down_l`` (z_l → z_{l−1}) for l = 2 … L."""
        first = self.layers[0]
        self.encoder = nets.MLPEncoder(
            first.widths,
            first.latent_dim,
            posteriors.has_variance_head(first.posterior),
            self.activation,
        )
        self.decoder = nets.MLPDecoder(
            tuple(reversed(first.widths)),
            self.likelihood.param_shape(tuple(self.event_shape)),
            self.activation,
        )
        self.up = [
            nets.MLPEncoder(
                layer.widths,
                layer.latent_dim,
                posteriors.has_variance_head(layer.posterior),
                self.activation,
                name=f"up_{i + 1}",
            )
            for i, layer in enumerate(self.layers)
            if i > 0
        ]
        self.down = [
            nets.MLPEncoder(
                tuple(reversed(layer.widths)),
                self.layers[i - 1].latent_dim,
                True,
                self.activation,
                name=f"down_{i + 1}",
            )
            for i, layer in enumerate(self.layers)
            if i > 0
        ]

    @property
    def num_classes(self) -> int:
        """0: a hierarchy is unconditional (read by ``init_params`` as on ``VAE``)."""
        return 0

    def _posterior(self, i: int, mean, log_var) -> posteriors.Posterior:
        layer = self.layers[i]
        return posteriors.make_posterior(layer.posterior, mean, log_var, layer.sigma0)

    def infer(self, x, key, num_samples: int | None = None):
        """Draws z₁, …, z_L ~ q(·|x) from the bottom up.

        Args:
          x: images in [0, 1], (B, H, W, C).
          key: the PRNG key of z₁'s draw; layer l > 1 draws with ``fold_in(key, l − 1)``.
          num_samples: joint draws per example; None for one, without the leading axis.

        Returns:
          (posteriors, zs): per layer q(z_l | z_{l−1}) and its draw, z₁ first; each z is
          (B, d_l) or (num_samples, B, d_l).
        """
        found = [self._posterior(0, *self.encoder(x))]
        zs = [found[0].sample(key, num_samples)]  # z₁ with the key itself, as in VAE
        for i in range(1, len(self.layers)):
            found.append(self._posterior(i, *self.up[i - 1](_as_image(zs[-1]))))
            zs.append(found[-1].sample(jax.random.fold_in(key, i)))
        return found, zs

    def encode_means(self, x):
        """Every layer's code along the mean path: μ₁(x), μ₂(μ₁(x)), ….

        Args:
          x: images in [0, 1], (B, H, W, C).

        Returns:
          The per-layer means, z₁'s first, each (B, d_l).
        """
        means = [self.encoder(x)[0]]
        for net in self.up:
            means.append(net(_as_image(means[-1]))[0])
        return means

    def generative_log_probs(self, zs):
        """log p(z_l | z_{l+1}) for l < L, then log p(z_L), for draws z₁ … z_L.

        Args:
          zs: per-layer draws, z₁ first.

        Returns:
          A list of L arrays of log-densities, layer 1 first.
        """
        terms = [
            posteriors.diag_normal_log_prob(zs[i - 1], *self.down[i - 1](_as_image(zs[i])))
            for i in range(1, len(self.layers))
        ]
        return terms + [posteriors.standard_normal_log_prob(zs[-1])]

    def decode(self, z1):
        """p(x|z₁)'s parameters.

        Args:
          z1: bottom-layer latents (…, d₁).

        Returns:
          The likelihood's parameters, (…, *param_shape).
        """
        return self.decoder(z1)

    def sample_prior(self, key, num_samples: int):
        """z_L ~ N(0, I), then z_l ~ p(z_l | z_{l+1}) down to z₁.

        Args:
          key: the PRNG key of z_L's draw (as ``VAE.sample_prior``'s); each lower layer
            draws with ``fold_in(key, j)``, j = 1, 2, … going down.
          num_samples: how many.

        Returns:
          The per-layer draws, z₁ first, each (num_samples, d_l).
        """
        top = len(self.layers) - 1
        zs = [jax.random.normal(key, (num_samples, self.layers[top].latent_dim))]
        for i in range(top, 0, -1):  # layer i − 1 (0-based) from layer i
            mean, log_var = self.down[i - 1](_as_image(zs[0]))
            noise = jax.random.normal(jax.random.fold_in(key, top - i + 1), mean.shape)
            zs.insert(0, mean + jnp.exp(0.5 * log_var) * noise)
        return zs

    def __call__(self, x, key, num_samples: int | None = None):
        """One ancestral draw per example (or ``num_samples``) and what the bounds need:
        (posteriors, zs, p(x|z₁)'s parameters, ``generative_log_probs(zs)``)."""
        found, zs = self.infer(x, key, num_samples)
        return found, zs, self.decode(zs[0]), self.generative_log_probs(zs)


def elbo_terms(model: BottomUpVAE, params, x, key):
    """Per-example ELBO terms with one ancestral draw; see the module docstring.

    Args:
      model: the hierarchy.
      params: its parameters.
      x: images in [0, 1], (B, H, W, C).
      key: the PRNG key of the draw.

    Returns:
      {"recon": log p(x|z₁), "kl_1" … "kl_L": the per-layer KL terms, "kl": their sum,
      "elbo": recon − kl}, each (B,).
    """
    found, zs, dec, prior_terms = cast(tuple, model.apply({"params": params}, x, key))
    recon = model.likelihood.log_prob(x, dec)
    kls = [found[i].log_prob(zs[i]) - prior_terms[i] for i in range(len(zs) - 1)]
    kls.append(jnp.sum(found[-1].kl_per_dim(), axis=-1))
    terms = {f"kl_{i + 1}": kl for i, kl in enumerate(kls)}
    kl = sum(kls[1:], kls[0])
    return {"recon": recon, **terms, "kl": kl, "elbo": recon - kl}


def log_importance_weights(model: BottomUpVAE, params, x, key, k: int):
    """log w = log p(x, z₁…z_L) − log q(z₁…z_L | x) for k joint draws per example.

    Args:
      model: the hierarchy.
      params: its parameters.
      x: images in [0, 1], (B, H, W, C).
      key: the PRNG key of the draws.
      k: draws per example.

    Returns:
      (k, B) log-weights.
    """
    found, zs, dec, prior_terms = cast(tuple, model.apply({"params": params}, x, key, k))
    log_w = model.likelihood.log_prob(x, dec)
    for i, (posterior, z) in enumerate(zip(found, zs, strict=True)):
        log_w = log_w + prior_terms[i] - posterior.log_prob(z)
    return log_w


def iwae_bound(model: BottomUpVAE, params, x, key, k: int):
    """L_k(x) = log (1/k) Σ_i w_i over k joint draws (Burda et al., 2015); with large k the
    importance-sampled estimate of log p(x).

    Args:
      model: the hierarchy.
      params: its parameters.
      x: images in [0, 1], (B, H, W, C).
      key: the PRNG key of the draws.
      k: draws per example.

    Returns:
      (B,) nats.
    """
    log_w = log_importance_weights(model, params, x, key, k)
    return jax.nn.logsumexp(log_w, axis=0) - math.log(k)


def init_params(model: BottomUpVAE, key: jax.Array, batch_size: int = 1):
    """Initial parameters from a key: ``cvae.models.vae.init_params``, which serves both
    modules (one compiled program; for one layer the VAE's own parameters).

    Args:
      model: the hierarchy.
      key: the PRNG key of the initialisation.
      batch_size: the dummy batch used to trace the shapes.

    Returns:
      The parameters (a plain pytree).
    """
    return vae.init_params(model, key, batch_size)
