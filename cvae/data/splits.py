"""Splits: what a data set hands out (``Dataset``, ``DatasetInfo``), the split strings that
select from it, and the fixed validation subset carved from a train split.

Splits are TFDS split strings for every source: a name (``"train"``, ``"validation"``),
a slice (``"train[:90%]"``, ``"train[-5000:]"``) or a sum (``"train+test[:100]"``), parsed
by TFDS's own ``ReadInstruction``. A config names the split of each role
(``data.train_split``, ``data.validation_split``, ``data.test_split``; ``split_of``); a
split that does not exist fails in one line naming those that do (``SplitError``).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import types
from typing import NamedTuple, Protocol

import numpy as np

VALIDATION_SPLIT_SEED = 0
ROLES = ("train", "validation", "test")


class DatasetNotPreparedError(ValueError):
    """A TFDS data set is not prepared in any searched directory (and we never download)."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know of a data set: image shape, classes, raw pixel range."""

    name: str
    shape: tuple[int, ...]  # (H, W, C)
    num_classes: int  # 0 when unlabelled
    pixel_range: tuple[float, float]  # range of the raw values in ``images``


class Source(Protocol):
    """What every random-access source of one split offers (``cvae.data.sources``)."""

    @property
    def info(self) -> DatasetInfo: ...

    def __len__(self) -> int: ...

    def read(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``indices`` of the split.

        Args:
          indices: example indices (any integer array-like).

        Returns:
          (images (n, H, W, C), labels (n,) int32; zeros when the set is unlabelled).
        """
        ...


class Dataset(NamedTuple):
    """One split in host memory: images, labels (None when unlabelled) and their info."""

    images: np.ndarray  # N×H×W×C
    labels: np.ndarray | None  # N, int32
    info: DatasetInfo

    def __len__(self) -> int:
        return len(self.images)


class SplitError(ValueError):
    """A split string names a split the data set does not have, or cannot be parsed."""


def split_of(data_cfg, role: str) -> str:
    """The split string a config gives a role.

    Args:
      data_cfg: the config's ``data`` section.
      role: "train", "validation" or "test"; any other string is taken as a split string
        itself.

    Returns:
      The split string; empty for "validation" when the validation examples are carved from
      the train split (``data.validation_size``).
    """
    if role in ROLES:
        return data_cfg.get(f"{role}_split", role if role != "validation" else "")
    return role


def no_validation_split(data_cfg) -> SplitError:
    """The error for asking a config without a validation split for one.

    Args:
      data_cfg: the config's ``data`` section.

    Returns:
      The ``SplitError`` to raise, naming the two fields that give a validation split.
    """
    return SplitError(
        f"{data_cfg.name} has no validation split in this config: set "
        "data.validation_split (a split string) or data.validation_size"
    )


def select(splits: dict, spec: str, name: str) -> Dataset:
    """The examples a split string picks from the splits of a data set.

    Args:
      splits: split name → a function reading that split (called only for the splits the
        string names).
      spec: a TFDS split string.
      name: the data set's name, for messages.

    Returns:
      The selected examples, concatenated in the order the string names them.

    Raises:
      SplitError: the string names a split that does not exist, cannot be parsed, or
        selects nothing.
    """
    import tensorflow_datasets as tfds

    read = {k: functools.cache(reader) for k, reader in splits.items()}

    class Sizes(collections.abc.Mapping):  # what ReadInstruction.to_absolute reads
        def __getitem__(self, split):
            return types.SimpleNamespace(num_examples=len(read[split]()))

        def __iter__(self):
            return iter(read)

        def __len__(self):
            return len(read)

    try:
        parts = tfds.core.ReadInstruction.from_spec(spec).to_absolute(Sizes())
    except (ValueError, KeyError, AssertionError) as err:
        raise SplitError(split_message(name, spec, sorted(splits), err)) from None
    pieces = []
    for part in parts:
        whole = read[part.splitname]()
        rows = slice(part.from_, part.to)
        pieces.append(
            Dataset(
                whole.images[rows], None if whole.labels is None else whole.labels[rows], whole.info
            )
        )
    if any(len(piece) == 0 for piece in pieces):
        raise SplitError(f"split {spec!r} of {name} selects no examples; widen the slice")
    if len(pieces) == 1:
        return pieces[0]
    labels = (
        None
        if any(p.labels is None for p in pieces)
        else np.concatenate([p.labels for p in pieces])
    )
    return Dataset(np.concatenate([p.images for p in pieces]), labels, pieces[0].info)


def split_message(name: str, spec: str, known, err) -> str:
    """One line for a split string that cannot be read, naming the splits there are.

    Args:
      name: the data set's name.
      spec: the split string.
      known: the names of its splits.
      err: the error TFDS's parser raised.

    Returns:
      The message.
    """
    text = str(err).strip().strip("'\"")
    first = text.splitlines()[0].rstrip(".") if text else type(err).__name__
    return (
        f"data set {name!r}: cannot read split {spec!r} ({first}); its splits are "
        f"{', '.join(map(repr, known))}, and a split may be sliced or summed, e.g. "
        "'train[:90%]' or 'train+test'"
    )


def validation_indices(num_examples: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The indices of ``split_validation``'s two parts, each sorted.

    Args:
      num_examples: the size of the train split.
      size: the number of validation examples.

    Returns:
      (train indices, validation indices): a fixed permutation (seed
      ``VALIDATION_SPLIT_SEED``), the same for every run seed.

    Raises:
      ValueError: ``size`` leaves no training example.
    """
    if size >= num_examples:
        raise ValueError(
            f"data.validation_size = {size} leaves no training data "
            f"({num_examples} training examples); choose fewer"
        )
    order = np.random.default_rng(VALIDATION_SPLIT_SEED).permutation(num_examples)
    return np.sort(order[size:]), np.sort(order[:size])


def split_validation(dataset: Dataset, size: int) -> tuple[Dataset, Dataset | None]:
    """A train split cut into training and a fixed validation subset.

    Args:
      dataset: the train split.
      size: the number of validation examples; 0 for none.

    Returns:
      (train, validation), validation None when ``size`` is 0.
    """
    if size == 0:
        return dataset, None
    train, val = validation_indices(len(dataset), size)
    pick = lambda idx: Dataset(
        dataset.images[idx], None if dataset.labels is None else dataset.labels[idx], dataset.info
    )
    return pick(train), pick(val)
