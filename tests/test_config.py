"""The config schema: every numeric field refuses −1, NaN and ±inf in one line naming the
field, and accepts 0 only where the schema documents what 0 means (``ZERO_MEANS``). The
walk covers every field of ``base_config()``, so a field added later is checked too."""

import math

import pytest

from cvae import config as config_lib
from cvae.training.setup import resume_conflicts

pytestmark = pytest.mark.unit

NUMERIC = {
    name: value
    for name, value in config_lib.flatten(config_lib.base_config()).items()
    if isinstance(value, int | float) and not isinstance(value, bool)
}


def _with(name: str, value):
    config = config_lib.base_config()
    *parents, leaf = name.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    with node.ignore_type():
        node[leaf] = value
    return config


def _refusal(name: str, value) -> str | None:
    """The one-line ConfigError for ``name = value``, or None when it is accepted."""
    try:
        config_lib.validate(_with(name, value))
    except config_lib.ConfigError as err:
        return str(err)
    return None


def test_the_walk_sees_the_schema():
    assert len(NUMERIC) >= 30 and "data.max_device_bytes" in NUMERIC


@pytest.mark.parametrize("name", sorted(NUMERIC))
@pytest.mark.parametrize("value", [-1, math.nan, math.inf, -math.inf], ids=str)
def test_out_of_range_values_are_refused_in_one_line_naming_the_field(name, value):
    message = _refusal(name, value)
    assert message is not None, f"{name} = {value} was accepted"
    assert message.startswith(f"{name} = ") and "\n" not in message, message


@pytest.mark.parametrize("name", sorted(NUMERIC))
def test_zero_is_refused_or_its_meaning_documented(name):
    message = _refusal(name, 0)
    if message is None:
        assert name in config_lib.ZERO_MEANS, f"{name} accepts 0: say what it means"
    else:
        assert name not in config_lib.ZERO_MEANS, f"{name} refuses 0 yet documents it"
        assert message.startswith(f"{name} = ") and "\n" not in message


def test_every_documented_zero_names_a_field():
    assert set(config_lib.ZERO_MEANS) <= set(NUMERIC)


def test_the_defaults_validate():
    config_lib.validate(config_lib.base_config())


TWO_LAYERS = {"model.upper_latent_dims": (4,), "model.upper_widths": ((16,),)}


def _hierarchy(**overrides):
    config = config_lib.base_config()
    for name, value in {**TWO_LAYERS, **overrides}.items():
        section, leaf = name.split(".")
        with config[section].ignore_type():
            config[section][leaf] = value
    return config


def test_upper_layers_build_a_hierarchy_whose_layers_default_to_the_first_family():
    from cvae.models import mlp_hierarchy as hierarchy
    from cvae.models import residual_hierarchy, vae

    config = _hierarchy(**{"model.sigma0": 0.2})
    config_lib.validate(config)
    model = vae.build_model(config.model, (8, 8, 1), 10)
    assert isinstance(model, hierarchy.BottomUpVAE)
    assert [(layer.latent_dim, layer.widths) for layer in model.layers] == [
        (16, (128, 64, 32)),
        (4, (16,)),
    ]
    assert [(layer.posterior, layer.sigma0) for layer in model.layers] == [("collapsed", 0.2)] * 2
    mixed = _hierarchy(**{"model.upper_posteriors": ("gaussian",), "model.upper_sigma0s": (0.5,)})
    layers = vae.build_model(mixed.model, (8, 8, 1), 10).layers
    assert [(layer.posterior, layer.sigma0) for layer in layers] == [
        ("collapsed", 0.01),
        ("gaussian", 0.5),
    ]
    top_down = _hierarchy(**{"model.inference": "top_down"})
    config_lib.validate(top_down)
    model = vae.build_model(top_down.model, (8, 8, 1), 10)
    assert isinstance(model, hierarchy.TopDownVAE) and model.layer_dims == (16, 4)
    hvae = _hierarchy(
        **{"model.inference": "top_down", "model.prior": "vamp", "model.decoder_layers": "all"}
    )
    config_lib.validate(hvae)
    model = vae.build_model(hvae.model, (8, 8, 1), 10)
    assert (model.prior, model.num_pseudo_inputs, model.decoder_layers) == ("vamp", 500, "all")
    residual = _hierarchy(**RESIDUAL)
    config_lib.validate(residual)
    model = vae.build_model(residual.model, (28, 28, 1), 10)
    assert isinstance(model, residual_hierarchy.ResidualTopDownVAE)
    assert model.channels == (32, 64) and model.layer_dims == (16, 4)
    with pytest.raises(ValueError, match="multiples of 4"):
        vae.build_model(residual.model, (30, 30, 1), 10)


RESIDUAL = {
    "model.arch": "resnet",
    "model.inference": "top_down",
    "model.decoder_layers": "all",
    "model.conv_channels": (32, 64),
}


@pytest.mark.parametrize(
    "overrides, field",
    [
        (
            {"model.upper_latent_dims": (4, 0), "model.upper_widths": ((8,), (8,))},
            "upper_latent_dims",
        ),
        ({"model.upper_widths": ((16,), (16,))}, "upper_widths"),
        ({"model.upper_widths": ((),)}, "upper_widths"),
        ({"model.upper_posteriors": ("deterministic",)}, "upper_posteriors"),
        ({"model.upper_posteriors": ("gaussian", "gaussian")}, "upper_posteriors"),
        ({"model.upper_sigma0s": (0.0,)}, "upper_sigma0s"),
        ({"model.posterior": "deterministic"}, "posterior"),
        ({"model.arch": "conv"}, "arch"),
        ({"model.conditional": True}, "conditional"),
        ({"model.prior": "vamp"}, "prior"),
        ({"model.dropout_rate": 0.1}, "dropout_rate"),
        ({"model.decoder_widths": (8,)}, "decoder_widths"),
        ({"model.init": "torch"}, "init"),
        ({"objective.kind": "wae_mmd"}, "kind"),
        ({"objective.upper_betas": (1.0, 1.0)}, "upper_betas"),
        ({"objective.upper_betas": (-1.0,)}, "upper_betas"),
        ({"model.inference": "sideways"}, "inference"),
        ({"model.decoder_layers": "top"}, "decoder_layers"),
        (
            {
                "model.upper_latent_dims": (),
                "model.upper_widths": (),
                "model.decoder_layers": "all",
            },
            "decoder_layers",
        ),
        ({"model.inference": "top_down", "model.encoder_widths": ()}, "encoder_widths"),
        ({**RESIDUAL, "model.inference": "bottom_up"}, "arch"),
        ({**RESIDUAL, "model.conv_channels": (32, 64, 64)}, "conv_channels"),
        ({**RESIDUAL, "model.conv_channels": (32, 60)}, "conv_channels"),
        ({**RESIDUAL, "model.decoder_layers": "bottom"}, "decoder_layers"),
        ({**RESIDUAL, "model.activation": "gated"}, "activation"),
        # upper fields without upper layers
        ({"model.upper_latent_dims": ()}, "upper_widths"),
        (
            {
                "model.upper_latent_dims": (),
                "model.upper_widths": (),
                "model.inference": "top_down",
            },
            "inference",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_hierarchy_refuses_what_it_cannot_build_in_one_line(overrides, field):
    with pytest.raises(config_lib.ConfigError) as refused:
        config_lib.validate(_hierarchy(**overrides))
    message = str(refused.value)
    assert f".{field} = " in message and "\n" not in message, message


def test_nested_tuples_survive_the_json_round_trip_and_resume_comparison():
    import json

    config = _hierarchy(
        **{"model.upper_latent_dims": (4, 2), "model.upper_widths": ((16, 8), (8,))}
    )
    saved = json.loads(json.dumps(config.to_dict()))
    restored = config_lib.from_dict(saved)
    assert restored.model.upper_widths == ((16, 8), (8,))
    flat_saved = json.loads(json.dumps(config_lib.flatten(config)))
    assert resume_conflicts(flat_saved, config_lib.flatten(config)) == []


def test_the_iwae_bound_refuses_free_bits_instead_of_ignoring_them():
    """Free bits floor the ELBO's per-dimension KL term, which the IWAE bound does not have:
    with objective.kind='iwae' they are refused in one line naming the field (the same
    value is accepted with the ELBO)."""
    config = _with("objective.free_bits", 0.25)
    config.objective.kind, config.objective.k = "iwae", 5
    with pytest.raises(config_lib.ConfigError, match="^objective.free_bits = .*kind='elbo'"):
        config_lib.validate(config)
    assert _refusal("objective.free_bits", 0.25) is None


@pytest.mark.parametrize("field, value", [("beta", 0.5), ("kl_warmup_steps", 1000)])
def test_the_iwae_bound_accepts_beta_and_its_warm_up(field, value):
    """β and its warm-up temper the IWAE bound's importance weights (an annealed bound), so
    the IWAE objective accepts them."""
    config = _with(f"objective.{field}", value)
    config.objective.kind, config.objective.k = "iwae", 5
    config_lib.validate(config)
