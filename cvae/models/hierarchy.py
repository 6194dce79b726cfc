"""VAEs with several stochastic layers: bottom-up inference (Burda et al., 2015) and
top-down inference that shares the generative order (the ladder VAE of Sønderby et al.,
2016, with VDVAE's way of combining the two passes, Child, 2021).

Layers are numbered from the data up, z₁ next to x and z_L on top. Both designs generate
alike: p(x, z₁, …, z_L) = p(x|z₁) · Π_{l<L} p(z_l | z_{l+1}) · p(z_L), with p(z_L) = N(0, I)
and each p(z_l | z_{l+1}) a diagonal Gaussian whose mean and log-variance an MLP computes.
Two options give the two-layer HVAE of Tomczak & Welling (2018): a decoder of every layer,
p(x | z₁, …, z_L) (``decoder_layers = "all"``), and the VampPrior on top, p(z_L) =
(1/K) Σ_k q(z_L | u_k) over learned pseudo-inputs u_k (``prior = "vamp"``, top-down only).
They infer differently, each factor a posterior family of its own (``gaussian``,
``collapsed`` with its own σ₀, or ``deterministic``):

* ``BottomUpVAE``: q(z₁, …, z_L | x) = q(z₁|x) · Π_{l>1} q(z_l | z_{l−1}). The layer-l inference
  net and the generative net into layer l−1 have the same widths (Burda et al.'s two-layer
  MNIST model: x → 200 → 200 → z₁ (100) → 100 → 100 → z₂ (50), tanh, and the mirror image
  down). One layer is ``cvae.models.vae.VAE`` with an MLP: the same parameter names, hence
  the same initial parameters from a key (``cvae.models.vae.init_params`` initialises both),
  and the same ELBO, bit for bit.
* ``TopDownVAE``: q(z₁, …, z_L | x) = q(z_L | x) · Π_{l<L} q(z_l | z_{l+1}, x). A deterministic
  bottom-up pass computes features h₁ = f₁(x), h_l = f_l(h_{l−1}) (layer l's widths); the
  top posterior reads h_L, and going down, q(z_l | z_{l+1}, x) reads [h_l, z_{l+1}] — the
  features of x at that depth and the sample the generative path has just conditioned
  p(z_l | z_{l+1}) on. Inference thus draws the layers in the order the model generates
  them, and each layer's KL compares two Gaussians given the same z_{l+1}: it is in closed
  form, per dimension.

The bounds, for samples z ~ q drawn ancestrally in inference order (they need every
layer's density: a ``deterministic`` layer, a point mass, makes them raise, as for ``VAE``):

* log w = log p(x|z) + Σ_{l<L} log p(z_l | z_{l+1}) + log p(z_L) − Σ_l log q(z_l | ·);
  the ELBO is E_q[log w], the IWAE bound E[log (1/k) Σ_i w_i], the importance-sampled
  log-likelihood the same with large k;
* per layer, the ELBO's KL terms: KL_L = KL(q(z_L | ·) ‖ N(0, I)) in closed form (under a
  VampPrior the one-sample log q(z_L | x) − log p(z_L)); for l < L,
  top-down, KL(q(z_l | z_{l+1}, x) ‖ p(z_l | z_{l+1})) in closed form at the sampled z_{l+1};
  bottom-up, the one-sample estimate log q(z_l | z_{l−1}) − log p(z_l | z_{l+1}) (z_{l+1} is
  drawn from z_l, so no closed form applies). ELBO = log p(x|z) − Σ_l KL_l.

A third design, on residual conv blocks with a top-down state that every layer writes
into, is ``cvae.models.residual_hierarchy.ResidualTopDownVAE``.

To the rest of cvae a hierarchy (any design, a ``Hierarchy``) looks like a ``VAE``
whose *code* is every layer's latents concatenated, z₁ first: ``encode`` gives the mean
path's posterior over it, ``decode`` reads z₁, ``sample_prior`` draws every layer from the
top down, ``descend`` regenerates the layers below a given one. ``vae.build_model`` builds
one from a config's ``model.upper_*`` fields and ``model.inference``
(``layers_from_config``); ``objectives`` and ``evaluation.metrics`` hand its bounds to
``elbo_loss``, ``iwae_loss`` and ``log_importance_weights`` here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp

from cvae.models import nets, posteriors


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


def layers_from_config(model_config) -> tuple[StochasticLayer, ...]:
    """The stochastic layers a config's ``model`` section describes: layer 1 from
    ``encoder_widths``, ``latent_dim``, ``posterior`` and ``sigma0``, layer l > 1 from entry
    l − 2 of ``upper_latent_dims`` and ``upper_widths`` (and of ``upper_posteriors`` and
    ``upper_sigma0s``, which default to ``posterior`` and ``sigma0``).

    Args:
      model_config: a validated ``model`` section.

    Returns:
      The layers, z₁ first.
    """
    m = model_config
    upper = len(m.upper_latent_dims)
    families = tuple(m.upper_posteriors) or (m.posterior,) * upper
    sigma0s = tuple(m.upper_sigma0s) or (m.sigma0,) * upper
    first = StochasticLayer(m.latent_dim, tuple(m.encoder_widths), m.posterior, float(m.sigma0))
    return (first,) + tuple(
        StochasticLayer(int(d), tuple(w), f, float(s))
        for d, w, f, s in zip(m.upper_latent_dims, m.upper_widths, families, sigma0s, strict=True)
    )


def refuse_labels(labels) -> None:
    """Raises ValueError unless ``labels`` is None: a hierarchy is unconditional.

    Args:
      labels: what a caller passed as a hierarchy's labels.
    """
    if labels is not None:
        raise ValueError("labels were given to a hierarchy, which is unconditional")


def _as_image(z):
    """Latents (…, d) as 1×1×d images, the input ``nets.MLPEncoder`` flattens: the nets
    between layers are the image encoder's MLP (trunk, mean and log-variance heads)."""
    return z[..., None, None, :]


class Hierarchy(nn.Module):
    """What both designs share: the generative path, the code's layout, and the interface of
    ``VAE`` (see the module docstring). Subclasses build their inference nets in ``setup``
    (after ``_setup_generative``) and define ``infer`` and ``encode``.

    Attributes:
      layers: the stochastic layers, z₁ (next to x) first.
      likelihood: p(x|z₁) (``cvae.models.likelihoods``).
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
    # Whether q(z_l | ·) and p(z_l | z_{l+1}) condition on the same z_{l+1} for l < L, so that
    # their KL is in closed form (top-down), or not (bottom-up: a one-sample estimate).
    closed_form_layer_kls = False

    def _setup_pseudo_inputs(self):
        """A VampPrior's pseudo-inputs, initialised N(0.05, 0.01²) per pixel as in ``VAE``."""
        if self.prior == "vamp":
            self.pseudo_inputs = self.param(
                "pseudo_inputs",
                lambda key, shape: 0.05 + 0.01 * jax.random.normal(key, shape),
                (self.num_pseudo_inputs,) + tuple(self.event_shape),
            )

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

    @property
    def layer_dims(self) -> tuple[int, ...]:
        """The latent sizes d₁, …, d_L."""
        return tuple(layer.latent_dim for layer in self.layers)

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

    def _posterior(self, i: int, mean, log_var) -> posteriors.Posterior:
        layer = self.layers[i]
        return posteriors.make_posterior(layer.posterior, mean, log_var, layer.sigma0)

    def split_code(self, z) -> list:
        """A code (…, d₁ + … + d_L) as its layers' parts, z₁ first.

        Args:
          z: codes, every layer's latents concatenated.

        Returns:
          The per-layer parts, each (…, d_l).
        """
        bounds = [sum(self.layer_dims[:i]) for i in range(1, len(self.layers))]
        return jnp.split(z, bounds, axis=-1)

    def infer(self, x, key, num_samples: int | None = None):
        """Draws z₁, …, z_L ~ q(·|x) in the design's order (overridden by each design).

        Args:
          x: images in [0, 1], (B, H, W, C).
          key: the PRNG key of the draws.
          num_samples: joint draws per example; None for one, without the leading axis.

        Returns:
          (posteriors, zs): per layer its posterior factor and its draw, z₁ first; each z
          is (B, d_l) or (num_samples, B, d_l).
        """
        raise NotImplementedError

    def _mean_path(self, x) -> list:
        """Every layer's posterior factor along the mean path (each conditioned on the mean
        of the layer it reads, not a draw), z₁ first (defined by each design)."""
        raise NotImplementedError

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

    def pseudo_posterior(self) -> posteriors.Posterior:
        """q(z_L | u_k) for a VampPrior's K pseudo-inputs (clipped to [0, 1]): the top factor
        of the design's bottom-up features of u_k, a batch of K top-layer posteriors.

        Returns:
          The top layer's posterior at the pseudo-inputs.
        """
        u = jnp.clip(self.pseudo_inputs, 0.0, 1.0)
        top = len(self.layers) - 1
        return self._factor(top, self._features(u)[top], None)

    def _features(self, x) -> list:
        """h₁ … h_L, the bottom-up pass over x: defined by the designs whose q(z_L | ·) reads
        x alone (top-down), the only ones a VampPrior's pseudo-inputs can be encoded by."""
        name = type(self).__name__
        raise NotImplementedError(f"a VampPrior needs top-down inference, not {name}")

    def _factor(self, i: int, h, above) -> posteriors.Posterior:
        """Layer i's (0-based) posterior factor from its features h and what the design reads
        from above (None for the top layer); defined with ``_features``."""
        raise NotImplementedError(f"{type(self).__name__} has no per-layer posterior factors")

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

    def _draw_top(self, key, num_samples: int):
        """z_L ~ p(z_L): N(0, I) with ``key``, or a uniformly chosen pseudo-input's top
        posterior (the component and the draw from ``split(key)``, as ``VAE.sample_prior``)."""
        dim = self.layers[-1].latent_dim
        if self.prior != "vamp":
            return jax.random.normal(key, (num_samples, dim))
        component_key, draw_key = jax.random.split(key)
        k = jax.random.randint(component_key, (num_samples,), 0, self.num_pseudo_inputs)
        chosen = jax.tree_util.tree_map(lambda leaf: leaf[k], self.pseudo_posterior())
        return chosen.sample(draw_key)

    def conditionals(self, zs):
        """p(z_l | z_{l+1})'s (mean, log-variance) for l = 1 … L−1, given draws z₁ … z_L.

        Args:
          zs: per-layer draws, z₁ first.

        Returns:
          A list of L − 1 (mean, log_var) pairs, layer 1 first.
        """
        return [self.down[i - 1](_as_image(zs[i])) for i in range(1, len(self.layers))]

    def generative_log_probs(self, zs):
        """log p(z_l | z_{l+1}) for l < L, then log p(z_L), for draws z₁ … z_L.

        Args:
          zs: per-layer draws, z₁ first.

        Returns:
          A list of L arrays of log-densities, layer 1 first.
        """
        return _generative_log_probs(zs, self.conditionals(zs), self.top_log_prob(zs[-1]))

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

    def _check_whole_code(self, z) -> None:
        """Raises ValueError unless ``z`` holds whole codes (a decoder of every layer)."""
        if z.shape[-1] != self.code_dim:
            raise ValueError(
                f"this model decodes whole codes of {self.code_dim} numbers (every layer, "
                f"z₁ first); got {z.shape[-1]}"
            )

    def sample_layers(self, key, num_samples: int):
        """z_L ~ N(0, I), then z_l ~ p(z_l | z_{l+1}) down to z₁.

        Args:
          key: the PRNG key of z_L's draw (as ``VAE.sample_prior``'s); each lower layer
            draws with ``fold_in(key, j)``, j = 1, 2, … going down.
          num_samples: how many.

        Returns:
          The per-layer draws, z₁ first, each (num_samples, d_l).
        """
        top = len(self.layers) - 1
        zs = [self._draw_top(key, num_samples)]
        for i in range(top, 0, -1):  # layer i − 1 (0-based) from layer i
            mean, log_var = self.down[i - 1](_as_image(zs[0]))
            noise = jax.random.normal(jax.random.fold_in(key, top - i + 1), mean.shape)
            zs.insert(0, mean + jnp.exp(0.5 * log_var) * noise)
        return zs

    def descend(self, code, layer: int, key=None):
        """The code with the layers below ``layer`` regenerated from it: z_{l−1} from
        p(z_{l−1} | z_l), and so on down to z₁ — each the conditional mean, or with ``key`` a
        draw (layer j below from ``fold_in(key, j)``). What a traversal of an upper layer
        decodes: the layers under it follow the changed code.

        Args:
          code: codes (…, d₁ + … + d_L); the entries of layers below ``layer`` are replaced.
          layer: the layer (1 = next to x) the regeneration starts from.
          key: None for the conditional means; else the PRNG key of the draws.

        Returns:
          The codes, (…, d₁ + … + d_L).
        """
        parts = self.split_code(code)
        for i in range(layer - 1, 0, -1):  # 1-based layer i from layer i + 1
            mean, log_var = self.down[i - 1](_as_image(parts[i]))
            if key is not None:
                noise = jax.random.normal(jax.random.fold_in(key, i), mean.shape, mean.dtype)
                mean = mean + jnp.exp(0.5 * log_var) * noise
            parts[i - 1] = mean
        return jnp.concatenate(parts, axis=-1)

    def sample_prior(self, key, num_samples: int):
        """Codes drawn ancestrally from the top down (``sample_layers``), concatenated:
        ``decode`` of them draws from the model's p(x).

        Args:
          key: the PRNG key of the draw.
          num_samples: how many.

        Returns:
          (num_samples, d₁ + … + d_L) codes.
        """
        return jnp.concatenate(self.sample_layers(key, num_samples), axis=-1)

    def __call__(self, x, key, num_samples: int | None = None):
        """One joint draw per example (or ``num_samples``) and what the bounds need:
        (posteriors, zs, p(x|z)'s parameters, ``conditionals(zs)``, log p(z_L))."""
        found, zs = self.infer(x, key, num_samples)
        code = zs[0] if self.decoder_layers == "bottom" else jnp.concatenate(zs, axis=-1)
        return found, zs, self.decode(code), self.conditionals(zs), self.top_log_prob(zs[-1])


class BottomUpVAE(Hierarchy):
    """Stochastic layers with bottom-up inference q(z₁|x) Π q(z_l | z_{l−1}); see the module
    docstring (attributes: ``Hierarchy``'s)."""

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

    def _mean_path(self, x) -> list:
        """Layer l's factor is q(z_l | μ_{l−1}), its input the mean of the layer below
        (μ₀ = x): the code's mean is (μ₁(x), μ₂(μ₁(x)), …)."""
        found = [self._posterior(0, *self.encoder(x))]
        for i, net in enumerate(self.up, start=1):
            found.append(self._posterior(i, *net(_as_image(found[-1].mean))))
        return found


class TopDownVAE(Hierarchy):
    """Stochastic layers with top-down inference q(z_L|x) Π q(z_l | z_{l+1}, x), sharing the
    generative order; see the module docstring (attributes: ``Hierarchy``'s)."""

    closed_form_layer_kls = True

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
            nets.MLPEncoder(
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

    def _factor(self, i: int, h, z_above):
        """Layer i's (0-based) posterior factor from its features and the code above it
        (None for the top layer)."""
        if z_above is None:
            return self._posterior(i, *self.heads[i](_as_image(h)))
        h = jnp.broadcast_to(h, z_above.shape[:-1] + h.shape[-1:])  # sample axes of z
        return self._posterior(i, *self.heads[i](_as_image(jnp.concatenate([h, z_above], -1))))

    def infer(self, x, key, num_samples: int | None = None):
        """Draws z_L ~ q(z_L|x), then z_l ~ q(z_l | z_{l+1}, x) down to z₁.

        Args:
          x: images in [0, 1], (B, H, W, C).
          key: the PRNG key of the draws; layer l draws with ``fold_in(key, l − 1)`` (z₁
            with ``fold_in(key, 0)``).
          num_samples: joint draws per example; None for one, without the leading axis.

        Returns:
          (posteriors, zs): per layer q(z_l | z_{l+1}, x) and its draw, z₁ first; each z is
          (B, d_l) or (num_samples, B, d_l).
        """
        h = self._features(x)
        top = len(self.layers) - 1
        found = [self._factor(top, h[top], None)]
        zs = [found[0].sample(jax.random.fold_in(key, top), num_samples)]
        for i in range(top - 1, -1, -1):
            found.insert(0, self._factor(i, h[i], zs[0]))
            zs.insert(0, found[0].sample(jax.random.fold_in(key, i)))
        return found, zs

    def _mean_path(self, x) -> list:
        """Layer l's factor is q(z_l | μ_{l+1}, x), its input the mean of the layer above: the
        code's mean is (μ₁, …, μ_L) with μ_L = μ_L(x)."""
        h = self._features(x)
        top = len(self.layers) - 1
        found = [self._factor(top, h[top], None)]
        for i in range(top - 1, -1, -1):
            found.insert(0, self._factor(i, h[i], found[0].mean))
        return found


def _generative_log_probs(zs, conditionals, top_log_prob):
    """log p(z_l | z_{l+1}) for l < L (from the conditionals' parameters), then log p(z_L)."""
    terms = [
        posteriors.diag_normal_log_prob(z, *params)
        for z, params in zip(zs[:-1], conditionals, strict=True)
    ]
    return terms + [top_log_prob]


def _elbo_parts(model: Hierarchy, params, x, key):
    """(log p(x|z), the KL terms of layers 1 … L) for one joint draw: a layer's term is its
    closed-form KL per dimension, (B, d_l), where it has one (the top layer under N(0, I);
    every lower layer of a top-down model), else the one-sample estimate log q − log p, (B,)."""
    found, zs, dec, conditionals, top_log_p = cast(tuple, model.apply({"params": params}, x, key))
    recon = model.likelihood.log_prob(x, dec)
    log_p = _generative_log_probs(zs, conditionals, top_log_p)
    if model.closed_form_layer_kls:
        parts = [
            posteriors.diag_normal_kl_per_dim(q.mean, q.log_var, *p)
            for q, p in zip(found[:-1], conditionals, strict=True)
        ]
    else:
        parts = [found[i].log_prob(zs[i]) - log_p[i] for i in range(len(zs) - 1)]
    if model.prior == "vamp":  # no closed form against a mixture
        return recon, [*parts, found[-1].log_prob(zs[-1]) - log_p[-1]]
    return recon, [*parts, found[-1].kl_per_dim()]


def _layer_total(kl):
    """A layer's KL term per example, (B,), from per-dimension terms or a total."""
    return jnp.sum(kl, axis=-1) if kl.ndim == 2 else kl


def elbo_terms(model: Hierarchy, params, x, key):
    """Per-example ELBO terms with one joint draw; see the module docstring.

    Args:
      model: the hierarchy.
      params: its parameters.
      x: images in [0, 1], (B, H, W, C).
      key: the PRNG key of the draw.

    Returns:
      {"recon": log p(x|z₁), "kl_1" … "kl_L": the per-layer KL terms, "kl": their sum,
      "elbo": recon − kl}, each (B,).
    """
    recon, parts = _elbo_parts(model, params, x, key)
    kls = [_layer_total(part) for part in parts]
    terms = {f"kl_{i + 1}": kl for i, kl in enumerate(kls)}
    kl = sum(kls[1:], kls[0])
    return {"recon": recon, **terms, "kl": kl, "elbo": recon - kl}


def elbo_loss(model: Hierarchy, params, x, key, *, labels=None, beta=1.0, free_bits=0.0, **unused):
    """Negative β-ELBO with one joint draw per example, β and free bits per layer.

    loss = −mean_x log p(x|z₁) + Σ_l β_l · penalty_l. Without free bits penalty_l is layer
    l's batch-mean KL term. With free bits λ > 0 a layer whose KL is in closed form (the
    top layer; every layer of a top-down model) pays Σ_j max(λ, mean_x KL_j) over its
    dimensions (as in ``objectives.elbo_loss``: one layer is the VAE's loss exactly), and a
    bottom-up lower layer, whose KL is a one-sample estimate with no per-dimension terms,
    max(λ d_l, mean_x KL_l): the layer is one group of free bits (Kingma et al., 2016,
    eq. 15 with a group per layer).

    Args:
      model: the hierarchy.
      params: its parameters.
      x: images in [0, 1], (B, H, W, C).
      key: the PRNG key of the draw.
      labels: must be None (a hierarchy is unconditional).
      beta: β_l, the KL weights: one number for every layer, or one per layer, z₁'s first
        (``objectives.kl_weight`` of each for a warm-up).
      free_bits: λ, nats per latent dimension (0 = off).
      **unused: ``objectives.elbo_loss``'s options that a hierarchy does not have (code and
        gradient penalties, dropout): refused by the config's validation.

    Returns:
      (loss, terms): the scalar loss and the per-example ``elbo_terms``.
    """
    del unused
    refuse_labels(labels)
    recon, parts = _elbo_parts(model, params, x, key)
    kls = [_layer_total(part) for part in parts]
    floors = [
        jnp.sum(jnp.maximum(free_bits, jnp.mean(part, axis=0)))
        if part.ndim == 2
        else jnp.maximum(free_bits * d, jnp.mean(part))
        for d, part in zip(model.layer_dims, parts, strict=True)
    ]
    betas = _per_layer(beta, len(kls))
    # Branch-free (free_bits may be traced); λ = 0 selects the plain mean KL.
    freed = jnp.asarray(free_bits) > 0
    loss = -jnp.mean(recon)
    for b, floor, term in zip(betas, floors, kls, strict=True):
        loss = loss + b * jnp.where(freed, floor, jnp.mean(term))
    kl = sum(kls[1:], kls[0])
    terms = {f"kl_{i + 1}": term for i, term in enumerate(kls)}
    return loss, {"recon": recon, **terms, "kl": kl, "elbo": recon - kl}


def _per_layer(beta, depth: int) -> tuple:
    """β_l for each of ``depth`` layers, z₁'s first: ``beta`` itself if one per layer, else
    the one number repeated."""
    return tuple(beta) if isinstance(beta, tuple | list) else (beta,) * depth


def _log_weights(model: Hierarchy, params, x, key, k: int | None):
    """(log p(x|z₁), log w, [log p(z_l|z_{l+1}) − log q(z_l|·)]_l), each (k, B), for k joint
    draws per example."""
    found, zs, dec, conditionals, top_log_p = cast(
        tuple, model.apply({"params": params}, x, key, k)
    )
    recon = model.likelihood.log_prob(x, dec)
    log_w, ratios = recon, []
    log_p = _generative_log_probs(zs, conditionals, top_log_p)
    for i, (posterior, z) in enumerate(zip(found, zs, strict=True)):
        log_q = posterior.log_prob(z)
        log_w = log_w + log_p[i] - log_q
        ratios.append(log_p[i] - log_q)
    return recon, log_w, ratios


def log_importance_weights(model: Hierarchy, params, x, key, k: int | None):
    """log w = log p(x, z₁…z_L) − log q(z₁…z_L | x) for k joint draws per example.

    Args:
      model: the hierarchy.
      params: its parameters.
      x: images in [0, 1], (B, H, W, C).
      key: the PRNG key of the draws.
      k: draws per example; None for one, without the leading axis.

    Returns:
      (k, B) log-weights ((B,) for k = None).
    """
    return _log_weights(model, params, x, key, k)[1]


def iwae_bound(model: Hierarchy, params, x, key, k: int):
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


def iwae_loss(model: Hierarchy, params, x, key, *, k: int, labels=None, beta=1.0, **unused):
    """Negative annealed IWAE bound with k joint draws per example (``objectives.iwae_loss``
    for a hierarchy).

    The loss is −mean_x L_k^β(x), L_k^β = log (1/k) Σ_i exp(log p(x|z₁ⁱ) + Σ_l β_l r_lⁱ) with
    r_l = log p(z_l|z_{l+1}) − log q(z_l|·) (z_L's p the prior): β_l = 1 for every layer is
    the IWAE bound L_k itself, bitwise, and k = 1 is the β-ELBO with Monte-Carlo KL terms,
    so a KL warm-up of β_l carries over to the IWAE bound. The terms report the true bound
    whatever β: "recon" the k draws' mean log p(x|z₁), "kl" their mean log q − log p(z)
    (= recon − log w), and "iwae" = L_k.

    Args:
      model: the hierarchy.
      params: its parameters.
      x: images in [0, 1], (B, H, W, C).
      key: the PRNG key of the draws.
      k: draws per example.
      labels: must be None (a hierarchy is unconditional).
      beta: β_l: one number for every layer, or one per layer, z₁'s first
        (``objectives.kl_weight`` of each for a warm-up).
      **unused: the ELBO's other options (free bits), refused by the config's validation.

    Returns:
      (loss, terms): −mean L_k^β and per-example "recon", "kl", "elbo", "iwae".
    """
    del unused
    refuse_labels(labels)
    recon_k, log_w, ratios = _log_weights(model, params, x, key, k)
    annealed = log_w
    for b, ratio in zip(_per_layer(beta, len(ratios)), ratios, strict=True):
        # log w − (1 − β_l) r_l rather than recon + Σ β_l r_l: exactly log w when β_l = 1.
        annealed = annealed - (1.0 - b) * ratio
    loss = -jnp.mean(jax.nn.logsumexp(annealed, axis=0) - math.log(k))
    bound = jax.nn.logsumexp(log_w, axis=0) - math.log(k)
    recon = jnp.mean(recon_k, axis=0)
    kl = jnp.mean(recon_k - log_w, axis=0)
    return loss, {"recon": recon, "kl": kl, "elbo": recon - kl, "iwae": bound}


def with_sigma0s(model: Hierarchy, sigma0s) -> Hierarchy:
    """The model with layer l's σ₀ set to ``sigma0s[l]`` (numbers or traced values: a
    population member's per-layer σ₀).

    Args:
      model: the hierarchy.
      sigma0s: one σ₀ per layer, z₁'s first.

    Returns:
      The model (a clone; parameters are unchanged).
    """
    layers = tuple(
        dataclasses.replace(layer, sigma0=s) for layer, s in zip(model.layers, sigma0s, strict=True)
    )
    return model.clone(layers=layers)
