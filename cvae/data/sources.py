"""Sources: random-access readers of one split (``len``, ``info``, ``read(indices) →
(images, labels)``), and ``load`` / ``load_role``, which read a whole split into memory.

* ``ArraySource``: a split in host memory (digits, npz, npy memory maps);
* ``catalog.TfdsSource``: a TFDS split read record by record from its files;
* ``DecodedSource``: a TFDS split decoded once into uint8 ``.npy`` files under
  ``$CVAE_CACHE_DIR`` (default ``~/.cache/cvae``) — the one on-disk cache of a decoded
  split, used by training, evaluation, the stream and ``load`` alike;
* ``Subset`` and ``Transformed``: some rows of a source, or its images cropped and resized.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import pathlib

import numpy as np

from cvae.data import files, preprocessing
from cvae.data.catalog import TfdsSource
from cvae.data.splits import (
    Dataset,
    DatasetInfo,
    Source,
    no_validation_split,
    select,
    split_of,
    split_validation,
    validation_indices,
)
from cvae.data.stream import Stream

log = logging.getLogger("cvae")


@dataclasses.dataclass
class ArraySource:
    """A split already in host memory (digits, npz, or a TFDS split that fits)."""

    dataset: Dataset

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def info(self) -> DatasetInfo:
        return self.dataset.info

    def read(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``indices`` of the split.

        Args:
          indices: example indices (any integer array-like).

        Returns:
          (images (n, H, W, C), labels (n,) int32; zeros when the set is unlabelled).
        """
        labels = self.dataset.labels
        return (
            np.asarray(self.dataset.images[indices]),
            np.zeros(len(indices), np.int32) if labels is None else labels[indices],
        )


class DecodedSource:
    """A TFDS split decoded once into uncompressed uint8 files under ``$CVAE_CACHE_DIR``
    (images and labels ``.npy``), read by rows through read-only memory maps.

    Why: TFDS stores images encoded (PNG, JPEG), and decoding them is slower than a small
    model trains (docs/data.md has the figures). A decoded row is a copy.
    The files are written chunk by chunk (bounded memory) and renamed into place complete,
    so a crash never leaves a torn cache; the pages they occupy are the OS's file cache,
    not the process's memory.
    """

    CHUNK = 4096  # examples decoded per write while building

    def __init__(self, source, cache_dir: str | None = None):
        self.info = source.info
        root = pathlib.Path(cache_dir or os.environ.get("CVAE_CACHE_DIR", "~/.cache/cvae"))
        tag = hashlib.sha1(
            f"{os.path.abspath(source.directory)}|{source.split}|"
            f"{getattr(source, 'cache_tag', '')}".encode()
        )
        stem = f"{source.name.replace('/', '_')}-{source.version}-{tag.hexdigest()[:12]}"
        self.paths = {k: root.expanduser() / f"{stem}.{k}.npy" for k in ("images", "labels")}
        if not all(p.exists() for p in self.paths.values()):
            self._build(source)
        self._maps: tuple[np.ndarray, np.ndarray] | None = None

    def _build(self, source) -> None:
        n = len(source)
        log.info(
            "decoding %s %s once for streaming (%d examples) into %s",
            source.name,
            source.split,
            n,
            self.paths["images"].parent,
        )
        self.paths["images"].parent.mkdir(parents=True, exist_ok=True)
        staging = {
            k: p.with_name(f".{p.name}.{os.getpid()}.partial") for k, p in self.paths.items()
        }
        images = np.lib.format.open_memmap(
            staging["images"], "w+", np.uint8, (n,) + self.info.shape
        )
        labels = np.lib.format.open_memmap(staging["labels"], "w+", np.int32, (n,))
        starts = range(0, n, self.CHUNK)
        reader = Stream(source, chunk_steps=1, threads=4, prefetch=8)
        order = [np.arange(s, min(s + self.CHUNK, n)) for s in starts]
        for start, rows in zip(starts, order, strict=True):
            ((chunk_images, chunk_labels),) = reader.chunks(np.asarray(rows)[None])
            images[start : start + len(rows)] = chunk_images[0]
            labels[start : start + len(rows)] = chunk_labels[0]
        images.flush()
        labels.flush()
        del images, labels
        for key, path in self.paths.items():
            os.replace(staging[key], path)

    def __len__(self) -> int:
        return len(self._open()[1])

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        if self._maps is None:  # opened lazily: also in each worker process
            self._maps = (
                np.load(self.paths["images"], mmap_mode="r"),
                np.load(self.paths["labels"], mmap_mode="r"),
            )
        return self._maps

    def __getstate__(self):
        return {**self.__dict__, "_maps": None}

    def read(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``indices`` of the split.

        Args:
          indices: example indices (any integer array-like).

        Returns:
          (images (n, H, W, C), labels (n,) int32; zeros when the set is unlabelled).
        """
        images, labels = self._open()
        indices = np.asarray(indices)
        return np.asarray(images[indices]), np.asarray(labels[indices])


@dataclasses.dataclass
class Subset:
    """The examples ``indices`` of ``source`` (the train split less a carved validation)."""

    source: Source
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def info(self) -> DatasetInfo:
        return self.source.info

    def read(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``indices`` of the split.

        Args:
          indices: example indices (any integer array-like).

        Returns:
          (images (n, H, W, C), labels (n,) int32; zeros when the set is unlabelled).
        """
        return self.source.read(self.indices[np.asarray(indices)])


def read_dataset(source, indices=None, chunk: int = 4096) -> Dataset:
    """Examples of ``source`` in host memory, as a Dataset.

    They are read ``chunk`` at a time into one preallocated array (no list of every record).

    Args:
      source: a source (``len``, ``info``, ``read(indices)``).
      indices: the examples to read; None for all of them.
      chunk: examples read per call of ``source.read``.

    Returns:
      The examples, labels None when the set is unlabelled.
    """
    indices = np.arange(len(source)) if indices is None else np.asarray(indices)
    images, labels = None, np.empty(len(indices), np.int32)
    for start in range(0, len(indices), chunk):
        rows = slice(start, start + chunk)
        chunk_images, labels[rows] = source.read(indices[rows])
        if images is None:  # uint8 pixels, or floats in [0, 1] (npz)
            images = np.empty((len(indices),) + chunk_images.shape[1:], chunk_images.dtype)
        images[rows] = chunk_images
    if images is None:
        images = np.empty((0,) + source.info.shape, np.uint8)
    return Dataset(images, labels if source.info.num_classes else None, source.info)


class Transformed:
    """``source`` with its images cropped and resized as it is read (``data.center_crop``,
    ``data.resize``); a decoded cache of it stores the transformed images."""

    def __init__(self, source, crop: int, size: int):
        self.source, self.crop, self.size = source, crop, size
        shape = preprocessing.transformed_shape(source.info.shape, crop, size)
        self.info = dataclasses.replace(source.info, shape=shape)
        self.cache_tag = f"crop{crop}-size{size}"

    def __getattr__(self, name):  # name, split, version, directory of the source
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)

    def __len__(self) -> int:
        return len(self.source)

    def read(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``indices`` of the split.

        Args:
          indices: example indices (any integer array-like).

        Returns:
          (images (n, H, W, C), labels (n,) int32; zeros when the set is unlabelled).
        """
        images, labels = self.source.read(indices)
        return preprocessing.transform_images(images, self.crop, self.size), labels


def load(name: str, split: str, data_dir: str | None = None) -> Dataset:
    """Loads one split of a data set into host memory.

    A TFDS split is read through its decoded cache (``DecodedSource``), the one every reader
    shares; an ``npy:`` set's images stay memory-mapped until indexed.

    Args:
      name: a TFDS name ("mnist"), "digits", "npz:PATH" or "npy:DIR".
      split: a TFDS split string: a name, a slice ("train[:90%]") or a sum ("train+test").
      data_dir: the TFDS directory; None for ``$TFDS_DATA_DIR`` or TFDS's default.

    Returns:
      The split: images N×H×W×C, labels or None, its info.

    Raises:
      DatasetNotPreparedError: a TFDS set is not prepared in any searched directory.
      SplitError: the split does not exist or cannot be parsed.
    """
    if name == "digits":
        return select(files.digits_splits(), split, name)
    if name.startswith("npz:"):
        return select(files.npz_splits(name[4:]), split, name)
    if name.startswith("npy:"):
        return select(files.npy_splits(name[4:]), split, name)
    # A TFDS split is read through its decoded cache, the one every reader shares.
    return read_dataset(DecodedSource(TfdsSource(name, split, data_dir)))


def is_tfds(name: str) -> bool:
    """Whether ``name`` is a TFDS data set.

    Args:
      name: a ``data.name`` value.

    Returns:
      False for "digits", "npz:…" and "npy:…"; True otherwise.
    """
    return name != "digits" and not name.startswith(("npz:", "npy:"))


def load_role(data_cfg, role: str) -> Dataset:
    """The split a config gives a role, in host memory, transformed as the config says.

    What training, evaluation and sampling read: ``data.center_crop`` and ``data.resize``
    applied, TFDS splits through their decoded (transformed) cache.

    Args:
      data_cfg: the config's ``data`` section.
      role: "train", "validation" or "test" (``split_of``), or any split string;
        "validation" without a validation split gives the carved subset.

    Returns:
      The split.

    Raises:
      SplitError: the config has no validation split and carves none.
    """
    split = split_of(data_cfg, role)
    if role == "validation" and not split:
        train = load_role(data_cfg, "train")
        validation = split_validation(train, data_cfg.validation_size)[1]
        if validation is None:
            raise no_validation_split(data_cfg)
        return validation
    if is_tfds(data_cfg.name):
        # A TFDS split is read through the stream's source — decoded (and cropped and
        # resized) once into its cache — so its full-resolution images are never all
        # held in memory at once.
        return in_memory(open_source(data_cfg, role), data_cfg)
    loaded = load(data_cfg.name, split, data_cfg.data_dir)
    crop, size = preprocessing.transform_of(data_cfg)
    if not (crop or size):
        return loaded
    images = preprocessing.transform_images(loaded.images, crop, size)
    info = dataclasses.replace(loaded.info, shape=tuple(int(d) for d in images.shape[1:]))
    return Dataset(images, loaded.labels, info)


def open_source(data_cfg, role: str):
    """The split of a role as a source, transformed as the config says.

    TFDS splits are read record by record from their files (``TfdsSource``); digits, npz
    and npy sets are read into memory (npy stays memory-mapped).

    Args:
      data_cfg: the config's ``data`` section.
      role: a role or split string (``split_of``).

    Returns:
      An ``ArraySource``, a ``TfdsSource`` or a ``Transformed`` one.
    """
    name = data_cfg.name
    if not is_tfds(name):  # npy: sets stay memory-mapped until rows are read
        return ArraySource(load_role(data_cfg, role))
    source = TfdsSource(name, split_of(data_cfg, role), data_cfg.data_dir)
    crop, size = preprocessing.transform_of(data_cfg)
    return Transformed(source, crop, size) if crop or size else source


def role_source(data_cfg, role: str):
    """The split of a role to read rows from, batch by batch: what evaluation reads.

    TFDS splits come through their decoded cache; the carved validation subset of the train
    split is a ``Subset``.

    Args:
      data_cfg: the config's ``data`` section.
      role: a role or split string, as ``load_role`` takes.

    Returns:
      A source.

    Raises:
      SplitError: a validation split is asked of a config that has none.
    """
    if role == "validation" and not split_of(data_cfg, role):
        if not data_cfg.validation_size:
            raise no_validation_split(data_cfg)
        train = role_source(data_cfg, "train")
        return Subset(train, validation_indices(len(train), data_cfg.validation_size)[1])
    return streaming_source(open_source(data_cfg, role), data_cfg)


def in_memory(source, data_cfg) -> Dataset:
    """The whole split of ``source`` in host memory.

    An in-memory source is returned as it is (not read a second time); a TFDS split comes
    through its decoded cache.

    Args:
      source: a source from ``open_source``.
      data_cfg: the config's ``data`` section (``data.stream_cache``).

    Returns:
      The split.
    """
    if isinstance(source, ArraySource):
        return source.dataset
    return read_dataset(streaming_source(source, data_cfg))


def streaming_source(source, data_cfg):
    """What the stream reads ``source`` through.

    Args:
      source: a source from ``open_source``.
      data_cfg: the config's ``data`` section.

    Returns:
      A TFDS split decoded once into a cache (``DecodedSource``) unless
      ``data.stream_cache`` is off; any other source as it is.
    """
    if isinstance(source, TfdsSource | Transformed) and data_cfg.get("stream_cache", True):
        return DecodedSource(source)
    return source


def split_nbytes(source) -> int:
    """The bytes the split would take on the device as uint8 images.

    Args:
      source: a source.

    Returns:
      N·H·W·C.
    """
    return len(source) * math.prod(source.info.shape)
