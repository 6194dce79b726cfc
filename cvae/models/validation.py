"""The valid values of the ``model`` config section, checked beside the registries they name
(activations, initialisations, posterior families, likelihoods)."""

from __future__ import annotations

import ml_collections

from cvae.errors import check, check_int, finite, positive_ints
from cvae.models import likelihoods, nets, posteriors

ARCHS = ("mlp", "conv", "resnet", "ghosh")
PRIORS = ("standard", "vamp")


def validate_model(m: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for the first field of the ``model`` section outside its valid range.

    ``cvae.config.validate`` calls it with the rest of the config; ``vae.build_model``
    calls it alone, so a model built from a hand-made section is checked too.

    Args:
      m: the ``model`` section of a config.
    """
    check(
        m.arch in ARCHS,
        "model.arch",
        m.arch,
        "'mlp', 'conv', 'resnet' or 'ghosh'",
    )
    check(
        m.arch != "ghosh" or len(m.conv_channels) == 4,
        "model.conv_channels",
        m.conv_channels,
        "four widths with model.arch='ghosh' (the paper's 128, 256, 512, 1024)",
    )
    check(
        isinstance(m.latent_dim, int) and m.latent_dim > 0,
        "model.latent_dim",
        m.latent_dim,
        "a positive integer",
    )
    check(
        positive_ints(m.encoder_widths) and len(m.encoder_widths) > 0,
        "model.encoder_widths",
        m.encoder_widths,
        "a non-empty tuple of positive integers",
    )
    check(
        positive_ints(m.decoder_widths),
        "model.decoder_widths",
        m.decoder_widths,
        "a tuple of positive integers (empty = mirrored)",
    )
    check_int(m.conv_dense_width, "model.conv_dense_width", 1)
    check(
        positive_ints(m.conv_channels) and len(m.conv_channels) > 0,
        "model.conv_channels",
        m.conv_channels,
        "a non-empty tuple of positive integers",
    )
    check(
        m.activation in nets.ACTIVATIONS or m.activation == nets.GATED,
        "model.activation",
        m.activation,
        f"one of {sorted(nets.ACTIVATIONS) + [nets.GATED]}",
    )
    check(
        m.activation != nets.GATED or m.arch == "mlp",
        "model.activation",
        m.activation,
        "not 'gated' for conv nets (gated dense layers are an MLP option)",
    )
    check(m.init in nets.INITS, "model.init", m.init, f"one of {nets.INITS}")
    check(
        m.arch != "resnet" or all(c % 8 == 0 for c in m.conv_channels),
        "model.conv_channels",
        m.conv_channels,
        "multiples of 8 with model.arch='resnet' (its GroupNorm uses 8 groups)",
    )
    check(
        m.arch == "mlp" or m.init == "lecun",
        "model.init",
        m.init,
        "'lecun' for conv nets (the torch initialisation is implemented for MLPs only)",
    )
    check(
        m.posterior in posteriors.FAMILIES,
        "model.posterior",
        m.posterior,
        f"one of {posteriors.FAMILIES}",
    )
    check(
        finite(m.sigma0) and m.sigma0 >= 0,
        "model.sigma0",
        m.sigma0,
        "finite and ≥ 0 (the collapsed posterior's σ₀)",
    )
    check(
        m.posterior != "collapsed" or m.sigma0 > 0,
        "model.sigma0",
        m.sigma0,
        "> 0 for the collapsed posterior (σ₀ = 0 is model.posterior='deterministic')",
    )
    check(finite(m.code_l2) and m.code_l2 >= 0, "model.code_l2", m.code_l2, "finite and ≥ 0")
    check(
        m.likelihood in likelihoods.NAMES,
        "model.likelihood",
        m.likelihood,
        f"one of {likelihoods.NAMES}",
    )
    check(
        finite(m.likelihood_scale) and m.likelihood_scale >= 0,
        "model.likelihood_scale",
        m.likelihood_scale,
        "finite and ≥ 0 (0 = learned)",
    )
    check(0 <= m.dropout_rate < 1, "model.dropout_rate", m.dropout_rate, "in [0, 1)")
    check(m.prior in PRIORS, "model.prior", m.prior, "'standard' or 'vamp'")
    check(
        isinstance(m.num_pseudo_inputs, int) and m.num_pseudo_inputs >= 1,
        "model.num_pseudo_inputs",
        m.num_pseudo_inputs,
        "a positive integer",
    )
    check(
        m.prior == "standard" or m.posterior in ("gaussian", "collapsed"),
        "model.prior",
        m.prior,
        "'standard' for a deterministic posterior (a VampPrior is a mixture of "
        "posterior densities)",
    )
    check(
        m.prior == "standard" or not m.conditional,
        "model.prior",
        m.prior,
        "'standard' for a conditional model (pseudo-inputs carry no labels)",
    )
    check(
        finite(m.gradient_penalty) and m.gradient_penalty >= 0,
        "model.gradient_penalty",
        m.gradient_penalty,
        "finite and ≥ 0",
    )
    check(
        m.gradient_penalty == 0 or m.posterior == "deterministic",
        "model.gradient_penalty",
        m.gradient_penalty,
        "0 unless model.posterior='deterministic' (RAE-GP regularises "
        "a deterministic autoencoder's decoder)",
    )
    validate_hierarchy(m)


# What a hierarchy (model.upper_latent_dims set) does not have yet, each with the field
# that must keep its default and why.
_NOT_IN_A_HIERARCHY = (
    ("conditional", False, "False (a hierarchy is unconditional)"),
    ("dropout_rate", 0.0, "0 (a hierarchy's nets have no dropout)"),
    ("decoder_widths", (), "() (each generative net mirrors its inference net)"),
    ("init", "lecun", "'lecun' (a hierarchy's nets use Flax's initialisation)"),
)


def validate_hierarchy(m: ml_collections.ConfigDict) -> None:
    """Checks the upper stochastic layers (``model.upper_*``), and that the rest of the
    section is something a hierarchy builds.

    Args:
      m: the ``model`` section of a config.
    """
    check(
        positive_ints(m.upper_latent_dims),
        "model.upper_latent_dims",
        m.upper_latent_dims,
        "a tuple of positive integers, one per stochastic layer above the first",
    )
    upper = len(m.upper_latent_dims)
    check(
        m.inference in (("bottom_up", "top_down") if upper else ("bottom_up",)),
        "model.inference",
        m.inference,
        "'bottom_up' or 'top_down' (the order a hierarchy infers its layers in)"
        if upper
        else "'bottom_up' without model.upper_latent_dims (one layer has no order to choose)",
    )
    check(
        m.decoder_layers == "bottom" or (upper > 0 and m.decoder_layers == "all"),
        "model.decoder_layers",
        m.decoder_layers,
        "'bottom' (p(x|z₁)) or 'all' (p(x|z₁, …, z_L))"
        if upper
        else "'bottom' without model.upper_latent_dims (one layer is all layers)",
    )
    if upper == 0:
        for field in ("upper_widths", "upper_posteriors", "upper_sigma0s"):
            check(
                len(m[field]) == 0,
                f"model.{field}",
                m[field],
                "() without model.upper_latent_dims (a single stochastic layer)",
            )
        return
    check(
        len(m.upper_widths) == upper
        and all(isinstance(w, tuple) and len(w) > 0 and positive_ints(w) for w in m.upper_widths),
        "model.upper_widths",
        m.upper_widths,
        f"{upper} non-empty tuple(s) of positive integers, one per upper layer, e.g. ((100, 100),)",
    )
    check(
        len(m.upper_posteriors) in (0, upper)
        and all(f in ("gaussian", "collapsed") for f in m.upper_posteriors),
        "model.upper_posteriors",
        m.upper_posteriors,
        f"() (model.posterior for every layer) or {upper} of 'gaussian' | 'collapsed'",
    )
    check(
        len(m.upper_sigma0s) in (0, upper) and all(finite(s) and s > 0 for s in m.upper_sigma0s),
        "model.upper_sigma0s",
        m.upper_sigma0s,
        f"() (model.sigma0 for every layer) or {upper} finite σ₀ > 0",
    )
    check(
        m.posterior != "deterministic",
        "model.posterior",
        m.posterior,
        "'gaussian' or 'collapsed' in a hierarchy (its bounds need every layer's density)",
    )
    for field, default, valid in _NOT_IN_A_HIERARCHY:
        check(m[field] == default, f"model.{field}", m[field], f"{valid} in a hierarchy")
    check(
        m.arch == "mlp" or (m.arch == "resnet" and m.inference == "top_down"),
        "model.arch",
        m.arch,
        "'mlp', or 'resnet' with model.inference='top_down' (residual conv blocks on a "
        "top-down state) in a hierarchy",
    )
    if m.arch == "resnet":
        check(
            len(m.conv_channels) == upper + 1,
            "model.conv_channels",
            m.conv_channels,
            f"{upper + 1} channel counts in a residual hierarchy of {upper + 1} layers (layer "
            "l's grid is H/2^l × W/2^l with conv_channels[l − 1] channels)",
        )
        check(
            m.decoder_layers == "all",
            "model.decoder_layers",
            m.decoder_layers,
            "'all' in a residual hierarchy (its decoder reads the top-down state, which every "
            "layer writes into)",
        )
    check(
        m.prior == "standard" or m.inference == "top_down",
        "model.prior",
        m.prior,
        "'standard' with bottom-up inference (a VampPrior on z_L needs q(z_L|x) to read x "
        "alone: set model.inference='top_down')",
    )
    check(
        m.inference != "top_down" or len(m.encoder_widths) > 0,
        "model.encoder_widths",
        m.encoder_widths,
        "at least one width for top-down inference (layer 1's posterior reads its features)",
    )
