"""Hierarchies of MLPs between latent vectors: bottom-up inference (Burda et al., 2015) and
top-down inference that shares the generative order (the ladder VAE of Sønderby et al.,
2016, with VDVAE's way of combining the two passes, Child, 2021).

Both generate alike (``MLPHierarchy``): p(z_L) = N(0, I) (or the VampPrior), each
p(z_l | z_{l+1}) a diagonal Gaussian whose mean and log-variance a ``nets.GaussianMLP``
computes from z_{l+1}, and p(x|z₁) — or with ``decoder_layers = "all"`` p(x|z₁, …, z_L),
Tomczak & Welling's two-layer HVAE — an MLP decoder. They infer differently:

* ``BottomUpVAE``: q(z₁, …, z_L | x) = q(z₁|x) · Π_{l>1} q(z_l | z_{l−1}). The layer-l inference
  net and the generative net into layer l−1 have the same widths (Burda et al.'s two-layer
  MNIST model: x → 200 → 200 → z₁ (100) → 100 → 100 → z₂ (50), tanh, and the mirror image
  down). One layer is ``cvae.models.vae.VAE`` with an MLP: the same parameter names, hence
  the same initial parameters from a key (``cvae.models.vae.init_params`` initialises both),
  and the same ELBO, bit for bit. Its lower layers' KLs are one-sample estimates
  log q(z_l | z_{l−1}) − log p(z_l | z_{l+1}) (z_{l+1} is drawn from z_l: no closed form).
* ``TopDownVAE``: q(z₁, …, z_L | x) = q(z_L | x) · Π_{l<L} q(z_l | z_{l+1}, x) — the top-down
  inference of ``cvae.models.hierarchy.Hierarchy``, with features h₁ = f₁(x),
  h_l = f_l(h_{l−1}) (layer l's widths) and each q(z_l | z_{l+1}, x) reading [h_l, z_{l+1}].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cvae.models import nets, posteriors
from cvae.models.hierarchy import Hierarchy, refuse_labels


class MLPHierarchy(Hierarchy):
    """The MLP generative path both MLP designs share (attributes: ``Hierarchy``'s): the
    walk's state is the code just drawn, z_{l+1}, and p(z_l | z_{l+1}) reads it alone."""

    def _setup_generative(self):
        """The generative nets: ``decoder`` (z₁ or the whole code → x, named as in ``VAE``)
        and ``down_l`` (z_l → the mean and log-variance of z_{l−1}) for l = 2 … L; and a
        VampPrior's pseudo-inputs (``_setup_pseudo_inputs``)."""
        self._setup_pseudo_inputs()
        first = self.layers[0]
        self.decoder = nets.MLPDecoder(
            tuple(reversed(first.widths)),
            self.likelihood.param_shape(tuple(self.event_shape)),
            self.activation,
        )
        self.down = [
            nets.GaussianMLP(
                tuple(reversed(layer.widths)),
                self.layers[i - 1].latent_dim,
                True,
                self.activation,
                name=f"down_{i + 1}",
            )
            for i, layer in enumerate(self.layers)
            if i > 0
        ]

    def _top_state(self, z_top):
        return z_top

    def _expand(self, i: int, state):
        return state  # the context of layer i is z_{i+1} itself

    def _conditional(self, i: int, context) -> tuple:
        return self.down[i](context)

    def _write(self, i: int, context, z):
        return z

    def _decode_walk(self, zs, state):
        return self.decoder(zs[0] if self.decoder_layers == "bottom" else jnp.concatenate(zs, -1))

    def decode(self, z, labels=None, *, train: bool = False):
        """p(x|z₁)'s parameters for codes z (or for z₁ alone: the decoder reads z's first d₁
        entries); with ``decoder_layers = "all"``, p(x|z₁, …, z_L)'s for whole codes.

        Args:
          z: codes (…, d₁ + … + d_L), or bottom-layer latents (…, d₁).
          labels: must be None (a hierarchy is unconditional).
          train: unused (no dropout); kept for ``VAE.decode``'s signature.

        Returns:
          The likelihood's parameters, (…, *param_shape).

        Raises:
          ValueError: a decoder of every layer given less than a whole code.
        """
        del train
        refuse_labels(labels)
        if self.decoder_layers == "all":
            self._check_whole_code(z)
            return self.decoder(z)
        return self.decoder(z[..., : self.layer_dims[0]])


class BottomUpVAE(MLPHierarchy):
    """Stochastic layers with bottom-up inference q(z₁|x) Π q(z_l | z_{l−1}); see the module
    docstring (attributes: ``Hierarchy``'s)."""

    closed_form_layer_kls = False

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
        self._setup_generative()
        self.up = [
            nets.GaussianMLP(
                layer.widths,
                layer.latent_dim,
                posteriors.has_variance_head(layer.posterior),
                self.activation,
                name=f"up_{i + 1}",
            )
            for i, layer in enumerate(self.layers)
            if i > 0
        ]

    def _infer_walk(self, x, key, num_samples):
        """Draws z₁, …, z_L ~ q(·|x) from the bottom up — z₁ with ``key`` itself (as ``VAE``),
        layer l > 1 with ``fold_in(key, l − 1)`` — then walks the generative path down the
        draws for their conditionals."""
        found = [self._posterior(0, *self.encoder(x))]
        zs = [found[0].sample(key, num_samples)]
        for i in range(1, len(self.layers)):
            found.append(self._posterior(i, *self.up[i - 1](zs[-1])))
            zs.append(found[-1].sample(jax.random.fold_in(key, i)))
        _, conditionals, state = self._walk(zs[-1], lambda i, context, conditional: zs[i])
        return found, zs, conditionals, state

    def _mean_path(self, x) -> list:
        """Layer l's factor is q(z_l | μ_{l−1}), its input the mean of the layer below
        (μ₀ = x): the code's mean is (μ₁(x), μ₂(μ₁(x)), …)."""
        found = [self._posterior(0, *self.encoder(x))]
        for i, net in enumerate(self.up, start=1):
            found.append(self._posterior(i, *net(found[-1].mean)))
        return found


class TopDownVAE(MLPHierarchy):
    """Stochastic layers with top-down inference q(z_L|x) Π q(z_l | z_{l+1}, x), sharing the
    generative order; see the module docstring (attributes: ``Hierarchy``'s)."""

    def setup(self):
        """The nets: ``trunk_l`` (the bottom-up pass h_{l−1} → h_l, h₀ = x, layer l's
        widths), ``posterior_L`` (h_L → z_L's posterior heads), ``posterior_l`` for l < L
        ([h_l, z_{l+1}] → z_l's heads, through one hidden layer as wide as h_l), then the
        generative ``decoder`` and ``down_l``."""
        self.trunks = [
            nets.MLPStack(layer.widths, self.activation, name=f"trunk_{i + 1}")
            for i, layer in enumerate(self.layers)
        ]
        top = len(self.layers) - 1
        self.heads = [
            nets.GaussianMLP(
                () if i == top else (layer.widths[-1],),
                layer.latent_dim,
                posteriors.has_variance_head(layer.posterior),
                self.activation,
                name=f"posterior_{i + 1}",
            )
            for i, layer in enumerate(self.layers)
        ]
        self._setup_generative()

    def _features(self, x):
        """h₁ … h_L, the bottom-up pass over x (flattened)."""
        h = [self.trunks[0](x.reshape(x.shape[:-3] + (-1,)))]
        for trunk in self.trunks[1:]:
            h.append(trunk(h[-1]))
        return h

    def _factor(self, i: int, h, context):
        """Layer i's (0-based) posterior factor from its features and the code above it, the
        walk's context (None for the top layer)."""
        if context is None:
            return self._posterior(i, *self.heads[i](h))
        h = jnp.broadcast_to(h, context.shape[:-1] + h.shape[-1:])  # sample axes of z
        return self._posterior(i, *self.heads[i](jnp.concatenate([h, context], -1)))
