"""The ``model`` config section: its fields declared once (``MODEL_FIELDS``, beside the
registries they name — activations, initialisations, posterior families, likelihoods) and
the rules between them, checked by ``validate_model``."""

from __future__ import annotations

import ml_collections

from cvae.errors import check, finite, positive_ints
from cvae.models import likelihoods, nets, posteriors
from cvae.schema import Field, check_fields

ARCHS = ("mlp", "conv", "resnet", "ghosh", "conv_map")
PRIORS = ("standard", "vamp")

MODEL_FIELDS = {
    "arch": Field(
        "mlp",
        "the nets: mlp | conv | resnet (residual, GroupNorm; 32×32, 64×64) | ghosh (the conv "
        "nets of Ghosh et al., 2020) | conv_map (a code map h × w × code_channels, the "
        "tokenizer of a latent generative model)",
        "choice",
        choices=ARCHS,
    ),
    "encoder_widths": Field(
        (128, 64, 32), "the MLP encoder's hidden widths", "ints", nonempty=True
    ),
    "decoder_widths": Field(
        (),
        "the MLP decoder's hidden widths; empty: the encoder's mirrored",
        "ints",
        valid="a tuple of positive integers (empty = mirrored)",
    ),
    "conv_channels": Field(
        (32, 64), "the channels of each conv stage (or residual level)", "ints", nonempty=True
    ),
    "conv_dense_width": Field(256, "the conv nets' dense layer's width", "int", minimum=1),
    "latent_dim": Field(
        16,
        "the size of a code z (of layer 1 in a hierarchy); conv_map: h·w·code_channels, not "
        "this field",
        "int",
        minimum=1,
    ),
    "code_channels": Field(
        4,
        "conv_map: the channels c of the code map, h × w × c with h = ⌈H / 2^n⌉ for n = "
        "len(conv_channels) (MNIST with two stages: 7 × 7 × c)",
        "int",
        minimum=1,
    ),
    "activation": Field(
        "relu", "the nets' nonlinearity", "choice", choices=(*sorted(nets.ACTIVATIONS), nets.GATED)
    ),
    "init": Field(
        "lecun",
        "lecun (Flax's default) | torch (nn.Linear's default)",
        "choice",
        choices=nets.INITS,
    ),
    "posterior": Field(
        "collapsed",
        "q(z|x): gaussian | collapsed | deterministic",
        "choice",
        choices=posteriors.FAMILIES,
    ),
    "sigma0": Field(
        posteriors.DEFAULT_SIGMA0,
        "the collapsed posterior's fixed σ₀",
        "float",
        minimum=0.0,
        valid="finite and ≥ 0 (the collapsed posterior's σ₀)",
    ),
    "code_l2": Field(
        0.0,
        "deterministic only: the RAE penalty (code_l2/2)·‖μ‖²",
        "float",
        minimum=0.0,
        zero="no code penalty",
    ),
    "likelihood": Field(
        "bernoulli",
        "p(x|z): bernoulli | gaussian | continuous_bernoulli",
        "choice",
        choices=likelihoods.NAMES,
    ),
    "likelihood_scale": Field(
        0.0,
        "gaussian only: a fixed σ",
        "float",
        minimum=0.0,
        zero="the Gaussian's scale is learned",
    ),
    "dropout_rate": Field(
        0.0, "dropout in the nets", "float", minimum=0.0, below=1.0, zero="no dropout"
    ),
    "gradient_penalty": Field(
        0.0,
        "deterministic only: the RAE-GP weight of ‖∇_z D(z)‖²",
        "float",
        minimum=0.0,
        zero="no decoder-gradient penalty",
    ),
    "conditional": Field(False, "condition encoder and decoder on one-hot labels", "bool"),
    "prior": Field(
        "standard",
        "p(z): standard, N(0, I) | vamp, the VampPrior (Tomczak & Welling)",
        "choice",
        choices=PRIORS,
    ),
    "num_pseudo_inputs": Field(500, "vamp: K learnable pseudo-inputs", "int", minimum=1),
    # Stochastic layers above the first (cvae.models.hierarchy). Layer 1 is the fields
    # above (encoder_widths, latent_dim, posterior, sigma0); layer l > 1 reads entry l − 2
    # of each tuple below.
    "upper_latent_dims": Field(
        (),
        "d₂, …, d_L; empty: one stochastic layer",
        "ints",
        valid="a tuple of positive integers, one per stochastic layer above the first",
    ),
    "upper_widths": Field((), "per upper layer, its nets' hidden widths: ((100, 100),)", "tuple"),
    "groups_per_level": Field(
        (),
        "resnet, top_down: a deep hierarchy of latent maps (VDVAE's groups), the count of "
        "groups at each level of the pyramid, the finest (H/2 × W/2) first, one level per "
        "conv_channels entry; each group is an h × w × code_channels map; empty: no groups",
        "ints",
        valid="a tuple of positive integers, one per level (empty = no groups)",
    ),
    "upper_posteriors": Field(
        (), "per upper layer gaussian | collapsed; empty: model.posterior", "tuple"
    ),
    "upper_sigma0s": Field((), "per upper layer σ₀ (collapsed); empty: model.sigma0", "tuple"),
    "inference": Field(
        "bottom_up",
        "bottom_up: q(z₁|x) q(z₂|z₁)… (Burda et al.) | top_down: q(z_L|x) … q(z₁|z₂, x), in "
        "the generative order (ladder VAE)",
        "choice",
        choices=("bottom_up", "top_down"),
    ),
    "decoder_layers": Field(
        "bottom",
        "bottom: p(x|z₁) | all: p(x|z₁, …, z_L), the decoder reads every layer (Tomczak & "
        "Welling's HVAE)",
        "choice",
        choices=("bottom", "all"),
    ),
}


def validate_model(m: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for the first field of the ``model`` section outside its valid
    range (``MODEL_FIELDS``), then for the first rule between its fields that fails.

    ``cvae.config.validate`` calls it with the rest of the config; ``vae.build_model``
    calls it alone, so a model built from a hand-made section is checked too.

    Args:
      m: the ``model`` section of a config.
    """
    check_fields("model.", MODEL_FIELDS, m)
    check(
        m.arch != "ghosh" or len(m.conv_channels) == 4,
        "model.conv_channels",
        m.conv_channels,
        "four widths with model.arch='ghosh' (the paper's 128, 256, 512, 1024)",
    )
    check(
        m.activation != nets.GATED or m.arch == "mlp",
        "model.activation",
        m.activation,
        "not 'gated' for conv nets (gated dense layers are an MLP option)",
    )
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
        m.posterior != "collapsed" or m.sigma0 > 0,
        "model.sigma0",
        m.sigma0,
        "> 0 for the collapsed posterior (σ₀ = 0 is model.posterior='deterministic')",
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
        m.gradient_penalty == 0 or m.posterior == "deterministic",
        "model.gradient_penalty",
        m.gradient_penalty,
        "0 unless model.posterior='deterministic' (RAE-GP regularises "
        "a deterministic autoencoder's decoder)",
    )
    validate_hierarchy(m)


# What a hierarchy (model.upper_latent_dims or groups_per_level set) does not have yet,
# each with the field that must keep its default and why.
_NOT_IN_A_HIERARCHY = (
    ("conditional", False, "False (a hierarchy is unconditional)"),
    ("dropout_rate", 0.0, "0 (a hierarchy's nets have no dropout)"),
    ("decoder_widths", (), "() (each generative net mirrors its inference net)"),
    ("init", "lecun", "'lecun' (a hierarchy's nets use Flax's initialisation)"),
)


def num_layers(m: ml_collections.ConfigDict) -> int:
    """L, the stochastic layers a ``model`` section describes: Σ groups_per_level with
    groups, else 1 + len(upper_latent_dims).

    Args:
      m: the ``model`` section of a config.

    Returns:
      The number of stochastic layers (1: a one-layer model).
    """
    if m.groups_per_level:
        return sum(int(g) for g in m.groups_per_level)
    return 1 + len(m.upper_latent_dims)


def is_hierarchy(m: ml_collections.ConfigDict) -> bool:
    """Whether the section builds a hierarchy: upper layers, or groups per level (even one).

    Args:
      m: the ``model`` section of a config.

    Returns:
      True for a ``cvae.models.hierarchy`` design.
    """
    return bool(m.upper_latent_dims) or bool(m.groups_per_level)


def validate_groups(m: ml_collections.ConfigDict) -> None:
    """Checks a deep hierarchy of latent maps (``model.groups_per_level``): a residual
    top-down design, one level per ``conv_channels`` entry, its layers from the groups alone.

    Args:
      m: the ``model`` section of a config, with ``groups_per_level`` set.
    """
    check(
        m.arch == "resnet" and m.inference == "top_down",
        "model.groups_per_level",
        m.groups_per_level,
        "() unless model.arch='resnet' and model.inference='top_down' (groups of latent maps "
        "live on the residual top-down design's pyramid)",
    )
    check(
        len(m.groups_per_level) == len(m.conv_channels),
        "model.groups_per_level",
        m.groups_per_level,
        f"one count per level: {len(m.conv_channels)} (model.conv_channels has one entry "
        "per level)",
    )
    for field in ("upper_latent_dims", "upper_widths"):
        check(
            len(m[field]) == 0,
            f"model.{field}",
            m[field],
            "() with model.groups_per_level (each group is a map of model.code_channels "
            "channels on its level's grid)",
        )


def validate_hierarchy(m: ml_collections.ConfigDict) -> None:
    """Checks the upper stochastic layers (``model.upper_*``) or the groups per level, and
    that the rest of the section is something a hierarchy builds.

    Args:
      m: the ``model`` section of a config.
    """
    upper = num_layers(m) - 1
    if m.groups_per_level:
        validate_groups(m)
    check(
        is_hierarchy(m) or m.inference == "bottom_up",
        "model.inference",
        m.inference,
        "'bottom_up' without model.upper_latent_dims (one layer has no order to choose)",
    )
    check(
        m.decoder_layers == "bottom" or (is_hierarchy(m) and m.decoder_layers == "all"),
        "model.decoder_layers",
        m.decoder_layers,
        "'bottom' (p(x|z₁)) or 'all' (p(x|z₁, …, z_L))"
        if is_hierarchy(m)
        else "'bottom' without model.upper_latent_dims (one layer is all layers)",
    )
    if not is_hierarchy(m):
        for field in ("upper_widths", "upper_posteriors", "upper_sigma0s"):
            check(
                len(m[field]) == 0,
                f"model.{field}",
                m[field],
                "() without model.upper_latent_dims (a single stochastic layer)",
            )
        return
    check(
        bool(m.groups_per_level)
        or len(m.upper_widths) == upper
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
            bool(m.groups_per_level) or len(m.conv_channels) == upper + 1,
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
