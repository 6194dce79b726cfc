"""A top-down hierarchy of residual convolutional blocks (VDVAE's structure, Child, 2021,
with one latent vector per level of the pyramid): ``ResidualTopDownVAE``.

Layer l (z₁ next to x) lives at the grid H/2^l × W/2^l with ``channels[l − 1]`` channels.
Two deterministic paths run over that pyramid:

* the bottom-up pass (inference only): h_l = down(block(h_{l−1})), h₀ = stem(x), each
  stage a residual block and a stride-2 convolution (``nets.FeatureStage``);
* the top-down state (shared by the model and its posterior): s_L = block(W z_L) on the
  coarsest grid; going down, s̃_l = conv(up×2(s_{l+1})) carries everything drawn above,
  p(z_l | z_{>l}) and q(z_l | z_{>l}, x) are read from s̃_l and from [s̃_l, h_l], and
  s_l = block(s̃_l + W z_l) writes z_l in. The decoder p(x | z₁, …, z_L) reads s₁.

So p(x, z) = p(x | z) · Π_{l<L} p(z_l | z_{>l}) · p(z_L) with p(z_L) = N(0, I) (or the
VampPrior) and q(z | x) = q(z_L | x) · Π_{l<L} q(z_l | z_{>l}, x): the order in which the
model generates, a closed-form KL per lower layer (q and p read the same state), and the
same code, bounds and downstream interface as the MLP designs of ``cvae.models.hierarchy``.
Unlike those, each conditional prior reads every layer above through the state, not only
z_{l+1}, and the decoder reads every layer (``decoder_layers = "all"``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from cvae.models import nets, posteriors
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
    closed_form_layer_kls = True

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
            nets.FeatureStage(c, act, stem=i == 0, name=f"trunk_{i + 1}")
            for i, c in enumerate(self.channels)
        ]
        self.heads = [
            nets.GridHeads(
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
            nets.GridHeads(layer.widths, layer.latent_dim, True, act, name=f"prior_{i + 1}")
            for i, layer in enumerate(lower)
        ]
        self.expands = [
            nets.GridExpand(self.channels[i], act, name=f"expand_{i + 1}")
            for i in range(len(lower))
        ]
        self.writes = [
            nets.GridWrite((height >> (i + 1), width >> (i + 1), c), act, name=f"state_{i + 1}")
            for i, c in enumerate(self.channels)
        ]
        # named "decoder" as in every design; mypy knows the attribute from the MLP designs
        self.decoder = nets.GridDecoder(  # type: ignore[assignment]
            self.channels[0], self.likelihood.param_shape(tuple(self.event_shape)), act
        )

    def _features(self, x) -> list:
        """h₁ … h_L, the bottom-up pass over images (N, H, W, C)."""
        h = [self.trunks[0](x)]
        for trunk in self.trunks[1:]:
            h.append(trunk(h[-1]))
        return h

    def _factor(self, i: int, h, state) -> posteriors.Posterior:
        """Layer i's (0-based) posterior factor from its features h_i and the state s̃_i
        (None for the top layer, which reads h_L alone)."""
        if state is None:
            return self._posterior(i, *self.heads[i](h))
        h = jnp.broadcast_to(h, state.shape[:-1] + h.shape[-1:])  # the state's sample axes
        return self._posterior(i, *self.heads[i](jnp.concatenate([state, h], axis=-1)))

    def _walk(self, z_top, pick: Callable):
        """The top-down state from z_L: for each lower layer l, s̃_l, p(z_l | z_{>l})'s
        parameters from it, and z_l = ``pick(l − 1, s̃_l, (mean, log_var))``.

        Returns:
          (zs, conditionals, s₁): the layers' codes z₁ first, the L − 1 conditionals'
          (mean, log_var) layer 1 first, and the finest state, which the decoder reads.
        """
        top = len(self.layers) - 1
        state = self.writes[top](None, z_top)
        zs: list = [z_top]
        conditionals: list = []
        for i in range(top - 1, -1, -1):
            state = self.expands[i](state)
            conditional = self.priors[i](state)
            z = pick(i, state, conditional)
            state = self.writes[i](state, z)
            zs.insert(0, z)
            conditionals.insert(0, conditional)
        return zs, conditionals, state

    def _infer_walk(self, x, key, num_samples):
        """``infer``'s draws, with the conditionals and the finest state of the same walk."""
        h = self._features(x)
        top = len(self.layers) - 1
        found = [self._factor(top, h[top], None)]

        def draw(i, state, conditional):
            del conditional
            found.insert(0, self._factor(i, h[i], state))
            return found[0].sample(jax.random.fold_in(key, i))

        z_top = found[0].sample(jax.random.fold_in(key, top), num_samples)
        zs, conditionals, state = self._walk(z_top, draw)
        return found, zs, conditionals, state

    def infer(self, x, key, num_samples: int | None = None):
        """Draws z_L ~ q(z_L|x), then z_l ~ q(z_l | z_{>l}, x) down to z₁.

        Args:
          x: images in [0, 1], (B, H, W, C).
          key: the PRNG key of the draws; layer l draws with ``fold_in(key, l − 1)``.
          num_samples: joint draws per example; None for one, without the leading axis.

        Returns:
          (posteriors, zs): per layer q(z_l | z_{>l}, x) and its draw, z₁ first; each z is
          (B, d_l) or (num_samples, B, d_l).
        """
        found, zs, _, _ = self._infer_walk(x, key, num_samples)
        return found, zs

    def _mean_path(self, x) -> list:
        """Layer l's factor is q(z_l | μ_{>l}, x), the state written with the means above."""
        h = self._features(x)
        top = len(self.layers) - 1
        found = [self._factor(top, h[top], None)]

        def mean(i, state, conditional):
            del conditional
            found.insert(0, self._factor(i, h[i], state))
            return found[0].mean

        self._walk(found[0].mean, mean)
        return found

    def conditionals(self, zs):
        """p(z_l | z_{>l})'s (mean, log-variance) for l = 1 … L−1, given draws z₁ … z_L.

        Args:
          zs: per-layer draws, z₁ first.

        Returns:
          A list of L − 1 (mean, log_var) pairs, layer 1 first.
        """
        return self._walk(zs[-1], lambda i, state, conditional: zs[i])[1]

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
        return self.decoder(self._walk(parts[-1], lambda i, state, conditional: parts[i])[2])

    def sample_layers(self, key, num_samples: int):
        """z_L ~ p(z_L), then z_l ~ p(z_l | z_{>l}) down to z₁.

        Args:
          key: the PRNG key of z_L's draw; the layer j below the top (j = 1 for z_{L−1})
            draws with ``fold_in(key, j)``, as in the MLP designs.
          num_samples: how many.

        Returns:
          The per-layer draws, z₁ first, each (num_samples, d_l).
        """
        top = len(self.layers) - 1

        def draw(i, state, conditional):
            mean, log_var = conditional
            noise = jax.random.normal(jax.random.fold_in(key, top - i), mean.shape, mean.dtype)
            return mean + jnp.exp(0.5 * log_var) * noise

        return self._walk(self._draw_top(key, num_samples), draw)[0]

    def descend(self, code, layer: int, key=None):
        """The code with the layers below ``layer`` regenerated from those at and above it:
        each p(z_j | z_{>j})'s mean, or with ``key`` a draw (1-based layer j from
        ``fold_in(key, j)``).

        Args:
          code: codes (…, d₁ + … + d_L); the entries of layers below ``layer`` are replaced.
          layer: the lowest layer (1 = next to x) kept.
          key: None for the conditional means; else the PRNG key of the draws.

        Returns:
          The codes, (…, d₁ + … + d_L).
        """
        parts = self.split_code(code)

        def regenerate(i, state, conditional):
            if i >= layer - 1:
                return parts[i]
            mean, log_var = conditional
            if key is None:
                return mean
            noise = jax.random.normal(jax.random.fold_in(key, i + 1), mean.shape, mean.dtype)
            return mean + jnp.exp(0.5 * log_var) * noise

        return jnp.concatenate(self._walk(parts[-1], regenerate)[0], axis=-1)

    def __call__(self, x, key, num_samples: int | None = None):
        """One joint draw per example (or ``num_samples``), and from the same walk p(x|z)'s
        parameters, the conditionals and log p(z_L) (``Hierarchy.__call__``'s tuple)."""
        found, zs, conditionals, state = self._infer_walk(x, key, num_samples)
        return found, zs, self.decoder(state), conditionals, self.top_log_prob(zs[-1])
