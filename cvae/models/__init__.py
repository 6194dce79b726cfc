"""Models: the nets, posterior families, likelihoods and priors of a VAE, the VAE module that
wires them, and the objectives it is trained on.

* ``nets``: MLP, convolutional and residual encoders and decoders (Flax Linen);
* ``posteriors``: q(z|x) — ``gaussian`` (learned variance), ``collapsed`` (fixed σ₀),
  ``deterministic`` (σ₀ = 0, the autoencoder);
* ``likelihoods``: p(x|z) — Bernoulli, Gaussian, continuous Bernoulli;
* ``vae``: the ``VAE`` module (standard or VampPrior prior), ``build_model`` from a
  config's ``model`` section, ``init_params``;
* ``hierarchy``: several stochastic layers with bottom-up (``BottomUpVAE``) or top-down
  (``TopDownVAE``) inference, each layer with its own posterior family and σ₀; their
  per-layer ELBO, log importance weights and IWAE bound; one bottom-up layer is the MLP
  ``VAE``, bit for bit. ``build_model`` builds one when ``model.upper_latent_dims`` is set;
* ``residual_hierarchy``: the top-down hierarchy on a pyramid of residual conv blocks
  (``ResidualTopDownVAE``, ``model.arch = "resnet"``), whose layers write into a top-down
  state;
* ``objectives``: the ELBO (β, warm-up, free bits), IWAE and WAE-MMD losses, importance
  weights;
* ``validation``: the valid values of the ``model`` config section.

Everything here is a pure function of its arguments (parameters and keys included). This
package imports jax and flax and, of cvae, only ``cvae.errors``: it sits at the bottom,
and everything else builds on it.
"""

from cvae.models.vae import VAE, build_model, count_params, init_params

__all__ = ["VAE", "build_model", "count_params", "init_params"]
