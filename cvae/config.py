"""The configuration schema: every field, its default, and the one place it is validated.

Experiment configs (``experiments/configs/*.py``) start from ``base_config()`` and override
a few fields; ``validate(config)`` runs once, before any data is loaded or anything is
compiled, and raises a ``ConfigError`` naming the field, the value and the valid range.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict

from cvae.errors import ConfigError, check, check_int, finite
from cvae.models import likelihoods, nets, posteriors, validation
from cvae.models.validation import validate_model

# Named MLP architectures (``apply_preset``): the documented "seed" architecture, encoder
# 784-128-64-32 (ReLU) -> 16 with the decoder mirrored, and two reference workloads of the
# benchmarks: the PyTorch example's VAE and Burda et al.'s one-layer IWAE nets.
SEED_PRESET = {"encoder_widths": (128, 64, 32), "latent_dim": 16, "activation": "relu"}
TORCH_EXAMPLE_PRESET = {"encoder_widths": (400,), "latent_dim": 20, "activation": "relu"}
IWAE_PRESET = {"encoder_widths": (200, 200), "latent_dim": 50, "activation": "tanh"}
PRESETS: dict[str, dict[str, Any]] = {
    "seed": SEED_PRESET,
    "torch_example": TORCH_EXAMPLE_PRESET,
    "iwae": IWAE_PRESET,
}


# The values an enumerated field takes (``--helpconfig`` lists them; ``validate`` checks).
CHOICES = {
    "data.binarize": ("dynamic", "none"),
    "data.pipeline": ("auto", "device", "stream"),
    "model.arch": validation.ARCHS,
    "model.activation": (*sorted(nets.ACTIVATIONS), nets.GATED),
    "model.init": nets.INITS,
    "model.posterior": posteriors.FAMILIES,
    "model.likelihood": likelihoods.NAMES,
    "model.prior": validation.PRIORS,
    "objective.kind": ("elbo", "iwae", "wae_mmd"),
    "train.optimizer": ("adam", "adamw"),
    "train.lr_schedule": ("constant", "warmup_cosine"),
}

# What 0 means for every numeric field that accepts it (every other value outside a
# field's range is refused by ``validate``, in one line naming the field).
ZERO_MEANS = {
    "seed": "the seed 0",
    "data.center_crop": "no crop",
    "data.resize": "no resize",
    "data.max_device_bytes": "every split streams (data.pipeline='auto')",
    "data.stream_workers": "read in the training process",
    "data.validation_size": "no carved validation subset",
    "model.code_l2": "no code penalty",
    "model.dropout_rate": "no dropout",
    "model.gradient_penalty": "no decoder-gradient penalty",
    "model.likelihood_scale": "the Gaussian's scale is learned",
    "objective.beta": "the KL term is not weighted in (an autoencoder's loss)",
    "objective.free_bits": "no free bits",
    "objective.kl_warmup_steps": "no warm-up",
    "objective.mmd_weight": "no MMD term",
    "train.num_epochs": "no training (evaluate the initial parameters)",
    "train.weight_decay": "no weight decay",
    "train.lr_warmup_steps": "no warm-up",
    "train.grad_clip_norm": "no clipping",
    "train.early_stopping_patience": "no early stopping",
    "train.num_devices": "every local device",
    "train.image_grid_size": "no image grids",
    "eval.num_importance_samples": "no importance-sampled NLL",
    "eval.chunk_size": "chosen automatically",
    "ex_post.diffusion_updates": "200 passes over the codes (1,000 to 8,000 updates)",
}


def base_config() -> ml_collections.ConfigDict:
    """All fields with their defaults: a collapsed VAE on the offline ``digits`` set.

    Returns:
      The schema as a ConfigDict; experiment configs override a few fields.
    """
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"  # a TFDS name, "digits", "npz:PATH" or "npy:DIR"
    c.data.data_dir = config_dict.placeholder(str)  # TFDS directory; else $TFDS_DATA_DIR
    c.data.validation_size = 0  # examples carved from the training split (fixed choice)
    # TFDS split strings (any source): "train", "validation", "train[:90%]", "train+test", …
    c.data.train_split = "train"
    c.data.validation_split = ""  # "" = carve data.validation_size from the train split
    c.data.test_split = "test"
    c.data.center_crop = 0  # side of a centred square crop of every image (0: none)
    c.data.resize = 0  # side of the square the (cropped) images are resized to (0: none)
    c.data.binarize = "dynamic"  # "dynamic" (fresh Bernoulli draw each use) | "none"
    c.data.dequantize = False  # uniform dequantization (x + u)/256, for continuous likelihoods
    c.data.class_balanced = False  # each class drawn equally often per epoch
    # "device": the training split lives on the device(s), batches gathered in the compiled
    # epoch; "stream": batches read from the split as needed (cvae.data.stream, Grain); "auto":
    # the device when the split's uint8 images fit in data.max_device_bytes, else the stream.
    c.data.pipeline = "auto"
    c.data.max_device_bytes = 4 * 2**30
    c.data.stream_chunk_steps = 32  # batches per call of the streaming program
    c.data.stream_workers = 0  # reader processes (0: threads in this process)
    c.data.stream_cache = True  # decode a TFDS split once into $CVAE_CACHE_DIR, stream from it

    c.model = ml_collections.ConfigDict()
    # "mlp" | "conv" | "resnet" (residual, GroupNorm; 32×32, 64×64) | "ghosh" (the conv
    # nets of Ghosh et al., 2020: conv_channels (128, 256, 512, 1024), GroupNorm for BatchNorm)
    c.model.arch = "mlp"
    c.model.encoder_widths = SEED_PRESET["encoder_widths"]
    c.model.decoder_widths = ()  # empty: the encoder's widths mirrored
    c.model.conv_channels = (32, 64)
    c.model.conv_dense_width = 256
    c.model.latent_dim = SEED_PRESET["latent_dim"]
    c.model.activation = SEED_PRESET["activation"]
    c.model.init = "lecun"  # "lecun" (Flax default) | "torch" (nn.Linear default)
    c.model.posterior = "collapsed"  # "gaussian" | "collapsed" | "deterministic"
    c.model.sigma0 = posteriors.DEFAULT_SIGMA0  # the collapsed posterior's fixed σ₀
    c.model.code_l2 = 0.0  # deterministic only: RAE penalty (code_l2/2)·‖μ‖²
    c.model.likelihood = "bernoulli"  # "bernoulli" | "gaussian" | "continuous_bernoulli"
    c.model.likelihood_scale = 0.0  # gaussian only: fixed σ, 0 = learned per pixel
    c.model.dropout_rate = 0.0
    c.model.gradient_penalty = 0.0  # deterministic only: RAE-GP weight of ‖∇_z D(z)‖²
    c.model.conditional = False  # condition encoder and decoder on one-hot labels
    c.model.prior = "standard"  # "standard": N(0, I) | "vamp": VampPrior (Tomczak & Welling)
    c.model.num_pseudo_inputs = 500  # vamp: K learnable pseudo-inputs
    # Stochastic layers above the first (cvae.models.hierarchy). Layer 1 is the fields above
    # (encoder_widths, latent_dim, posterior, sigma0); layer l > 1 reads entry l − 2 of each
    # tuple below.
    c.model.upper_latent_dims = ()  # d₂, …, d_L; empty: one stochastic layer
    c.model.upper_widths = ()  # per upper layer, its nets' hidden widths: ((100, 100),)
    c.model.upper_posteriors = ()  # per upper layer "gaussian" | "collapsed"; empty: posterior
    c.model.upper_sigma0s = ()  # per upper layer σ₀ (collapsed); empty: sigma0 for each
    # "bottom_up": q(z₁|x) q(z₂|z₁)… (Burda et al.'s two-layer models) | "top_down":
    # q(z_L|x) … q(z₁|z₂, x), in the generative order (ladder VAE)
    c.model.inference = "bottom_up"
    # "bottom": p(x|z₁) | "all": p(x|z₁, …, z_L), the decoder reads every layer (Tomczak &
    # Welling's HVAE)
    c.model.decoder_layers = "bottom"

    c.objective = ml_collections.ConfigDict()
    c.objective.kind = "elbo"  # "elbo" | "iwae" | "wae_mmd"
    c.objective.k = 1  # importance samples of the IWAE bound
    c.objective.beta = 1.0  # weight of the KL term (β-VAE)
    c.objective.kl_warmup_steps = 0  # β rises linearly from 0 over this many steps
    c.objective.free_bits = 0.0  # per-dimension KL floor λ in nats (Kingma et al., 2016)
    c.objective.upper_betas = ()  # a hierarchy's β of layers 2 … L; empty: beta for each
    c.objective.mmd_weight = 10.0  # wae_mmd: λ of λ·MMD(codes, N(0, I)) (Tolstikhin et al.)

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 128  # the global batch, split over devices
    c.train.num_epochs = 10
    c.train.learning_rate = 1e-3
    c.train.optimizer = "adam"  # "adam" | "adamw"
    c.train.weight_decay = 0.0  # adamw's decoupled decay (or L2 through adam's gradient)
    c.train.lr_schedule = "constant"  # "constant" | "warmup_cosine"
    c.train.lr_warmup_steps = 0
    c.train.grad_clip_norm = 0.0  # 0 = no clipping
    c.train.early_stopping_patience = 0  # evaluations without improvement; 0 = off
    c.train.num_devices = 0  # 0 = every local device
    c.train.checkpoint_every_epochs = 1
    c.train.keep_checkpoints = 3
    c.train.overwrite = False  # start afresh in a workdir whose saved config differs
    c.train.image_grid_size = 64  # images in each reconstruction / sample grid; 0 = none

    c.eval = ml_collections.ConfigDict()
    c.eval.every_epochs = 1
    c.eval.batch_size = 500
    # K of the importance-sampled log p(x): the default of experiments.evaluate and
    # experiments.main (their --k overrides it); training itself scores the ELBO only.
    c.eval.num_importance_samples = 5000
    c.eval.chunk_size = 0  # importance samples evaluated at once (bounds memory); 0 = auto

    # The fits of the ex-post samplers (cvae.samplers) a run draws from: more
    # passes, longer fits, better densities. The defaults are what docs/results.md measured.
    c.ex_post = ml_collections.ConfigDict()
    c.ex_post.flow_max_epochs = 200  # the flow's passes over the codes (early-stopped)
    c.ex_post.two_stage_epochs = 100  # the second-stage VAE's passes (KL warm-up: a fifth)
    # the diffusion model's Adam updates, in blocks of 250; 0 = 200 passes over the codes,
    # at least 1,000 updates and at most 8,000
    c.ex_post.diffusion_updates = 0
    return c


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
    """Raises ConfigError for the first field outside its valid range (or missing).

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
        check(isinstance(c.seed, int) and c.seed >= 0, "seed", c.seed, "an integer ≥ 0")
        validate_data(c.data)
        validate_model(c.model)
        validate_objective(c.objective, c.model)
        validate_train(c.train)
        validate_eval(c.eval)
        validate_ex_post(c.ex_post)
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


def validate_data(d: ml_collections.ConfigDict) -> None:
    """Checks the ``data`` section.

    Args:
      d: the section.

    Raises:
      ConfigError: naming the field, the value and the valid range.
    """
    check(
        isinstance(d.name, str) and d.name != "",
        "data.name",
        d.name,
        "a TFDS name, 'digits', 'npz:PATH' or 'npy:DIR'",
    )
    check_int(d.validation_size, "data.validation_size", 0, " (0 = no carved validation)")
    check_int(d.max_device_bytes, "data.max_device_bytes", 0, " (0 = always stream)")
    check(
        not (d.validation_split and d.validation_size),
        "data.validation_split",
        d.validation_split,
        "empty when data.validation_size > 0 (a validation split is "
        "either named or carved from the train split, not both)",
    )
    for field in ("center_crop", "resize"):
        check(
            isinstance(d[field], int) and d[field] >= 0,
            f"data.{field}",
            d[field],
            "an integer ≥ 0 (0: none)",
        )
    for role in ("train", "test"):
        split = d[f"{role}_split"]
        check(
            isinstance(split, str) and bool(split),
            f"data.{role}_split",
            split,
            "a TFDS split string such as 'train' or 'train[:90%]'",
        )
    check(
        d.binarize in CHOICES["data.binarize"], "data.binarize", d.binarize, "'dynamic' or 'none'"
    )
    check(
        d.pipeline in CHOICES["data.pipeline"],
        "data.pipeline",
        d.pipeline,
        "'auto', 'device' or 'stream'",
    )
    check(
        isinstance(d.stream_chunk_steps, int) and d.stream_chunk_steps >= 1,
        "data.stream_chunk_steps",
        d.stream_chunk_steps,
        "an integer ≥ 1",
    )
    check(
        isinstance(d.stream_workers, int) and d.stream_workers >= 0,
        "data.stream_workers",
        d.stream_workers,
        "an integer ≥ 0",
    )
    check(
        not (d.dequantize and d.binarize == "dynamic"),
        "data.dequantize",
        d.dequantize,
        "False when data.binarize='dynamic' (binarized data is not dequantized)",
    )


def validate_objective(o: ml_collections.ConfigDict, m: ml_collections.ConfigDict) -> None:
    """Checks the ``objective`` section (some choices depend on the model).

    Args:
      o: the section.
      m: the ``model`` section.

    Raises:
      ConfigError: naming the field, the value and the valid range.
    """
    check(
        o.kind in CHOICES["objective.kind"],
        "objective.kind",
        o.kind,
        "'elbo', 'iwae' or 'wae_mmd'",
    )
    check(
        o.kind != "wae_mmd" or m.posterior in ("deterministic", "collapsed"),
        "objective.kind",
        o.kind,
        "used with model.posterior='deterministic' or "
        "'collapsed' when it is 'wae_mmd' (the WAE's encoder has no learned variance)",
    )
    check(
        not m.upper_latent_dims or o.kind in ("elbo", "iwae"),
        "objective.kind",
        o.kind,
        "'elbo' or 'iwae' for a hierarchy (model.upper_latent_dims is set)",
    )
    check(
        len(o.upper_betas) in (0, len(m.upper_latent_dims))
        and all(finite(b) and b >= 0 for b in o.upper_betas),
        "objective.upper_betas",
        o.upper_betas,
        f"() (objective.beta for every layer) or {len(m.upper_latent_dims)} finite β ≥ 0, "
        "one per layer above the first (model.upper_latent_dims)",
    )
    check(
        finite(o.mmd_weight) and o.mmd_weight >= 0,
        "objective.mmd_weight",
        o.mmd_weight,
        "finite and ≥ 0",
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
    check(isinstance(o.k, int) and o.k >= 1, "objective.k", o.k, "an integer ≥ 1")
    check(
        o.kind != "iwae" or m.posterior != "deterministic",
        "objective.kind",
        o.kind,
        "'elbo' or 'wae_mmd' for a deterministic posterior (the IWAE bound needs a density)",
    )
    check(finite(o.beta) and o.beta >= 0, "objective.beta", o.beta, "finite and ≥ 0")
    check_int(o.kl_warmup_steps, "objective.kl_warmup_steps", 0, " (0 = no warm-up)")
    # Free bits floor a per-dimension KL term, which the IWAE bound does not have: refused
    # rather than silently dropped (β and its warm-up temper the bound's weights instead).
    check(
        o.kind != "iwae" or o.free_bits == 0.0,
        "objective.free_bits",
        o.free_bits,
        "0.0 with objective.kind='iwae' (the IWAE bound has no per-dimension KL term to "
        "floor; use objective.kind='elbo' for free bits)",
    )
    check(
        finite(o.free_bits) and o.free_bits >= 0,
        "objective.free_bits",
        o.free_bits,
        "finite and ≥ 0 nats",
    )


def validate_train(t: ml_collections.ConfigDict) -> None:
    """Checks the ``train`` section.

    Args:
      t: the section.

    Raises:
      ConfigError: naming the field, the value and the valid range.
    """
    check(
        isinstance(t.batch_size, int) and t.batch_size > 0,
        "train.batch_size",
        t.batch_size,
        "a positive integer",
    )
    check(
        isinstance(t.num_epochs, int) and t.num_epochs >= 0,
        "train.num_epochs",
        t.num_epochs,
        "an integer ≥ 0",
    )
    check(
        finite(t.learning_rate) and t.learning_rate > 0,
        "train.learning_rate",
        t.learning_rate,
        "finite and > 0",
    )
    check(
        t.optimizer in CHOICES["train.optimizer"],
        "train.optimizer",
        t.optimizer,
        "'adam' or 'adamw'",
    )
    check(
        finite(t.weight_decay) and t.weight_decay >= 0,
        "train.weight_decay",
        t.weight_decay,
        "finite and ≥ 0",
    )
    check(
        t.lr_schedule in CHOICES["train.lr_schedule"],
        "train.lr_schedule",
        t.lr_schedule,
        "'constant' or 'warmup_cosine'",
    )
    check_int(t.lr_warmup_steps, "train.lr_warmup_steps", 0, " (0 = no warm-up)")
    check(
        finite(t.grad_clip_norm) and t.grad_clip_norm >= 0,
        "train.grad_clip_norm",
        t.grad_clip_norm,
        "finite and ≥ 0 (0 = off)",
    )
    check_int(t.early_stopping_patience, "train.early_stopping_patience", 0, " (0 = off)")
    check_int(t.num_devices, "train.num_devices", 0, " (0 = every local device)")
    check_int(t.checkpoint_every_epochs, "train.checkpoint_every_epochs", 1)
    check_int(t.keep_checkpoints, "train.keep_checkpoints", 1)
    check_int(t.image_grid_size, "train.image_grid_size", 0, " (0 = no image grids)")


def validate_eval(e: ml_collections.ConfigDict) -> None:
    """Checks the ``eval`` section.

    Args:
      e: the section.

    Raises:
      ConfigError: naming the field, the value and the valid range.
    """
    check_int(e.every_epochs, "eval.every_epochs", 1)
    check_int(e.batch_size, "eval.batch_size", 1)
    check(
        isinstance(e.num_importance_samples, int) and e.num_importance_samples >= 0,
        "eval.num_importance_samples",
        e.num_importance_samples,
        "an integer ≥ 0 (0 = no importance-sampled NLL)",
    )
    check(
        isinstance(e.chunk_size, int) and e.chunk_size >= 0,
        "eval.chunk_size",
        e.chunk_size,
        "an integer ≥ 0 (0 = automatic)",
    )


def validate_ex_post(x: ml_collections.ConfigDict) -> None:
    """Checks the ``ex_post`` section.

    Args:
      x: the section.

    Raises:
      ConfigError: naming the field, the value and the valid range.
    """
    check_int(x.flow_max_epochs, "ex_post.flow_max_epochs", 1)
    check_int(x.two_stage_epochs, "ex_post.two_stage_epochs", 1)
    check_int(x.diffusion_updates, "ex_post.diffusion_updates", 0, " (0 = automatic)")


# Fields whose change makes a saved run a different experiment: resuming across them would
# silently mix two runs, so the trainer refuses unless train.overwrite is set.
RESUME_CRITICAL_PREFIXES = ("seed", "data.", "model.", "objective.", "train.batch_size")


def resume_conflicts(saved: dict, current: dict) -> list[str]:
    """Resume-critical fields that differ between a saved config and the current one.

    Args:
      saved: the saved config, flattened (fields it lacks take today's defaults).
      current: the current config, flattened.

    Returns:
      Their dotted names, sorted (seed, data, model, objective and batch size fields).
    """
    saved = {**flatten(base_config()), **saved}  # fields added since: their defaults
    names = sorted(set(saved) | set(current))
    return [
        n
        for n in names
        if any(n == p or n.startswith(p) for p in RESUME_CRITICAL_PREFIXES)
        and saved.get(n) != current.get(n)
    ]


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
