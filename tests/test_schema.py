"""The schema is declared once: every field of ``base_config()`` comes from one ``Field``
of the tables, and the choices, the documented zeros, each field's own check and
``--helpconfig``'s lines are generated from those tables."""

import pytest

from cvae import config as config_lib
from cvae.errors import ConfigError
from cvae.schema import Field, check_fields, defaults, help_line

pytestmark = pytest.mark.unit


def test_every_field_of_the_config_is_declared_once_with_its_default():
    flat = config_lib.flatten(config_lib.base_config())
    assert sorted(flat) == sorted(config_lib.FIELDS)
    for name, value in flat.items():
        default = config_lib.FIELDS[name].default
        assert value == config_lib._as_lists(default), name
        assert config_lib.FIELDS[name].doc, f"{name} has no documentation"


def test_choices_and_zeros_come_from_the_tables():
    assert config_lib.CHOICES["model.posterior"] == ("gaussian", "collapsed", "deterministic")
    assert config_lib.ZERO_MEANS["train.num_devices"] == "every local device"
    assert all(config_lib.FIELDS[name].type == "choice" for name in config_lib.CHOICES)


def test_helpconfig_has_a_line_per_field_with_its_doc_and_choices():
    lines = config_lib.field_help().splitlines()
    assert len(lines) == len(config_lib.FIELDS)
    arch = next(line for line in lines if line.startswith("  --config.model.arch="))
    assert "the nets" in arch and "one of: mlp, conv, resnet, ghosh" in arch
    crop = next(line for line in lines if line.startswith("  --config.data.center_crop=0"))
    assert "0: no crop" in crop


TABLE = {
    "steps": Field(3, "steps", "int", minimum=1),
    "rate": Field(0.5, "a rate", "float", minimum=0.0, below=1.0, zero="off"),
    "mode": Field("a", "a mode", "choice", choices=("a", "b")),
    "widths": Field((4,), "widths", "ints", nonempty=True),
    "on": Field(True, "a switch", "bool"),
}


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("steps", 0, "sec.steps = 0 is invalid: it must be a positive integer"),
        ("steps", 2.0, "sec.steps = 2.0 is invalid"),
        ("rate", 1.0, "sec.rate = 1.0 is invalid: it must be in [0.0, 1.0) (0: off)"),
        ("rate", float("nan"), "sec.rate = nan is invalid"),
        ("mode", "c", "sec.mode = 'c' is invalid: it must be one of ('a', 'b')"),
        ("widths", (), "sec.widths = () is invalid: it must be a non-empty tuple"),
        ("widths", (4, 0), "sec.widths = (4, 0) is invalid"),
        ("on", 1, "sec.on = 1 is invalid: it must be True or False"),
    ],
)
def test_a_fields_own_check_is_generated_and_says_what_is_valid(field, value, words):
    section = defaults(TABLE)
    check_fields("sec.", TABLE, section)  # the defaults are valid
    with section.ignore_type():
        section[field] = value
    with pytest.raises(ConfigError) as err:
        check_fields("sec.", TABLE, section)
    assert str(err.value).startswith(words) and "\n" not in str(err.value)


def test_help_line_shows_the_value_given():
    assert (
        help_line("sec.rate", TABLE["rate"], 0.25) == "  --config.sec.rate=0.25  # a rate; 0: off"
    )
