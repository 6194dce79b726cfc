"""The error every layer raises for a bad config value, and the one-line check that raises it.

It lives beneath everything (models validate their own section with it, ``cvae.config``
re-exports it), so a bad value is reported the same way wherever it is found.
"""

from __future__ import annotations

import math


class ConfigError(ValueError):
    """A config field has a value outside its valid range."""


def check(ok: bool, field: str, value: object, valid: str) -> None:
    """Raises ``ConfigError("FIELD = VALUE is invalid: it must be VALID")`` unless ``ok``.

    Args:
      ok: whether the value is valid.
      field: the dotted config name, e.g. ``"model.sigma0"``.
      value: the value found.
      valid: what the value must be, completing "it must be …".
    """
    if not ok:
        raise ConfigError(f"{field} = {value!r} is invalid: it must be {valid}")


def check_int(value: object, field: str, minimum: int, meaning: str = "") -> None:
    """Raises ``ConfigError`` unless ``value`` is an integer ≥ ``minimum`` (not a bool,
    not a float such as inf or NaN).

    Args:
      value: the value found.
      field: the dotted config name.
      minimum: the smallest valid value.
      meaning: what the smallest values mean, e.g. " (0 = off)".
    """
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    check(ok, field, value, f"an integer ≥ {minimum}{meaning}")


def positive_ints(values) -> bool:
    """Whether every element of ``values`` is an int > 0.

    Args:
      values: an iterable.

    Returns:
      True when all are positive ints (and for an empty iterable).
    """
    return all(isinstance(v, int) and v > 0 for v in values)


def finite(value) -> bool:
    """Whether ``value`` is a finite int or float.

    Args:
      value: anything.

    Returns:
      False for NaN, ±inf and non-numbers.
    """
    return isinstance(value, int | float) and math.isfinite(value)
