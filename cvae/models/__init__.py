"""Models: the one model interface, the nets, posterior families, likelihoods and priors,
the designs that wire them, and the objectives they are trained on.

* ``protocol``: ``LatentVariableModel``, what every model declares (its layers' sizes, its
  labels, its family of bounds) and does (``elbo_terms``, ``log_importance_weights``,
  ``with_sigma0s``, encode / decode / sample_prior / descend): callers outside this package
  read models through it alone;
* ``nets``: MLP, convolutional and residual encoders and decoders, the Gaussian MLP between
  latent vectors (Flax Linen); ``pyramid``: the nets of a conv pyramid with a top-down state;
  ``code_maps``: conv nets whose code is a map h × w × c (a tokenizer, ``arch = "conv_map"``);
* ``posteriors``: q(z|x) — ``gaussian`` (learned variance), ``collapsed`` (fixed σ₀),
  ``deterministic`` (σ₀ = 0, the autoencoder);
* ``likelihoods``: p(x|z) — Bernoulli, Gaussian, continuous Bernoulli;
* ``vae``: the one-layer ``VAE`` module (standard or VampPrior prior), ``build_model`` from a
  config's ``model`` section (any design), ``init_params``;
* ``hierarchy``: what every design of several stochastic layers shares — the generative
  walk, top-down inference, the code's layout; ``mlp_hierarchy``: MLPs between latent
  vectors, inferred bottom-up (``BottomUpVAE``; one layer is the MLP ``VAE``, bit for bit)
  or top-down (``TopDownVAE``); ``residual_hierarchy``: a pyramid of residual conv blocks
  with a top-down state (``ResidualTopDownVAE``, ``model.arch = "resnet"``);
* ``dit``: a diffusion transformer over maps (code maps or images), adaLN-Zero conditioned on
  the time and the label; ``flow_matching``: its loss, guided velocity and ODE sampler;
* ``objectives``: the ELBO (β, warm-up, free bits), IWAE and WAE-MMD losses and importance
  weights, one file per family of bound, each picked by the family the model declares;
* ``validation``: the valid values of the ``model`` config section.

Everything here is a pure function of its arguments (parameters and keys included). This
package imports jax and flax and, of cvae, only ``cvae.errors``: it sits at the bottom,
and everything else builds on it.
"""

from cvae.models.vae import VAE, build_model, count_params, init_params

__all__ = ["VAE", "build_model", "count_params", "init_params"]
