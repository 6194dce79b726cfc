"""The VAE module: encoder → posterior family → decoder → likelihood, wired together.

``VAE.encode`` returns a posterior object (see ``cvae.models.posteriors``), ``VAE.decode`` the
likelihood's parameters, and ``VAE.__call__(x, key)`` draws z ~ q(z|x) with the key it is
given. With ``num_classes > 0`` the model is a conditional VAE: one-hot labels enter both
the encoder and the decoder, and ``decode(z, labels)`` draws class-conditional images.

The prior is N(0, I), or with ``prior = "vamp"`` the VampPrior of Tomczak & Welling (2018):
p(z) = (1/K) Σ_k q(z | u_k), the mixture of the encoder's own posteriors at K learnable
pseudo-inputs u_k (a ``pseudo_inputs`` parameter, clipped to the pixel range [0, 1]).
``prior_log_prob(z)`` and ``sample_prior(key, n)`` serve either prior.

``VAE`` answers the model protocol of ``cvae.models.protocol`` as a hierarchy of one layer:
``layer_dims == (latent_dim,)``, its bounds the "single" formulas of
``cvae.models.objectives``, its ``descend`` the identity.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from cvae.models import (
    code_maps,
    hierarchy,
    likelihoods,
    mlp_hierarchy,
    nets,
    posteriors,
    residual_hierarchy,
)
from cvae.models.protocol import ScoredByObjectives
from cvae.models.validation import is_hierarchy, validate_model


class VAE(ScoredByObjectives, nn.Module):
    """Encoder → posterior family → decoder → likelihood; see the module docstring."""

    encoder: nn.Module
    decoder: nn.Module
    likelihood: Any
    event_shape: tuple[int, int, int]
    posterior_family: str = "gaussian"
    sigma0: float = posteriors.DEFAULT_SIGMA0
    num_classes: int = 0
    prior: str = "standard"  # "standard": N(0, I) | "vamp": the VampPrior
    num_pseudo_inputs: int = 0
    # The code's shape: () for a vector of latent_dim numbers, (h, w, c) for a code map
    # (cvae.models.code_maps), which the model holds flattened to h·w·c.
    code_shape: tuple[int, ...] = ()

    def setup(self):
        """Flax's set-up: a VampPrior's pseudo-inputs, initialised N(0.05, 0.01²) per pixel (the
        VampPrior authors' initialisation).
        """
        if self.prior == "vamp":
            # The VampPrior authors' initialisation: N(0.05, 0.01²) pixels.
            self.pseudo_inputs = self.param(
                "pseudo_inputs",
                lambda key, shape: 0.05 + 0.01 * jax.random.normal(key, shape),
                (self.num_pseudo_inputs,) + tuple(self.event_shape),
            )

    # The one-layer formulas of cvae.models.objectives: one posterior over the whole code.
    bound_family = "single"

    @property
    def code_dim(self) -> int:
        """The size of a code z: ``latent_dim``."""
        return self.encoder.latent_dim

    @property
    def layer_dims(self) -> tuple[int, ...]:
        """(latent_dim,): a one-layer model is a hierarchy of one."""
        return (self.code_dim,)

    @property
    def layer_shapes(self) -> tuple[tuple[int, ...], ...]:
        """((latent_dim,),) for a vector code, ((h, w, c),) for a code map."""
        return (tuple(self.code_shape) or (self.code_dim,),)

    @property
    def sigma0s(self) -> tuple[float | None, ...]:
        """(σ₀,): the collapsed family's fixed σ₀, 0 for the deterministic one, None for the
        gaussian family (whose scale is learned)."""
        fixed = {"collapsed": self.sigma0, "deterministic": 0.0}
        return (fixed.get(self.posterior_family),)

    @nn.nowrap
    def check_labels(self, labels) -> None:
        """Raises ValueError, saying what to change, if a conditional model gets no labels
        or an unconditional one gets some.

        Args:
          labels: what a caller passed as the labels.
        """
        if self.num_classes == 0 and labels is not None:
            raise ValueError(
                "labels were given to an unconditional model; set "
                "model.conditional=True to train a conditional VAE"
            )
        if self.num_classes > 0 and labels is None:
            raise ValueError(f"this conditional model needs labels in [0, {self.num_classes})")

    @nn.nowrap
    def split_code(self, z) -> list:
        """[z]: the code is the one layer's latents.

        Args:
          z: codes (…, latent_dim).

        Returns:
          A list of the one part.
        """
        return [z]

    @nn.nowrap
    def with_sigma0s(self, sigma0s) -> VAE:
        """The model with σ₀ set to ``sigma0s[0]`` (a number or a traced value).

        Args:
          sigma0s: one σ₀ (a one-layer model's).

        Returns:
          The model (a clone; parameters are unchanged).
        """
        (sigma0,) = sigma0s
        return self.clone(sigma0=sigma0)

    def _onehot(self, labels):
        self.check_labels(labels)
        return None if self.num_classes == 0 else jax.nn.one_hot(labels, self.num_classes)

    def encode(self, x, labels=None, *, train: bool = False) -> posteriors.Posterior:
        """q(z|x) for images in [0, 1], as a posterior object.

        Args:
          x: images (…, H, W, C).
          labels: int labels for a conditional model; else None.
          train: training mode (dropout on).

        Returns:
          The posterior (``cvae.models.posteriors``).
        """
        nets.check_image_batch(x, self.event_shape)
        mean, log_var = self.encoder(x, self._onehot(labels), train=train)
        return posteriors.make_posterior(self.posterior_family, mean, log_var, self.sigma0)

    def decode(self, z, labels=None, *, train: bool = False):
        """The likelihood's parameters of p(x|z).

        Args:
          z: latents (…, latent_dim), or for a code map also maps (…, h, w, c).
          labels: int labels for a conditional model; else None.
          train: training mode (dropout on).

        Returns:
          The decoder's output, shaped as the likelihood asks (``param_shape``).

        Raises:
          ValueError: codes of another shape (one line naming both).
        """
        z = code_maps.flat_codes(z, self.layer_shapes[0], self.code_dim)
        return self.decoder(z, self._onehot(labels), train=train)

    def pseudo_posterior(self, *, train: bool = False) -> posteriors.Posterior:
        """q(z | u_k) for the K pseudo-inputs of a VampPrior (a batch of K posteriors).

        Args:
          train: training mode (dropout on).

        Returns:
          The posterior of the pseudo-inputs.
        """
        return self.encode(jnp.clip(self.pseudo_inputs, 0.0, 1.0), train=train)

    def prior_log_prob(self, z, *, train: bool = False):
        """log p(z), summed over latent dimensions.

        VampPrior: log (1/K) Σ_k q(z | u_k), a log-sum-exp over the pseudo-inputs.

        Args:
          z: latents (…, latent_dim).
          train: training mode (dropout on).

        Returns:
          (…,) log-densities in nats.
        """
        if self.prior != "vamp":
            return posteriors.standard_normal_log_prob(z)
        components = self.pseudo_posterior(train=train)
        per_component = components.log_prob(z[..., None, :])  # (…, K)
        return jax.nn.logsumexp(per_component, axis=-1) - math.log(self.num_pseudo_inputs)

    def sample_prior(self, key, num_samples: int, temperatures=None):
        """z ~ p(z): N(0, I), or a uniformly chosen pseudo-input's posterior (VampPrior).

        Args:
          key: the PRNG key of the draw.
          num_samples: how many latents.
          temperatures: None, or (τ,): the draw's spread about its mean scaled by τ.

        Returns:
          (num_samples, latent_dim) latents.
        """
        temperature = None if temperatures is None else jnp.asarray(temperatures)[0]
        if self.prior != "vamp":
            z = jax.random.normal(key, (num_samples, self.encoder.latent_dim))
            return z if temperature is None else temperature * z
        component_key, draw_key = jax.random.split(key)
        k = jax.random.randint(component_key, (num_samples,), 0, self.num_pseudo_inputs)
        components = self.pseudo_posterior()
        chosen = jax.tree_util.tree_map(lambda leaf: leaf[k], components)
        z = chosen.sample(draw_key)
        return z if temperature is None else chosen.mean + temperature * (z - chosen.mean)

    def resample_layer(self, code, layer: int, key):
        """A fresh draw from p(z) for each code: a one-layer model's one layer redrawn (as
        ``Hierarchy.resample_layer``).

        Args:
          code: codes (N, latent_dim); only their number is read.
          layer: 1.
          key: the PRNG key of the draw.

        Returns:
          (N, latent_dim) latents.

        Raises:
          ValueError: a layer other than 1.
        """
        if layer != 1:
            raise ValueError(f"this model has one stochastic layer; got layer {layer}")
        return self.sample_prior(key, code.shape[0])

    def descend(self, code, layer: int, key=None):
        """The code itself: a one-layer model has no layer below its one (``layer`` = 1).

        Args:
          code: codes (…, latent_dim).
          layer: 1.
          key: unused (nothing is drawn).

        Returns:
          The codes.

        Raises:
          ValueError: a layer other than 1.
        """
        del key
        if layer != 1:
            raise ValueError(f"this model has one stochastic layer; got layer {layer}")
        return code

    def __call__(self, x, key, labels=None, *, train: bool = False, num_samples=None):
        """Returns (posterior, z, likelihood params); z has a leading sample axis if asked."""
        posterior = self.encode(x, labels, train=train)
        z = posterior.sample(key, num_samples)
        return posterior, z, self.decode(z, labels, train=train)


def build_model(
    model_config: ml_collections.ConfigDict,
    event_shape,
    num_classes: int,
    *,
    binary_data: bool = False,
) -> nn.Module:
    """The VAE a config's ``model`` section describes, for images of a given shape: a ``VAE``,
    or with ``upper_latent_dims`` a ``cvae.models.mlp_hierarchy.BottomUpVAE`` (or ``TopDownVAE``
    with ``inference = "top_down"``, or with ``arch = "resnet"`` a
    ``cvae.models.residual_hierarchy.ResidualTopDownVAE``). With ``arch = "conv_map"`` the
    VAE's code is a map (``cvae.models.code_maps``).

    Args:
      model_config: the config's ``model`` section (validated here first).
      event_shape: (H, W, C) of the images.
      num_classes: the data set's classes; used only when ``model.conditional`` is set.
      binary_data: every scored input is {0, 1} (``data.binarize = 'dynamic'``), which lets
        the Bernoulli likelihood use its cheaper binary form.

    Returns:
      The module (unbound: parameters come from ``init_params``).

    Raises:
      ConfigError: a field of the section is invalid.
      ValueError: a conditional model without labels, or an image size the nets cannot
        build.
    """
    cfg = model_config
    event_shape = tuple(int(s) for s in event_shape)
    validate_model(cfg)
    if cfg.conditional and num_classes <= 0:
        raise ValueError("model.conditional=True needs a labelled data set (num_classes > 0)")
    likelihood = likelihoods.make_likelihood(cfg.likelihood, cfg.likelihood_scale, binary_data)
    if is_hierarchy(cfg):
        layers = (
            residual_hierarchy.group_layers(cfg, event_shape)
            if cfg.groups_per_level
            else hierarchy.layers_from_config(cfg)
        )
        shared = {
            "prior": cfg.prior,
            "num_pseudo_inputs": cfg.num_pseudo_inputs if cfg.prior == "vamp" else 0,
            "decoder_layers": cfg.decoder_layers,
        }
        if cfg.arch == "resnet":
            residual_hierarchy.check_pyramid(
                event_shape[0],
                event_shape[1],
                len(cfg.conv_channels),
                "level" if cfg.groups_per_level else "layer",
            )
            return residual_hierarchy.ResidualTopDownVAE(
                layers,
                likelihood,
                event_shape,
                cfg.activation,
                channels=tuple(cfg.conv_channels),
                groups=tuple(int(g) for g in cfg.groups_per_level),
                **shared,
            )
        design = (
            mlp_hierarchy.TopDownVAE if cfg.inference == "top_down" else mlp_hierarchy.BottomUpVAE
        )
        return design(layers, likelihood, event_shape, cfg.activation, **shared)
    param_shape = likelihood.param_shape(event_shape)
    variance_head = posteriors.has_variance_head(cfg.posterior)
    decoder_widths = tuple(cfg.decoder_widths) or tuple(reversed(cfg.encoder_widths))
    encoder: nn.Module
    decoder: nn.Module
    code_shape: tuple[int, int, int] | tuple[()] = ()
    if cfg.arch == "mlp":
        encoder = nets.MLPEncoder(
            tuple(cfg.encoder_widths),
            cfg.latent_dim,
            variance_head,
            cfg.activation,
            cfg.dropout_rate,
            cfg.init,
        )
        decoder = nets.MLPDecoder(
            decoder_widths, param_shape, cfg.activation, cfg.dropout_rate, cfg.init
        )
    elif cfg.arch == "conv":
        encoder = nets.ConvEncoder(
            tuple(cfg.conv_channels),
            cfg.conv_dense_width,
            cfg.latent_dim,
            variance_head,
            cfg.activation,
            cfg.dropout_rate,
        )
        decoder = nets.ConvDecoder(
            tuple(cfg.conv_channels),
            cfg.conv_dense_width,
            param_shape,
            cfg.activation,
            cfg.dropout_rate,
        )
    elif cfg.arch == "conv_map":
        code_shape = code_maps.map_shape(event_shape, len(cfg.conv_channels), cfg.code_channels)
        encoder = code_maps.ConvMapEncoder(
            tuple(cfg.conv_channels),
            code_shape,
            variance_head,
            cfg.activation,
            cfg.dropout_rate,
        )
        decoder = code_maps.ConvMapDecoder(
            tuple(cfg.conv_channels),
            code_shape,
            param_shape,
            cfg.activation,
            cfg.dropout_rate,
        )
    elif cfg.arch == "resnet":
        nets.check_resnet_shape(event_shape[0], event_shape[1], len(cfg.conv_channels))
        encoder = nets.ResNetEncoder(
            tuple(cfg.conv_channels),
            cfg.latent_dim,
            variance_head,
            cfg.activation,
            cfg.dropout_rate,
        )
        decoder = nets.ResNetDecoder(
            tuple(cfg.conv_channels), param_shape, cfg.activation, cfg.dropout_rate
        )
    elif cfg.arch == "ghosh":
        nets.check_resnet_shape(event_shape[0], event_shape[1], 3, "ghosh")
        encoder = nets.GhoshEncoder(
            tuple(cfg.conv_channels),
            cfg.latent_dim,
            variance_head,
            cfg.activation,
            cfg.dropout_rate,
        )
        decoder = nets.GhoshDecoder(
            tuple(cfg.conv_channels), param_shape, cfg.activation, cfg.dropout_rate
        )
    else:
        raise AssertionError(cfg.arch)  # validate_model admits only the five above
    return VAE(
        encoder=encoder,
        decoder=decoder,
        likelihood=likelihood,
        event_shape=event_shape,
        posterior_family=cfg.posterior,
        sigma0=float(cfg.sigma0),
        num_classes=num_classes if cfg.conditional else 0,
        prior=cfg.prior,
        num_pseudo_inputs=cfg.num_pseudo_inputs if cfg.prior == "vamp" else 0,
        code_shape=code_shape,
    )


def init_params(model: nn.Module, key: jax.Array, batch_size: int = 1):
    """Initial parameters from a key; needs no data.

    One compiled program (cached per model and batch size, and by JAX's persistent cache)
    rather than Flax's op-by-op initialisation: a second of start-up less for every
    process that trains. The numbers are those of the op-by-op path, bit for bit, for
    every architecture; only a VampPrior's pseudo-inputs (0.05 + 0.01·ε, contracted to one
    fused multiply-add) differ from them, by at most 2 units in the last place.

    Args:
      model: any model of ``cvae.models.protocol`` (a module called as
        ``(x, key, labels)`` with ``event_shape`` and ``num_classes``).
      key: the PRNG key of the initialisation.
      batch_size: the dummy batch used to trace the shapes.

    Returns:
      The parameters (a plain pytree).
    """
    return _compiled_init(model, key, batch_size)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _compiled_init(model: Any, key: jax.Array, batch_size: int):
    x = jnp.zeros((batch_size,) + tuple(model.event_shape), jnp.float32)
    labels = jnp.zeros((batch_size,), jnp.int32) if model.num_classes else None
    init_key, sample_key = jax.random.split(key)
    return model.init({"params": init_key}, x, sample_key, labels)["params"]


def count_params(params) -> int:
    """The number of scalars in a params tree.

    Args:
      params: a tree of arrays or of their shape metadata alone (``jax.ShapeDtypeStruct``,
        Orbax's saved-array metadata).

    Returns:
      The count.
    """
    return sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params))
