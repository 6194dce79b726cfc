"""How a config field is declared: ``Field`` — its default, its type, its valid range or
choices, what 0 means where 0 is valid, one line of documentation — and what is generated
from a table of them: the section's defaults, the one-line check of each field, and the
line ``--helpconfig`` prints.

Only rules between fields are written by hand (``cvae.config``,
``cvae.models.validation``); every rule about one field's own value comes from here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections
from ml_collections import config_dict

from cvae.errors import check

TYPES = ("int", "float", "bool", "str", "choice", "ints", "tuple", "optional_str")


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field.

    Attributes:
      default: the value of ``base_config()``.
      doc: one line: what the field is.
      type: "int", "float", "bool", "str" (``nonempty`` or any), "choice" (one of
        ``choices``), "ints" (a tuple of positive integers), "tuple" (checked by the rules
        between fields alone) or "optional_str" (None or a string).
      minimum: the smallest valid number (int, float).
      exclusive: the minimum itself is invalid (float: "> minimum").
      below: an exclusive upper bound (float).
      choices: the valid values of a "choice" field.
      zero: what 0 means, where 0 is valid (it is listed by ``--helpconfig``).
      nonempty: a "str" or "ints" field must not be empty.
      valid: the words of the refusal, where the generated ones would say less.
    """

    default: Any
    doc: str
    type: str
    minimum: float | None = None
    exclusive: bool = False
    below: float | None = None
    choices: tuple = ()
    zero: str = ""
    nonempty: bool = False
    valid: str = ""

    def __post_init__(self):
        if self.type not in TYPES:
            raise ValueError(f"a Field's type is one of {TYPES}, got {self.type!r}")

    def accepts(self, value) -> bool:
        """Whether ``value`` is valid for this field on its own.

        Args:
          value: the value found.

        Returns:
          True when it is of the field's type and in its range.
        """
        if self.type == "int":
            return _is_int(value) and value >= (self.minimum or 0)
        if self.type == "float":
            if not (isinstance(value, int | float) and not isinstance(value, bool)):
                return False
            low = self.minimum if self.minimum is not None else -math.inf
            above = value > low if self.exclusive else value >= low
            return math.isfinite(value) and above and (self.below is None or value < self.below)
        if self.type == "bool":
            return isinstance(value, bool)
        if self.type == "str":
            return isinstance(value, str) and (bool(value) or not self.nonempty)
        if self.type == "choice":
            return value in self.choices
        if self.type == "ints":
            return (
                isinstance(value, tuple | list)
                and all(_is_int(v) and v > 0 for v in value)
                and (len(value) > 0 or not self.nonempty)
            )
        if self.type == "optional_str":
            return value is None or isinstance(value, str)
        return True  # "tuple": the rules between fields check it

    def describe(self) -> str:
        """What a valid value is, completing "it must be …".

        Returns:
          The words.
        """
        if self.valid:
            return self.valid
        zero = f" (0: {self.zero})" if self.zero else ""
        if self.type == "int":
            if self.minimum == 1:
                return "a positive integer"
            return f"an integer ≥ {int(self.minimum or 0)}{zero}"
        if self.type == "float":
            bound = f"> {self.minimum}" if self.exclusive else f"≥ {self.minimum}"
            if self.below is not None:
                return f"in [{self.minimum}, {self.below}){zero}"
            return f"finite and {bound}{zero}" if self.minimum is not None else "finite"
        if self.type == "choice":
            return f"one of {self.choices}"
        if self.type == "ints":
            return f"a {'non-empty ' if self.nonempty else ''}tuple of positive integers"
        if self.type == "str":
            return "a non-empty string" if self.nonempty else "a string"
        return {"bool": "True or False", "optional_str": "None or a string"}.get(self.type, "")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def defaults(fields: dict[str, Field]) -> ml_collections.ConfigDict:
    """A section's fields at their defaults, in the table's order.

    Args:
      fields: the section's table, field name → ``Field``.

    Returns:
      The section.
    """
    section = ml_collections.ConfigDict()
    for name, field in fields.items():
        if field.type == "optional_str" and field.default is None:
            section[name] = config_dict.placeholder(str)
        else:
            section[name] = field.default
    return section


def check_fields(prefix: str, fields: dict[str, Field], section) -> None:
    """Raises ConfigError, in one line naming the field, for the first field of ``section``
    whose value is invalid on its own.

    Args:
      prefix: the section's name and a dot ("model."), or "" at the top.
      fields: the section's table.
      section: the section's values (a ConfigDict).
    """
    for name, field in fields.items():
        value = section[name]
        check(field.accepts(value), f"{prefix}{name}", value, field.describe())


def help_line(name: str, field: Field, value) -> str:
    """The line ``--helpconfig`` prints for a field: its flag at ``value``, and a comment
    with its documentation, its choices or what 0 means.

    Args:
      name: the dotted field name.
      field: its declaration.
      value: the value to show (the config's, or the default).

    Returns:
      The line.
    """
    notes = [field.doc]
    if field.choices:
        notes.append(f"one of: {', '.join(map(str, field.choices))}")
    elif field.zero:
        notes.append(f"0: {field.zero}")
    return f"  --config.{name}={value!r}  # {'; '.join(notes)}"
