"""What one kind of ex-post sampler declares to the registry: how it is fitted, which of a
config's fit lengths it reads, and how its files are written and read back."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np


class Sampler(Protocol):
    """A fitted ex-post density over codes: ``sample(key, n)``, ``log_prob(z)``, and the
    name of its ``kind`` (the registry's key for its files)."""

    kind: str

    def sample(self, key, num_samples: int) -> Any:
        """Codes drawn from the density.

        Args:
          key: the PRNG key of the draw.
          num_samples: how many codes.

        Returns:
          (num_samples, d) codes.
        """
        ...

    def log_prob(self, z) -> Any:
        """The log-density of codes.

        Args:
          z: codes (N, d).

        Returns:
          (N,) log-densities.
        """
        ...


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of sampler.

    Attributes:
      name: its name in ``--sampler`` ("gmm", …) and in its saved metadata.
      fit: (codes, key, *, seed, progress, labels, num_classes, budget) → a sampler; budget
        a dict of the config's ``ex_post`` fields.
      budget_fields: the fields of a config's ``ex_post`` section its fit reads (a saved
        sampler records them and is refitted when they change).
      save: (sampler, directory) → its shape (a JSON-able dict), having written its files.
      load: (directory, shape) → the sampler, bit-identical to the one saved.
      check: (codes) → None, raising ValueError in one line for codes it cannot be fitted
        to — run before a fit is announced, so a refusal is the only line a user sees.
    """

    name: str
    fit: Callable[..., Sampler]
    budget_fields: tuple[str, ...]
    save: Callable[[Any, pathlib.Path], dict]
    load: Callable[[pathlib.Path, dict], Sampler]
    check: Callable[[Any], None] = lambda codes: None


def save_standardisation(directory: pathlib.Path, shift, scale) -> None:
    """Writes the shift and scale a sampler standardised its codes with.

    Args:
      directory: the sampler's directory.
      shift: the per-dimension shift (the codes' mean).
      scale: the per-dimension scale.
    """
    np.savez(directory / "standardise.npz", shift=shift, scale=scale)


def load_standardisation(directory: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """The standardisation written by ``save_standardisation``.

    Args:
      directory: the sampler's directory.

    Returns:
      (shift, scale).
    """
    with np.load(directory / "standardise.npz") as f:
        return f["shift"], f["scale"]
