"""VAEs with several stochastic layers: what every design shares.

Layers are numbered from the data up, z₁ next to x and z_L on top. Every design generates
from the top down, p(x, z₁, …, z_L) = p(x | z) · Π_{l<L} p(z_l | z_{>l}) · p(z_L), with
p(z_L) = N(0, I) or the VampPrior of Tomczak & Welling (2018), p(z_L) = (1/K) Σ_k
q(z_L | u_k) over learned pseudo-inputs u_k (``prior = "vamp"``, for designs whose
q(z_L | ·) reads x alone). Each posterior factor is a family of its own (``gaussian``,
``collapsed`` with its own σ₀, or ``deterministic``).

``Hierarchy`` holds that shared part, written once:

* the **generative walk** (``_walk``): from z_L, for each lower layer l, a context s̃_l
  (``_expand``), p(z_l | z_{>l})'s mean and log-variance read from it (``_conditional``),
  the layer's code z_l (chosen by the caller: a draw from p or from q, a mean, a given
  code), and the context with z_l written in (``_write``). Sampling, ``descend``, the
  conditionals of given codes and decoding all are walks;
* **top-down inference** (the ladder VAE's order, Sønderby et al., 2016, combined as in
  VDVAE, Child, 2021): a bottom-up pass gives features h₁ … h_L (``_features``), q(z_L | x)
  reads h_L and, walking down, q(z_l | z_{>l}, x) reads h_l with the context the
  generative path has just conditioned p(z_l | z_{>l}) on (``_factor``): inference draws the
  layers in the order the model generates them, and each lower layer's KL compares two
  Gaussians of the same context, in closed form per dimension;
* the code's layout, the top prior, and the model protocol (``cvae.models.protocol``).

A design supplies its nets and those hooks: ``cvae.models.mlp_hierarchy`` (MLPs between
vectors; bottom-up inference too, Burda et al., 2015) and ``cvae.models.residual_hierarchy``
(a pyramid of residual conv blocks with a top-down state). Their bounds — the ELBO with a
KL term per layer and the importance weights of joint draws — are the "layered" formulas
of ``cvae.models.objectives``; a deterministic layer (a point mass) makes them raise, as it
does for ``VAE``.

(One module on purpose: the walk, inference along it, the top prior and the protocol are
the one thing every design shares; what differs lives in the design modules.)

To the rest of cvae a hierarchy's *code* is every layer's latents concatenated, z₁ first:
``encode`` gives the mean path's posterior over it, ``decode`` reads it, ``sample_prior``
draws every layer from the top down, ``descend`` regenerates the layers below a given one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cvae.models import nets, objectives, posteriors
from cvae.models.protocol import ScoredByObjectives
from cvae.models.validation import num_layers


@dataclasses.dataclass(frozen=True)
class StochasticLayer:
    """One stochastic layer: its size, the widths of the nets into it, its posterior family.

    Attributes:
      latent_dim: the dimension of z_l.
      widths: the hidden widths of the inference net into z_l (from x or z_{l−1}); the
        generative net out of z_l (into x or z_{l−1}) has them reversed.
      posterior: "gaussian", "collapsed" or "deterministic".
      sigma0: σ₀ of a collapsed posterior.
      code_shape: () for a latent vector; (h, w, c) for a latent map on a design's h × w
        grid (``latent_dim`` = h·w·c, held flattened position-major).
    """

    latent_dim: int
    widths: tuple[int, ...]
    posterior: str = "gaussian"
    sigma0: float = posteriors.DEFAULT_SIGMA0
    code_shape: tuple[int, ...] = ()


def layer_posteriors(model_config) -> tuple[tuple[str, float], ...]:
    """Each stochastic layer's (posterior family, σ₀), z₁'s first: layer 1's are
    ``posterior`` and ``sigma0``, layer l > 1's entry l − 2 of ``upper_posteriors`` and
    ``upper_sigma0s`` (which default to ``posterior`` and ``sigma0``).

    Args:
      model_config: a validated ``model`` section.

    Returns:
      L pairs, one per layer (``validation.num_layers``).
    """
    m = model_config
    upper = num_layers(m) - 1
    families = tuple(m.upper_posteriors) or (m.posterior,) * upper
    sigma0s = tuple(m.upper_sigma0s) or (m.sigma0,) * upper
    return ((m.posterior, float(m.sigma0)),) + tuple(
        (f, float(s)) for f, s in zip(families, sigma0s, strict=True)
    )


def layers_from_config(model_config) -> tuple[StochasticLayer, ...]:
    """The stochastic layers a config's ``model`` section describes without groups: layer 1
    from ``encoder_widths`` and ``latent_dim``, layer l > 1 from entry l − 2 of
    ``upper_latent_dims`` and ``upper_widths``, each with its ``layer_posteriors`` entry.
    (With ``groups_per_level``: ``cvae.models.residual_hierarchy.group_layers``.)

    Args:
      model_config: a validated ``model`` section.

    Returns:
      The layers, z₁ first.
    """
    m = model_config
    dims = (m.latent_dim, *m.upper_latent_dims)
    widths = (tuple(m.encoder_widths), *(tuple(w) for w in m.upper_widths))
    return tuple(
        StochasticLayer(int(d), tuple(w), f, s)
        for d, w, (f, s) in zip(dims, widths, layer_posteriors(m), strict=True)
    )


def refuse_labels(labels) -> None:
    """Raises ValueError unless ``labels`` is None: a hierarchy is unconditional.

    Args:
      labels: what a caller passed as a hierarchy's labels.
    """
    if labels is not None:
        raise ValueError("labels were given to a hierarchy, which is unconditional")


def draw_conditional(conditional, key, temperature=None):
    """z = μ + τ·σ·ε, ε ~ N(0, I) from ``key``: a draw from a walk's conditional
    p(z_l | z_{>l}) = N(μ, σ²), its noise scaled by the temperature τ when one is given.

    Args:
      conditional: (μ, log σ²) of the conditional, arrays of one shape.
      key: the PRNG key of the noise ε.
      temperature: τ, a scalar; None draws at τ = 1.

    Returns:
      z, an array of the conditional's shape and dtype.
    """
    mean, log_var = conditional
    noise = jax.random.normal(key, mean.shape, mean.dtype)
    if temperature is not None:
        noise = temperature * noise
    return mean + jnp.exp(0.5 * log_var) * noise


# A walk's choice of each lower layer's code: (0-based layer, context, p's (mean, log_var))
# → z_l.
Pick = Callable[[int, Any, tuple], jax.Array]


class Hierarchy(ScoredByObjectives, nn.Module):
    """The generative walk, top-down inference, the code's layout and the model protocol,
    shared by every design (see the module docstring). A design builds its nets in
    ``setup`` and defines the walk's hooks (``_top_state``, ``_expand``, ``_conditional``,
    ``_write``, ``_decode_walk``), ``decode``, and the inference hooks ``_features`` and
    ``_factor`` (or, inferring otherwise, ``_infer_walk`` and ``_mean_path``).

    Attributes:
      layers: the stochastic layers, z₁ (next to x) first.
      likelihood: p(x|z) (``cvae.models.likelihoods``).
      event_shape: (H, W, C) of the images.
      activation: the nets' nonlinearity (Burda et al.: tanh; Tomczak & Welling: gated).
      prior: p(z_L): "standard", N(0, I), or "vamp", the VampPrior (1/K) Σ_k q(z_L | u_k) over
        K learnable pseudo-inputs u_k (a design whose q(z_L | ·) reads x alone: top-down).
      num_pseudo_inputs: K of a VampPrior.
      decoder_layers: "bottom": p(x|z₁); "all": p(x|z₁, …, z_L), the decoder reads the whole
        code (Tomczak & Welling's two-layer HVAE).
    """

    layers: tuple[StochasticLayer, ...]
    likelihood: Any
    event_shape: tuple[int, int, int]
    activation: str = "tanh"
    prior: str = "standard"
    num_pseudo_inputs: int = 0
    decoder_layers: str = "bottom"
    # Whether q(z_l | ·) and p(z_l | z_{>l}) condition on the same context for l < L, so that
    # their KL is in closed form (top-down), or not (bottom-up: a one-sample estimate).
    closed_form_layer_kls = True
    bound_family = "layered"  # the layered formulas of cvae.models.objectives

    # ------------------------------------------------------------ the code and the protocol

    @property
    def num_classes(self) -> int:
        """0: a hierarchy is unconditional (read by ``init_params`` as on ``VAE``)."""
        return 0

    @property
    def layer_dims(self) -> tuple[int, ...]:
        """The latent sizes d₁, …, d_L."""
        return tuple(layer.latent_dim for layer in self.layers)

    @property
    def layer_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Each layer's code shape, z₁'s first: (d_l,) for a vector, (h, w, c) for a map."""
        return tuple(layer.code_shape or (layer.latent_dim,) for layer in self.layers)

    @property
    def sigma0s(self) -> tuple[float | None, ...]:
        """Each layer's fixed σ₀ (a collapsed layer's); None where the scale is learned."""
        return tuple(
            layer.sigma0 if layer.posterior == "collapsed" else None for layer in self.layers
        )

    @property
    def code_dim(self) -> int:
        """The size of a code: every layer's latents concatenated, d₁ + … + d_L."""
        return sum(self.layer_dims)

    @property
    def posterior_family(self) -> str:
        """ "deterministic" if a layer is a point mass (no density: no bounds), else
        "collapsed" if a layer is collapsed (samples want an ex-post density), else
        "gaussian"."""
        families = {layer.posterior for layer in self.layers}
        for family in ("deterministic", "collapsed"):
            if family in families:
                return family
        return "gaussian"

    @nn.nowrap
    def check_labels(self, labels) -> None:
        """Raises ValueError unless ``labels`` is None (``refuse_labels``).

        Args:
          labels: what a caller passed as the labels.
        """
        refuse_labels(labels)

    @nn.nowrap
    def split_code(self, z) -> list:
        """A code (…, d₁ + … + d_L) as its layers' parts, z₁ first.

        Args:
          z: codes, every layer's latents concatenated.

        Returns:
          The per-layer parts, each (…, d_l).
        """
        bounds = [sum(self.layer_dims[:i]) for i in range(1, len(self.layers))]
        return jnp.split(z, bounds, axis=-1)

    @nn.nowrap
    def with_sigma0s(self, sigma0s) -> Hierarchy:
        """The model with layer l's σ₀ set to ``sigma0s[l]`` (numbers or traced values: a
        population member's per-layer σ₀).

        Args:
          sigma0s: one σ₀ per layer, z₁'s first.

        Returns:
          The model (a clone; parameters are unchanged).
        """
        layers = tuple(
            dataclasses.replace(layer, sigma0=s)
            for layer, s in zip(self.layers, sigma0s, strict=True)
        )
        return self.clone(layers=layers)

    def _posterior(self, i: int, mean, log_var) -> posteriors.Posterior:
        layer = self.layers[i]
        return posteriors.make_posterior(layer.posterior, mean, log_var, layer.sigma0)

    def _check_whole_code(self, z) -> None:
        """Raises ValueError unless ``z`` holds whole codes (a decoder of every layer)."""
        if z.shape[-1] != self.code_dim:
            raise ValueError(
                f"this model decodes whole codes of {self.code_dim} numbers (every layer, "
                f"z₁ first); got {z.shape[-1]}"
            )

    # ------------------------------------------------------------------------ the top prior

    def _setup_pseudo_inputs(self):
        """A VampPrior's pseudo-inputs, initialised N(0.05, 0.01²) per pixel as in ``VAE``."""
        if self.prior == "vamp":
            self.pseudo_inputs = self.param(
                "pseudo_inputs",
                lambda key, shape: 0.05 + 0.01 * jax.random.normal(key, shape),
                (self.num_pseudo_inputs,) + tuple(self.event_shape),
            )

    def pseudo_posterior(self) -> posteriors.Posterior:
        """q(z_L | u_k) for a VampPrior's K pseudo-inputs (clipped to [0, 1]): the top factor
        of the design's bottom-up features of u_k, a batch of K top-layer posteriors.

        Returns:
          The top layer's posterior at the pseudo-inputs.
        """
        u = jnp.clip(self.pseudo_inputs, 0.0, 1.0)
        top = len(self.layers) - 1
        return self._factor(top, self._features(u)[top], None)

    def top_log_prob(self, z):
        """log p(z_L): N(0, I), or the VampPrior log (1/K) Σ_k q(z_L | u_k).

        Args:
          z: top-layer latents (…, d_L).

        Returns:
          (…,) log-densities in nats.
        """
        if self.prior != "vamp":
            return posteriors.standard_normal_log_prob(z)
        per_component = self.pseudo_posterior().log_prob(z[..., None, :])  # (…, K)
        return jax.nn.logsumexp(per_component, axis=-1) - math.log(self.num_pseudo_inputs)

    def _draw_top(self, key, num_samples: int, temperature=None):
        """z_L ~ p(z_L): N(0, I) with ``key``, or a uniformly chosen pseudo-input's top
        posterior (the component and the draw from ``split(key)``, as ``VAE.sample_prior``);
        with a temperature τ the draw's spread about its mean is scaled by τ."""
        dim = self.layers[-1].latent_dim
        if self.prior != "vamp":
            z = jax.random.normal(key, (num_samples, dim))
            return z if temperature is None else temperature * z
        component_key, draw_key = jax.random.split(key)
        k = jax.random.randint(component_key, (num_samples,), 0, self.num_pseudo_inputs)
        chosen = jax.tree_util.tree_map(lambda leaf: leaf[k], self.pseudo_posterior())
        z = chosen.sample(draw_key)
        return z if temperature is None else chosen.mean + temperature * (z - chosen.mean)

    # ------------------------------------------------------------------- the generative walk

    def _top_state(self, z_top):
        """The walk's state after z_L (defined by each design)."""
        raise NotImplementedError

    def _expand(self, i: int, state):
        """Layer i's (0-based) context s̃_i from the state above it (defined by each design)."""
        raise NotImplementedError

    def _conditional(self, i: int, context) -> tuple:
        """p(z_i | z_{>i})'s (mean, log-variance) read from the context (each design's)."""
        raise NotImplementedError

    def _write(self, i: int, context, z):
        """The state with layer i's code written into its context (defined by each design)."""
        raise NotImplementedError

    def _decode_walk(self, zs, state):
        """p(x | ·)'s parameters from a walk's codes and final state (each design's)."""
        raise NotImplementedError

    def _walk(self, z_top, pick: Pick):
        """The generative walk from z_L: for each lower layer l, its context s̃_l,
        p(z_l | z_{>l})'s parameters from it, and z_l = ``pick(l − 1, s̃_l, (mean, log_var))``
        written into the state.

        Returns:
          (zs, conditionals, state): the layers' codes z₁ first, the L − 1 conditionals'
          (mean, log_var) layer 1 first, and the final state (what a decoder of it reads).
        """
        top = len(self.layers) - 1
        state = self._top_state(z_top)
        zs: list = [z_top]
        conditionals: list = []
        for i in range(top - 1, -1, -1):
            context = self._expand(i, state)
            conditional = self._conditional(i, context)
            z = pick(i, context, conditional)
            state = self._write(i, context, z)
            zs.insert(0, z)
            conditionals.insert(0, conditional)
        return zs, conditionals, state

    def conditionals(self, zs):
        """p(z_l | z_{>l})'s (mean, log-variance) for l = 1 … L−1, given draws z₁ … z_L.

        Args:
          zs: per-layer draws, z₁ first.

        Returns:
          A list of L − 1 (mean, log_var) pairs, layer 1 first.
        """
        return self._walk(zs[-1], lambda i, context, conditional: zs[i])[1]

    def generative_log_probs(self, zs):
        """log p(z_l | z_{>l}) for l < L, then log p(z_L), for draws z₁ … z_L.

        Args:
          zs: per-layer draws, z₁ first.

        Returns:
          A list of L arrays of log-densities, layer 1 first.
        """
        return objectives.elbo.generative_log_probs(
            zs, self.conditionals(zs), self.top_log_prob(zs[-1])
        )

    def sample_layers(self, key, num_samples: int, temperatures=None):
        """z_L ~ p(z_L), then z_l ~ p(z_l | z_{>l}) down to z₁.

        Args:
          key: the PRNG key of z_L's draw (as ``VAE.sample_prior``'s); the layer j below the
            top (j = 1 for z_{L−1}) draws with ``fold_in(key, j)``.
          num_samples: how many.
          temperatures: None, or one τ_l per layer, z₁'s first: layer l's draw is its
            conditional's mean plus τ_l times its noise (τ = 0: the mean; τ < 1: the
            "reduced temperature" samples of VDVAE and NVAE).

        Returns:
          The per-layer draws, z₁ first, each (num_samples, d_l).
        """
        top = len(self.layers) - 1
        if temperatures is not None:
            temperatures = jnp.asarray(temperatures, jnp.float32)

        def draw(i, context, conditional):
            temperature = None if temperatures is None else temperatures[i]
            return draw_conditional(conditional, jax.random.fold_in(key, top - i), temperature)

        z_top = self._draw_top(
            key, num_samples, None if temperatures is None else temperatures[top]
        )
        return self._walk(z_top, draw)[0]

    def sample_prior(self, key, num_samples: int, temperatures=None):
        """Codes drawn ancestrally from the top down (``sample_layers``), concatenated:
        ``decode`` of them draws from the model's p(x).

        Args:
          key: the PRNG key of the draw.
          num_samples: how many.
          temperatures: None, or one τ_l per layer (``sample_layers``).

        Returns:
          (num_samples, d₁ + … + d_L) codes.
        """
        return jnp.concatenate(self.sample_layers(key, num_samples, temperatures), axis=-1)

    def resample_layer(self, code, layer: int, key):
        """The codes with one layer redrawn from the model and every other layer kept: z_l ~
        p(z_l | z_{>l}) given the kept layers above (z_L ~ p(z_L) for the top). Decoded, it
        shows what that layer alone changes in an image (the explorer's group resampling).

        Args:
          code: codes (N, d₁ + … + d_L).
          layer: the layer redrawn, 1 (next to x) to L.
          key: the PRNG key of the draw.

        Returns:
          The codes, (N, d₁ + … + d_L).

        Raises:
          ValueError: a layer outside 1 … L.
        """
        top = len(self.layers) - 1
        if not 1 <= layer <= top + 1:
            raise ValueError(f"layer must be 1 … {top + 1}, got {layer}")
        parts = self.split_code(code)

        def pick(i, context, conditional):
            if i != layer - 1:
                return parts[i]
            return draw_conditional(conditional, key)

        z_top = self._draw_top(key, code.shape[0]) if layer == top + 1 else parts[-1]
        return jnp.concatenate(self._walk(z_top, pick)[0], axis=-1)

    def descend(self, code, layer: int, key=None):
        """The code with the layers below ``layer`` regenerated from those at and above it:
        each p(z_j | z_{>j})'s mean, or with ``key`` a draw (1-based layer j from
        ``fold_in(key, j)``). What a traversal of an upper layer decodes: the layers under it
        follow the changed code.

        Args:
          code: codes (…, d₁ + … + d_L); the entries of layers below ``layer`` are replaced.
          layer: the lowest layer (1 = next to x) kept.
          key: None for the conditional means; else the PRNG key of the draws.

        Returns:
          The codes, (…, d₁ + … + d_L).
        """
        parts = self.split_code(code)

        def regenerate(i, context, conditional):
            if i >= layer - 1:
                return parts[i]
            if key is None:
                return conditional[0]  # the mean
            return draw_conditional(conditional, jax.random.fold_in(key, i + 1))

        return jnp.concatenate(self._walk(parts[-1], regenerate)[0], axis=-1)

    # ----------------------------------------------------------------------------- inference

    def _features(self, x) -> list:
        """h₁ … h_L, the bottom-up pass over x: defined by the designs whose q(z_L | ·) reads
        x alone (top-down), the only ones a VampPrior's pseudo-inputs can be encoded by."""
        name = type(self).__name__
        raise NotImplementedError(f"a VampPrior needs top-down inference, not {name}")

    def _factor(self, i: int, h, context) -> posteriors.Posterior:
        """Layer i's (0-based) posterior factor from its features h and the walk's context
        (None for the top layer); defined with ``_features``."""
        raise NotImplementedError(f"{type(self).__name__} has no per-layer posterior factors")

    def _infer_walk(self, x, key, num_samples):
        """Top-down inference: z_L ~ q(z_L|x), then z_l ~ q(z_l | z_{>l}, x) down to z₁ along
        the generative walk (layer l draws with ``fold_in(key, l − 1)``).

        Returns:
          (posteriors, zs, conditionals, state): per layer its factor and draw, z₁ first, and
          the walk's conditionals and final state.
        """
        h = self._features(x)
        top = len(self.layers) - 1
        found = [self._factor(top, h[top], None)]

        def draw(i, context, conditional):
            del conditional
            found.insert(0, self._factor(i, h[i], context))
            return found[0].sample(jax.random.fold_in(key, i))

        z_top = found[0].sample(jax.random.fold_in(key, top), num_samples)
        zs, conditionals, state = self._walk(z_top, draw)
        return found, zs, conditionals, state

    def _mean_path(self, x) -> list:
        """Every layer's posterior factor along the mean path, z₁ first: top-down, layer l's
        factor is q(z_l | μ_{>l}, x), the walk conditioned on the means above."""
        h = self._features(x)
        top = len(self.layers) - 1
        found = [self._factor(top, h[top], None)]

        def mean(i, context, conditional):
            del conditional
            found.insert(0, self._factor(i, h[i], context))
            return found[0].mean

        self._walk(found[0].mean, mean)
        return found

    def infer(self, x, key, num_samples: int | None = None):
        """Draws z₁, …, z_L ~ q(·|x) in the design's order.

        Args:
          x: images in [0, 1], (B, H, W, C).
          key: the PRNG key of the draws.
          num_samples: joint draws per example; None for one, without the leading axis.

        Returns:
          (posteriors, zs): per layer its posterior factor and its draw, z₁ first; each z
          is (B, d_l) or (num_samples, B, d_l).
        """
        found, zs, _, _ = self._infer_walk(x, key, num_samples)
        return found, zs

    def encode(self, x, labels=None, *, train: bool = False) -> posteriors.Posterior:
        """Every layer's posterior along the mean path, as one posterior over the code: what
        reconstructions, active units and the ex-post densities read. (The bounds draw each
        layer given the draw it conditions on: ``infer``.)

        Args:
          x: images in [0, 1], (B, H, W, C).
          labels: must be None (a hierarchy is unconditional).
          train: unused (a hierarchy has no dropout); kept for ``VAE.encode``'s signature.

        Returns:
          A diagonal Gaussian over the (B, d₁ + … + d_L) codes (a point mass if a layer is
          deterministic).
        """
        del train
        refuse_labels(labels)
        nets.check_image_batch(x, self.event_shape)
        found = self._mean_path(x)
        mean = jnp.concatenate([p.mean for p in found], axis=-1)
        log_vars = [p.log_var for p in found if p.log_var is not None]
        if len(log_vars) < len(found):
            return posteriors.DeterministicPosterior(mean)
        return posteriors.GaussianPosterior(mean, jnp.concatenate(log_vars, axis=-1))

    def __call__(self, x, key, num_samples: int | None = None):
        """One joint draw per example (or ``num_samples``) and what the bounds need:
        (posteriors, zs, p(x|z)'s parameters, ``conditionals(zs)``, log p(z_L)), all from
        one walk."""
        found, zs, conditionals, state = self._infer_walk(x, key, num_samples)
        return found, zs, self._decode_walk(zs, state), conditionals, self.top_log_prob(zs[-1])
