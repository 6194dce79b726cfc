"""The configuration schema: every field declared once, and the one place it is validated.

Each section is a table of ``cvae.schema.Field`` (default, type, range or choices, what 0
means, one line of documentation): ``base_config()``, the choices, ``ZERO_MEANS``, every
field's own check and ``--helpconfig``'s text are generated from the tables; only the rules
between fields are written by hand (``validate`` and ``cvae.models.validation``).
Experiment configs (``experiments/configs/*.py``) start from ``base_config()`` and
override a few fields; ``validate(config)`` runs once, before any data is loaded or
anything is compiled, and raises a ``ConfigError`` naming the field, the value and the
valid range. (One module on purpose: most of its lines are the tables, and the rules
between fields read them; the model section's table lives beside the model registries it
names, in ``cvae.models.validation``. Which fields may change on resume is the training
setup's rule: ``cvae.training.setup.resume_conflicts``.)
"""

from __future__ import annotations

from typing import Any

import ml_collections

from cvae import schema
from cvae.errors import ConfigError, check, finite
from cvae.models.validation import MODEL_FIELDS, is_hierarchy, num_layers, validate_model
from cvae.schema import Field

# Named MLP architectures (``apply_preset``): the documented "seed" architecture, encoder
# 784-128-64-32 (ReLU) -> 16 with the decoder mirrored (the model section's defaults), and
# two reference workloads of the benchmarks: the PyTorch example's VAE and Burda et al.'s
# one-layer IWAE nets.
SEED_PRESET = {k: MODEL_FIELDS[k].default for k in ("encoder_widths", "latent_dim", "activation")}
TORCH_EXAMPLE_PRESET = {"encoder_widths": (400,), "latent_dim": 20, "activation": "relu"}
IWAE_PRESET = {"encoder_widths": (200, 200), "latent_dim": 50, "activation": "tanh"}
PRESETS: dict[str, dict[str, Any]] = {
    "seed": SEED_PRESET,
    "torch_example": TORCH_EXAMPLE_PRESET,
    "iwae": IWAE_PRESET,
}

TOP_FIELDS = {
    "seed": Field(0, "the run's seed: every key derives from it", "int", zero="the seed 0"),
}

DATA_FIELDS = {
    "name": Field(
        "digits",
        "a TFDS name, 'digits', 'npz:PATH' or 'npy:DIR'",
        "str",
        nonempty=True,
        valid="a TFDS name, 'digits', 'npz:PATH' or 'npy:DIR'",
    ),
    "data_dir": Field(None, "the TFDS directory; unset: $TFDS_DATA_DIR", "optional_str"),
    "validation_size": Field(
        0,
        "examples carved from the training split (a fixed choice)",
        "int",
        zero="no carved validation subset",
    ),
    "train_split": Field(
        "train",
        "a TFDS split string: 'train', 'train[:90%]', 'train+test', …",
        "str",
        nonempty=True,
        valid="a TFDS split string such as 'train' or 'train[:90%]'",
    ),
    "validation_split": Field(
        "", "a TFDS split string; empty: carve data.validation_size from train", "str"
    ),
    "test_split": Field(
        "test",
        "a TFDS split string",
        "str",
        nonempty=True,
        valid="a TFDS split string such as 'train' or 'train[:90%]'",
    ),
    "center_crop": Field(
        0, "the side of a centred square crop of every image", "int", zero="no crop"
    ),
    "resize": Field(
        0, "the side of the square the (cropped) images are resized to", "int", zero="no resize"
    ),
    "binarize": Field(
        "dynamic",
        "dynamic (a fresh Bernoulli draw each use) | none",
        "choice",
        choices=("dynamic", "none"),
    ),
    "dequantize": Field(
        False, "uniform dequantization (x + u)/256, for continuous likelihoods", "bool"
    ),
    "class_balanced": Field(False, "each class drawn equally often per epoch", "bool"),
    # "device": the training split lives on the device(s), batches gathered in the compiled
    # epoch; "stream": batches read from the split as needed (cvae.data.stream, Grain);
    # "auto": the device when the split's uint8 images fit in data.max_device_bytes.
    "pipeline": Field(
        "auto",
        "device | stream (read as needed, Grain) | auto (the device when the split fits in "
        "data.max_device_bytes)",
        "choice",
        choices=("auto", "device", "stream"),
    ),
    "max_device_bytes": Field(
        4 * 2**30,
        "the training split's uint8 bytes that data.pipeline='auto' keeps on the device",
        "int",
        zero="every split streams (data.pipeline='auto')",
    ),
    "stream_chunk_steps": Field(32, "batches per call of the streaming program", "int", minimum=1),
    "stream_workers": Field(
        0, "reader processes of the stream", "int", zero="read in the training process"
    ),
    "stream_cache": Field(
        True, "decode a TFDS split once into $CVAE_CACHE_DIR and stream from it", "bool"
    ),
}

OBJECTIVE_FIELDS = {
    "kind": Field("elbo", "elbo | iwae | wae_mmd", "choice", choices=("elbo", "iwae", "wae_mmd")),
    "k": Field(1, "importance samples of the IWAE bound", "int", minimum=1),
    "beta": Field(
        1.0,
        "the weight of the KL term (β-VAE)",
        "float",
        minimum=0.0,
        zero="the KL term is not weighted in (an autoencoder's loss)",
    ),
    "kl_warmup_steps": Field(
        0, "β rises linearly from 0 over this many steps", "int", zero="no warm-up"
    ),
    "free_bits": Field(
        0.0,
        "the per-dimension KL floor λ in nats (Kingma et al., 2016)",
        "float",
        minimum=0.0,
        zero="no free bits",
    ),
    "upper_betas": Field(
        (), "a hierarchy's β of layers 2 … L; empty: objective.beta for each", "tuple"
    ),
    "kl_balance": Field(
        False,
        "a hierarchy's KL warm-up per layer (NVAE's KL balancing): while β warms up, layer "
        "l's KL weight is also scaled by γ_l ∝ (mean KL_l + 0.01) / d_l, normalised to mean "
        "1, so layers that carry little information per dimension are pushed down less",
        "bool",
    ),
    "mmd_weight": Field(
        10.0,
        "wae_mmd: λ of λ·MMD(codes, N(0, I)) (Tolstikhin et al.)",
        "float",
        minimum=0.0,
        zero="no MMD term",
    ),
}

TRAIN_FIELDS = {
    "batch_size": Field(128, "the global batch, split over devices", "int", minimum=1),
    "num_epochs": Field(
        10,
        "passes over the training split",
        "int",
        zero="no training (evaluate the initial parameters)",
    ),
    "learning_rate": Field(
        1e-3, "Adam's step size (the peak of a schedule)", "float", minimum=0.0, exclusive=True
    ),
    "optimizer": Field("adam", "adam | adamw", "choice", choices=("adam", "adamw")),
    "weight_decay": Field(
        0.0,
        "adamw's decoupled decay (or L2 through adam's gradient)",
        "float",
        minimum=0.0,
        zero="no weight decay",
    ),
    "lr_schedule": Field(
        "constant", "constant | warmup_cosine", "choice", choices=("constant", "warmup_cosine")
    ),
    "lr_warmup_steps": Field(0, "warmup_cosine's linear warm-up", "int", zero="no warm-up"),
    "grad_clip_norm": Field(
        0.0, "the global gradient norm clipped to", "float", minimum=0.0, zero="no clipping"
    ),
    "skip_grad_norm": Field(
        0.0,
        "an update whose gradient's global norm (before clipping) exceeds this is skipped: "
        "params and optimizer state stay as they were, the step still counts, and the train "
        "record counts the skips (VDVAE's grad_skip_threshold)",
        "float",
        minimum=0.0,
        zero="no skipping",
    ),
    "precision": Field(
        "auto",
        "the training step's compute: float32 | bfloat16 (the forward and backward passes in "
        "bf16, params, optimizer state and the loss's sums in f32) | auto: bfloat16 on "
        "GPUs and TPUs, float32 on CPUs; evaluation is float32",
        "choice",
        choices=("auto", "float32", "bfloat16"),
    ),
    "ema_decay": Field(
        0.0,
        "the decay of an exponential moving average of the weights; with it, validation, "
        "test scores, image grids, checkpoints' params and load_run use the average, and the "
        "trained weights are the state's 'online'",
        "float",
        minimum=0.0,
        below=1.0,
        zero="no average: the trained weights are evaluated",
    ),
    "early_stopping_patience": Field(
        0, "evaluations without improvement before stopping", "int", zero="no early stopping"
    ),
    "num_devices": Field(0, "the devices of the data mesh", "int", zero="every local device"),
    "checkpoint_every_epochs": Field(1, "epochs between checkpoints", "int", minimum=1),
    "keep_checkpoints": Field(3, "the latest checkpoints kept", "int", minimum=1),
    "overwrite": Field(False, "start afresh in a workdir whose saved config differs", "bool"),
    "image_grid_size": Field(
        64, "images in each reconstruction and sample grid", "int", zero="no image grids"
    ),
}

EVAL_FIELDS = {
    "every_epochs": Field(1, "epochs between validation evaluations", "int", minimum=1),
    "batch_size": Field(500, "examples per evaluation batch", "int", minimum=1),
    # K of the importance-sampled log p(x): the default of experiments.evaluate and
    # experiments.main (their --k overrides it); training itself scores the ELBO only.
    "num_importance_samples": Field(
        5000,
        "K of the importance-sampled log p(x) of experiments.evaluate and experiments.main",
        "int",
        zero="no importance-sampled NLL",
    ),
    "chunk_size": Field(
        0,
        "importance samples evaluated at once (bounds memory)",
        "int",
        zero="chosen automatically",
    ),
}

# The fits of the ex-post samplers (cvae.samplers) a run draws from: more passes, longer
# fits, better densities. The defaults are what docs/results.md measured.
EX_POST_FIELDS = {
    "flow_max_epochs": Field(
        200, "the flow's passes over the codes (early-stopped)", "int", minimum=1
    ),
    "two_stage_epochs": Field(
        100, "the second-stage VAE's passes (KL warm-up: a fifth)", "int", minimum=1
    ),
    "diffusion_updates": Field(
        0,
        "the diffusion model's Adam updates, in blocks of 250",
        "int",
        zero="200 passes over the codes (1,000 to 8,000 updates)",
    ),
}

# Every section's table, by the section's name ("" for the top-level fields).
SECTIONS: dict[str, dict[str, Field]] = {
    "": TOP_FIELDS,
    "data": DATA_FIELDS,
    "model": MODEL_FIELDS,
    "objective": OBJECTIVE_FIELDS,
    "train": TRAIN_FIELDS,
    "eval": EVAL_FIELDS,
    "ex_post": EX_POST_FIELDS,
}
# Every field by its dotted name ("model.latent_dim").
FIELDS: dict[str, Field] = {
    f"{section}.{name}" if section else name: field
    for section, table in SECTIONS.items()
    for name, field in table.items()
}
# The values an enumerated field takes, and what 0 means where 0 is valid: from the tables.
CHOICES = {name: field.choices for name, field in FIELDS.items() if field.type == "choice"}
ZERO_MEANS = {name: field.zero for name, field in FIELDS.items() if field.zero}


def base_config() -> ml_collections.ConfigDict:
    """All fields with their defaults (the tables above): a collapsed VAE on the offline
    ``digits`` set.

    Returns:
      The schema as a ConfigDict; experiment configs override a few fields.
    """
    c = ml_collections.ConfigDict()
    for name, field in TOP_FIELDS.items():
        c[name] = field.default
    for section, table in SECTIONS.items():
        if section:
            c[section] = schema.defaults(table)
    return c


def field_help(config: ml_collections.ConfigDict | None = None) -> str:
    """Every field, one line each (``--helpconfig``): its flag at the config's value (the
    default when None), what it is, and its choices or what 0 means.

    Args:
      config: the config whose values to show; None for the defaults.

    Returns:
      The lines.
    """
    values = flatten(config if config is not None else base_config())
    return "\n".join(
        schema.help_line(name, FIELDS[name], value)
        for name, value in values.items()
        if name in FIELDS
    )


def apply_preset(config: ml_collections.ConfigDict, preset: str) -> ml_collections.ConfigDict:
    """Sets the MLP widths, latent size and activation of a named architecture preset.

    Args:
      config: the config to change (in place).
      preset: a name in ``PRESETS``: "seed", "torch_example" or "iwae".

    Returns:
      The same config.

    Raises:
      ConfigError: an unknown preset.
    """
    if preset not in PRESETS:
        raise ConfigError(
            f"unknown architecture preset {preset!r}; choose one of {sorted(PRESETS)}"
        )
    config.model.arch = "mlp"
    for key, value in PRESETS[preset].items():
        config.model[key] = value
    config.model.decoder_widths = ()
    return config


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for the first field outside its valid range (or missing), then for
    the first rule between fields that fails.

    Every field's own range comes from its ``Field``; the rules between fields are written
    out below (and, for the model section, in ``cvae.models.validation``).

    Args:
      config: a whole config.

    Raises:
      ConfigError: naming the field, the value and the valid range.
    """
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"a config must be an ml_collections.ConfigDict, got "
            f"{type(config).__name__}; get_config() should return "
            "cvae.config.base_config() with some fields changed"
        )
    c = config
    try:
        schema.check_fields("", TOP_FIELDS, c)
        schema.check_fields("data.", DATA_FIELDS, c.data)
        _check_data_rules(c.data)
        validate_model(c.model)
        schema.check_fields("objective.", OBJECTIVE_FIELDS, c.objective)
        _check_objective_rules(c.objective, c.model)
        for section in ("train", "eval", "ex_post"):
            schema.check_fields(f"{section}.", SECTIONS[section], c[section])
    except (AttributeError, KeyError) as err:
        raise ConfigError(
            f"the config lacks a field ({str(err).splitlines()[0]}); start "
            "configs from cvae.config.base_config(), which has every field"
        ) from None
    except TypeError as err:  # e.g. a string where a number belongs
        raise ConfigError(
            f"a config field has the wrong type ({err}); the defaults in "
            "cvae/config.py show each field's type"
        ) from None


def _check_data_rules(d: ml_collections.ConfigDict) -> None:
    """The rules between the ``data`` section's fields."""
    check(
        not (d.validation_split and d.validation_size),
        "data.validation_split",
        d.validation_split,
        "empty when data.validation_size > 0 (a validation split is "
        "either named or carved from the train split, not both)",
    )
    check(
        not (d.dequantize and d.binarize == "dynamic"),
        "data.dequantize",
        d.dequantize,
        "False when data.binarize='dynamic' (binarized data is not dequantized)",
    )


def _check_objective_rules(o: ml_collections.ConfigDict, m: ml_collections.ConfigDict) -> None:
    """The rules between the ``objective`` section's fields and the model's."""
    check(
        o.kind != "wae_mmd" or m.posterior in ("deterministic", "collapsed"),
        "objective.kind",
        o.kind,
        "used with model.posterior='deterministic' or "
        "'collapsed' when it is 'wae_mmd' (the WAE's encoder has no learned variance)",
    )
    check(
        not is_hierarchy(m) or o.kind in ("elbo", "iwae"),
        "objective.kind",
        o.kind,
        "'elbo' or 'iwae' for a hierarchy (model.upper_latent_dims or groups_per_level is set)",
    )
    check(
        len(o.upper_betas) in (0, num_layers(m) - 1)
        and all(finite(b) and b >= 0 for b in o.upper_betas),
        "objective.upper_betas",
        o.upper_betas,
        f"() (objective.beta for every layer) or {num_layers(m) - 1} finite β ≥ 0, "
        "one per layer above the first",
    )
    check(
        m.prior == "standard" or o.kind in ("elbo", "iwae"),
        "model.prior",
        m.prior,
        "'standard' with objective.kind='wae_mmd' (its MMD matches N(0, I))",
    )
    check(
        m.prior == "standard" or o.free_bits == 0,
        "objective.free_bits",
        o.free_bits,
        "0 with model.prior='vamp' (its KL is a Monte-Carlo estimate with no "
        "per-dimension terms to floor)",
    )
    check(
        o.kind == "elbo" or m.gradient_penalty == 0,
        "model.gradient_penalty",
        m.gradient_penalty,
        "0 unless objective.kind='elbo' (RAE-GP adds it to the autoencoder's loss)",
    )
    check(
        o.kind != "iwae" or m.posterior != "deterministic",
        "objective.kind",
        o.kind,
        "'elbo' or 'wae_mmd' for a deterministic posterior (the IWAE bound needs a density)",
    )
    check(
        not o.kl_balance or (is_hierarchy(m) and o.kind == "elbo" and o.kl_warmup_steps > 0),
        "objective.kl_balance",
        o.kl_balance,
        "False unless a hierarchy trains on objective.kind='elbo' with "
        "objective.kl_warmup_steps > 0 (it balances the layers' KLs during the warm-up)",
    )
    # Free bits floor a per-dimension KL term, which the IWAE bound does not have: refused
    # rather than silently dropped (β and its warm-up temper the bound's weights instead).
    check(
        o.kind != "iwae" or o.free_bits == 0.0,
        "objective.free_bits",
        o.free_bits,
        "0.0 with objective.kind='iwae' (the IWAE bound has no per-dimension KL term to "
        "floor; use objective.kind='elbo' for free bits)",
    )


def from_dict(saved: dict) -> ml_collections.ConfigDict:
    """A saved config (config.json) as a ConfigDict with the schema's types.

    JSON turns tuples into lists, and every field whose default is a tuple becomes one
    again. Fields added to the schema after the run was saved take their defaults (which
    reproduce the behaviour of the code that saved it).

    Args:
      saved: the parsed config.json.

    Returns:
      The config.
    """
    defaults = base_config()

    def restore(node: dict, schema) -> dict:
        out: dict[str, Any] = {}
        for key, value in node.items():
            default = schema.get(key) if schema is not None else None
            if isinstance(value, dict):
                out[key] = restore(
                    value, default if isinstance(default, ml_collections.ConfigDict) else None
                )
            elif isinstance(value, list) and isinstance(default, tuple):
                out[key] = as_tuples(value)
            else:
                out[key] = value
        return out

    def merged(default: dict, node: dict) -> dict:
        out = dict(default)
        for key, value in node.items():
            out[key] = (
                merged(default[key], value)
                if isinstance(value, dict) and isinstance(default.get(key), dict)
                else value
            )
        return out

    return ml_collections.ConfigDict(merged(defaults.to_dict(), restore(saved, defaults)))


def flatten(config: ml_collections.ConfigDict | dict, prefix: str = "") -> dict:
    """A config as {"model.latent_dim": 16, …}, tuples as lists, as they are in config.json.

    Args:
      config: a ConfigDict or nested dict.
      prefix: prepended to every name.

    Returns:
      Dotted name → value.
    """
    items = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
    flat = {}
    for key, value in items.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = _as_lists(value)
    return flat


def _as_lists(value):
    """Tuples (nested ones too: ``model.upper_widths``) as lists, as JSON writes them."""
    return [_as_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def as_tuples(value):
    """``_as_lists`` undone: lists (nested ones too) as tuples (a config's tuple fields).

    Args:
      value: a value read from JSON or typed on a command line.

    Returns:
      The value with every list, at any depth, a tuple.
    """
    return tuple(as_tuples(v) for v in value) if isinstance(value, (tuple, list)) else value
