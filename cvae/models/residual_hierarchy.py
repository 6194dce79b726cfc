"""A top-down hierarchy of residual convolutional blocks (VDVAE's structure, Child, 2021,
with one latent vector per level of the pyramid): ``ResidualTopDownVAE``.

Layer l (z₁ next to x) lives at the grid H/2^l × W/2^l with ``channels[l − 1]`` channels.
Two deterministic paths run over that pyramid:

* the bottom-up pass (inference only): h_l = down(block(h_{l−1})), h₀ = stem(x), each
  stage a residual block and a stride-2 convolution (``pyramid.FeatureStage``);
* the top-down state (shared by the model and its posterior): s_L = block(W z_L) on the
  coarsest grid; going down, s̃_l = conv(up×2(s_{l+1})) carries everything drawn above,
  p(z_l | z_{>l}) and q(z_l | z_{>l}, x) are read from s̃_l and from [s̃_l, h_l], and
  s_l = block(s̃_l + W z_l) writes z_l in. The decoder p(x | z₁, …, z_L) reads s₁.

So p(x, z) = p(x | z) · Π_{l<L} p(z_l | z_{>l}) · p(z_L) with p(z_L) = N(0, I) (or the
VampPrior) and q(z | x) = q(z_L | x) · Π_{l<L} q(z_l | z_{>l}, x): the order in which the
model generates, a closed-form KL per lower layer (q and p read the same state), and the
same code, bounds and downstream interface as the MLP designs of
``cvae.models.mlp_hierarchy``. The walk and the top-down inference are
``cvae.models.hierarchy.Hierarchy``'s; this design supplies the nets and the walk's hooks
(the state s̃_l is the walk's context). Unlike the MLP designs, each conditional prior
reads every layer above through the state, not only z_{l+1}, and the decoder reads every
layer (``decoder_layers = "all"``).
"""

from __future__ import annotations

import jax.numpy as jnp

from cvae.models import nets, posteriors, pyramid
from cvae.models.hierarchy import Hierarchy, refuse_labels


def check_pyramid(height: int, width: int, num_layers: int) -> None:
    """Raises ValueError, saying how to fix it, unless images of H×W halve evenly once per
    layer down to a coarsest grid of at least 2×2 (on a 1×1 grid GroupNorm's groups of one
    value normalise every input to the same output).

    Args:
      height: H of the images.
      width: W of the images.
      num_layers: L, the stochastic layers.
    """
    nets.check_resnet_shape(height, width, num_layers)
    if min(height, width) >> num_layers < 2:
        raise ValueError(
            f"a residual hierarchy of {num_layers} layers puts its top layer on a "
            f"{height >> num_layers}×{width >> num_layers} grid of {height}×{width} images; "
            "it needs at least 2×2: use fewer layers or larger images"
        )


class ResidualTopDownVAE(Hierarchy):
    """Stochastic layers on a pyramid of residual conv blocks, inferred top-down (see the
    module docstring).

    Attributes (besides ``Hierarchy``'s; a layer's ``widths`` are the hidden widths of the
    dense heads that read its grid):
      channels: the grid's channels at each layer, z₁'s first (multiples of 8: GroupNorm
        uses 8 groups); layer l's grid is H/2^l × W/2^l.
    """

    channels: tuple[int, ...] = ()

    def setup(self):
        """The nets: ``trunk_l`` (the bottom-up stage into h_l), ``posterior_l`` (q's heads:
        h_L on top, [s̃_l, h_l] below), ``prior_l`` (p(z_l | z_{>l})'s heads on s̃_l, l < L),
        ``expand_l`` (s_{l+1} → s̃_l), ``state_l`` (writes z_l into the state) and
        ``decoder`` (s₁ → x)."""
        height, width, _ = self.event_shape
        check_pyramid(height, width, len(self.layers))
        if len(self.channels) != len(self.layers):
            raise ValueError(
                f"a residual hierarchy needs one channel count per layer: {len(self.layers)} "
                f"layers, {len(self.channels)} channel counts"
            )
        self._setup_pseudo_inputs()
        act = self.activation
        self.trunks = [
            pyramid.FeatureStage(c, act, stem=i == 0, name=f"trunk_{i + 1}")
            for i, c in enumerate(self.channels)
        ]
        self.heads = [
            pyramid.GridHeads(
                layer.widths,
                layer.latent_dim,
                posteriors.has_variance_head(layer.posterior),
                act,
                name=f"posterior_{i + 1}",
            )
            for i, layer in enumerate(self.layers)
        ]
        lower = self.layers[:-1]
        self.priors = [
            pyramid.GridHeads(layer.widths, layer.latent_dim, True, act, name=f"prior_{i + 1}")
            for i, layer in enumerate(lower)
        ]
        self.expands = [
            pyramid.GridExpand(self.channels[i], act, name=f"expand_{i + 1}")
            for i in range(len(lower))
        ]
        self.writes = [
            pyramid.GridWrite((height >> (i + 1), width >> (i + 1), c), act, name=f"state_{i + 1}")
            for i, c in enumerate(self.channels)
        ]
        # named "decoder" as in every design
        self.decoder = pyramid.GridDecoder(
            self.channels[0], self.likelihood.param_shape(tuple(self.event_shape)), act
        )

    def _features(self, x) -> list:
        """h₁ … h_L, the bottom-up pass over images (N, H, W, C)."""
        h = [self.trunks[0](x)]
        for trunk in self.trunks[1:]:
            h.append(trunk(h[-1]))
        return h

    def _factor(self, i: int, h, context) -> posteriors.Posterior:
        """Layer i's (0-based) posterior factor from its features h_i and the walk's context,
        the state s̃_i (None for the top layer, which reads h_L alone)."""
        if context is None:
            return self._posterior(i, *self.heads[i](h))
        h = jnp.broadcast_to(h, context.shape[:-1] + h.shape[-1:])  # the state's sample axes
        return self._posterior(i, *self.heads[i](jnp.concatenate([context, h], axis=-1)))

    def _top_state(self, z_top):
        return self.writes[-1](None, z_top)

    def _expand(self, i: int, state):
        return self.expands[i](state)

    def _conditional(self, i: int, context) -> tuple:
        return self.priors[i](context)

    def _write(self, i: int, context, z):
        return self.writes[i](context, z)

    def _decode_walk(self, zs, state):
        return self.decoder(state)

    def decode(self, z, labels=None, *, train: bool = False):
        """p(x | z₁, …, z_L)'s parameters: the state written with every layer of the codes.

        Args:
          z: codes (…, d₁ + … + d_L).
          labels: must be None (a hierarchy is unconditional).
          train: unused (no dropout); kept for ``VAE.decode``'s signature.

        Returns:
          The likelihood's parameters, (…, *param_shape).

        Raises:
          ValueError: less than a whole code.
        """
        del train
        refuse_labels(labels)
        self._check_whole_code(z)
        parts = self.split_code(z)
        return self.decoder(self._walk(parts[-1], lambda i, context, conditional: parts[i])[2])
