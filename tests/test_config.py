"""The config schema: every numeric field refuses −1, NaN and ±inf in one line naming the
field, and accepts 0 only where the schema documents what 0 means (``ZERO_MEANS``). The
walk covers every field of ``base_config()``, so a field added later is checked too."""

import math

import pytest

from cvae import config as config_lib

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
