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

**Groups per level** (VDVAE's depth): a level of the pyramid may hold several stochastic
layers — *groups* — one after another on the same state (``groups``, finest level first),
and a group's latent may be a *map* on its level's grid, c channels per position
(``StochasticLayer.code_shape``), read by convolutional heads and written by a 1×1
convolution (``cvae.models.pyramid.MapHeads``, ``MapWrite``) instead of a vector read by
dense heads. Within a level the walk's context of a group is the state the group above
left (no upsampling); between levels it is the upsampled state, as above. With one group
per level the design is the one described first, parameter for parameter.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from cvae.models import nets, posteriors, pyramid
from cvae.models.hierarchy import Hierarchy, StochasticLayer, layer_posteriors, refuse_labels


def check_pyramid(height: int, width: int, num_levels: int, unit: str = "layer") -> None:
    """Raises ValueError, saying how to fix it, unless images of H×W halve evenly once per
    level down to a coarsest grid of at least 2×2 (on a 1×1 grid GroupNorm's groups of one
    value normalise every input to the same output).

    Args:
      height: H of the images.
      width: W of the images.
      num_levels: the pyramid's levels.
      unit: what the message calls a level: "layer" (one stochastic layer a level) or
        "level" (a level of groups).
    """
    nets.check_resnet_shape(height, width, num_levels)
    if min(height, width) >> num_levels < 2:
        raise ValueError(
            f"a residual hierarchy of {num_levels} {unit}s puts its top {unit} on a "
            f"{height >> num_levels}×{width >> num_levels} grid of {height}×{width} images; "
            f"it needs at least 2×2: use fewer {unit}s or larger images"
        )


def group_layers(model_config, event_shape) -> tuple[StochasticLayer, ...]:
    """The stochastic layers of a config with ``model.groups_per_level``: level s (1 = the
    finest, an H/2^s × W/2^s grid) holds ``groups_per_level[s − 1]`` groups, each a latent
    map of ``code_channels`` channels per position; group 1 (z₁, next to x) is the finest
    level's first. Group 1 is ``posterior`` with ``sigma0``; group l > 1 reads entry l − 2 of
    ``upper_posteriors`` and ``upper_sigma0s`` when they are given.

    Args:
      model_config: a validated ``model`` section with ``groups_per_level`` set.
      event_shape: (H, W, C) of the images.

    Returns:
      The layers, z₁ first.
    """
    m = model_config
    height, width = int(event_shape[0]), int(event_shape[1])
    c = int(m.code_channels)
    shapes = [
        (height >> level, width >> level, c)
        for level, count in enumerate(m.groups_per_level, start=1)
        for _ in range(count)
    ]
    return tuple(
        StochasticLayer(math.prod(shape), (), family, sigma0, shape)
        for shape, (family, sigma0) in zip(shapes, layer_posteriors(m), strict=True)
    )


class ResidualTopDownVAE(Hierarchy):
    """Stochastic layers on a pyramid of residual conv blocks, inferred top-down (see the
    module docstring).

    Attributes (besides ``Hierarchy``'s; a vector layer's ``widths`` are the hidden widths
    of the dense heads that read its grid, a map layer's heads are as wide as its level):
      channels: the grid's channels at each level, the finest first (multiples of 8:
        GroupNorm uses 8 groups); level s's grid is H/2^s × W/2^s.
      groups: how many layers each level holds, the finest first (they sum to L); empty:
        one layer per level.
    """

    channels: tuple[int, ...] = ()
    groups: tuple[int, ...] = ()

    @property
    def layer_levels(self) -> tuple[int, ...]:
        """Each layer's level of the pyramid, 0-based (0: the H/2 × W/2 grid), z₁'s first."""
        counts = tuple(self.groups) or (1,) * len(self.layers)
        return tuple(level for level, count in enumerate(counts) for _ in range(count))

    def _check_layout(self) -> None:
        """Raises ValueError, in one line, unless channels, groups and layers agree."""
        height, width, _ = self.event_shape
        check_pyramid(height, width, len(self.channels), "level" if self.groups else "layer")
        counts = tuple(self.groups) or (1,) * len(self.layers)
        if len(counts) != len(self.channels) or sum(counts) != len(self.layers):
            raise ValueError(
                f"a residual hierarchy needs one channel count per level and one layer per "
                f"group: {len(self.layers)} layers, {len(self.channels)} channel counts, "
                f"groups {counts}"
            )
        for layer, level in zip(self.layers, self.layer_levels, strict=True):
            grid = (height >> (level + 1), width >> (level + 1))
            if layer.code_shape and tuple(layer.code_shape[:2]) != grid:
                raise ValueError(
                    f"a latent map of shape {layer.code_shape} cannot sit on level "
                    f"{level + 1}, whose grid is {grid[0]}×{grid[1]}"
                )

    def setup(self):
        """The nets: ``trunk_s`` (the bottom-up stage into level s's features),
        ``posterior_l`` (q's heads: h on top, [s̃_l, h] below), ``prior_l`` (p(z_l | z_{>l})'s
        heads on s̃_l, l < L), ``expand_l`` (the state one level up → s̃_l, for the layers
        that start a level), ``state_l`` (writes z_l into the state) and ``decoder``
        (the finest state → x)."""
        self._check_layout()
        height, width, _ = self.event_shape
        self._setup_pseudo_inputs()
        act, levels = self.activation, self.layer_levels
        # VDVAE's scale of a map's write: 1/√L, so that L writes start near the identity
        write_scale = 1.0 / len(self.layers) ** 0.5
        self.trunks = [
            pyramid.FeatureStage(c, act, stem=s == 0, name=f"trunk_{s + 1}")
            for s, c in enumerate(self.channels)
        ]

        def heads(i, layer, variance_head, kind):
            if layer.code_shape:
                head_width = self.channels[levels[i]]  # as wide as the level's state
                return pyramid.MapHeads(
                    head_width, layer.code_shape[-1], variance_head, act, name=f"{kind}_{i + 1}"
                )
            return pyramid.GridHeads(
                layer.widths, layer.latent_dim, variance_head, act, name=f"{kind}_{i + 1}"
            )

        self.heads = [
            heads(i, layer, posteriors.has_variance_head(layer.posterior), "posterior")
            for i, layer in enumerate(self.layers)
        ]
        self.priors = [heads(i, layer, True, "prior") for i, layer in enumerate(self.layers[:-1])]
        self.expands = [
            pyramid.GridExpand(self.channels[levels[i]], act, name=f"expand_{i + 1}")
            for i in range(len(self.layers) - 1)
            if levels[i] != levels[i + 1]
        ]

        def write(i, layer):
            level = levels[i]
            grid = (height >> (level + 1), width >> (level + 1), self.channels[level])
            if layer.code_shape:
                return pyramid.MapWrite(
                    grid, layer.code_shape[-1], act, write_scale, name=f"state_{i + 1}"
                )
            return pyramid.GridWrite(grid, act, name=f"state_{i + 1}")

        self.writes = [write(i, layer) for i, layer in enumerate(self.layers)]
        # named "decoder" as in every design
        self.decoder = pyramid.GridDecoder(
            self.channels[0], self.likelihood.param_shape(tuple(self.event_shape)), act
        )

    def _features(self, x) -> list:
        """Each layer's features, z₁'s first: its level's bottom-up pass over images
        (N, H, W, C)."""
        per_level = [self.trunks[0](x)]
        for trunk in self.trunks[1:]:
            per_level.append(trunk(per_level[-1]))
        return [per_level[level] for level in self.layer_levels]

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
        """s̃_i: the state upsampled when layer i starts a level, else the state as the
        group above left it."""
        levels = self.layer_levels
        if levels[i] == levels[i + 1]:
            return state
        slot = sum(levels[j] != levels[j + 1] for j in range(i))
        return self.expands[slot](state)

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
