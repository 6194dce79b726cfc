"""The streaming input pipeline: training batches read from the split as they are needed
(Grain), for training sets that do not fit on the device.

The on-device path (``cvae.steps``) keeps the whole training split on the device and
gathers each batch inside the compiled epoch. The stream reads the *same* batches — the
order of epoch e is ``steps.make_epoch_indices`` of ``(data_key, e)``, computed on the
host — from a random-access ``Source``, ``chunk_steps`` batches at a time, and feeds them
to a compiled program that scans the same optimizer step over them
(``steps.build_stream_program``). Binarization, dequantization and every other random
draw stay inside that step, keyed as on the device path, so the two paths train the same
run.

Grain does the reading: ``MapDataset.range(steps).map(read one batch).batch(chunk)``,
iterated with ``ReadOptions`` threads that prefetch in order and, with
``data.stream_workers > 0``, worker processes (``mp_prefetch``) for sources whose records
are expensive to decode (TFDS images are stored encoded). Host memory is bounded by the
prefetch buffers, never by the split.

Position: a run checkpoints at epoch ends, and the order of an epoch is a function of
``(data_key, epoch)``; the data position is therefore the checkpoint's step (epoch =
step // steps_per_epoch), and ``chunks(order, start_step)`` can start inside an epoch.
There is no iterator state to save or to drift.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import pathlib

import numpy as np

from cvae import data, faults

log = logging.getLogger("cvae")


class PipelineError(RuntimeError):
    """Reading the training data failed (a worker died, a file vanished); no state of the
    half-read epoch is saved."""


@dataclasses.dataclass
class ArraySource:
    """A split already in host memory (digits, npz, or a TFDS split that fits)."""

    dataset: data.Dataset

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def info(self) -> data.DatasetInfo:
        return self.dataset.info

    def read(self, indices) -> tuple[np.ndarray, np.ndarray]:
        labels = self.dataset.labels
        return (np.asarray(self.dataset.images[indices]),
                np.zeros(len(indices), np.int32) if labels is None else labels[indices])


class TfdsSource:
    """A TFDS split read record by record from its array_record files (``tfds.data_source``);
    nothing is decoded before it is asked for."""

    def __init__(self, name: str, split: str, data_dir: str | None):
        builder, directory = data.tfds_builder(name, split, data_dir)
        self.name, self.split, self.directory = name, split, directory
        self.version = str(builder.info.version)
        self.image_key, self.label_key, num_classes = data.feature_keys(builder.info.features)
        shape = tuple(int(d) for d in builder.info.features[self.image_key].shape)
        shape = shape + (1,) if len(shape) == 2 else shape
        if None in shape or any(d <= 0 for d in shape):
            raise ValueError(f"{name}: images of varying size {shape} cannot be streamed yet; "
                             "resize them when preparing the data set")
        self.info = data.DatasetInfo(name, shape, num_classes, (0.0, 255.0))
        self._source = None

    @property
    def source(self):
        if self._source is None:  # opened lazily: also in each worker process
            self._source = data.tfds_data_source(self.name, self.split, self.directory)
        return self._source

    def __len__(self) -> int:
        return len(self.source)

    def __getstate__(self):  # worker processes reopen the files themselves
        return {**self.__dict__, "_source": None}

    def read(self, indices) -> tuple[np.ndarray, np.ndarray]:
        records = self.source.__getitems__([int(i) for i in indices])
        images = np.stack([r[self.image_key] for r in records]).reshape(
            (len(records),) + self.info.shape)
        labels = (np.asarray([r[self.label_key] for r in records], np.int32)
                  if self.label_key else np.zeros(len(records), np.int32))
        return images, labels


class DecodedSource:
    """A TFDS split decoded once into uncompressed uint8 files under ``$CVAE_CACHE_DIR``
    (images and labels ``.npy``), read by rows through read-only memory maps.

    Why: TFDS stores images encoded (PNG, JPEG); decoding MNIST ran at about 8,000 images/s
    on this 2-core CPU, a tenth of what a small model trains on. A decoded row is a copy.
    The files are written chunk by chunk (bounded memory) and renamed into place complete,
    so a crash never leaves a torn cache; the pages they occupy are the OS's file cache,
    not the process's memory.
    """

    CHUNK = 4096  # examples decoded per write while building

    def __init__(self, source, cache_dir: str | None = None):
        self.info = source.info
        root = pathlib.Path(cache_dir or os.environ.get("CVAE_CACHE_DIR", "~/.cache/cvae"))
        tag = hashlib.sha1(f"{os.path.abspath(source.directory)}|{source.split}|"
                           f"{getattr(source, 'cache_tag', '')}".encode())
        stem = f"{source.name.replace('/', '_')}-{source.version}-{tag.hexdigest()[:12]}"
        self.paths = {k: root.expanduser() / f"{stem}.{k}.npy" for k in ("images", "labels")}
        if not all(p.exists() for p in self.paths.values()):
            self._build(source)
        self._maps = None

    def _build(self, source) -> None:
        n = len(source)
        log.info("decoding %s %s once for streaming (%d examples) into %s", source.name,
                 source.split, n, self.paths["images"].parent)
        self.paths["images"].parent.mkdir(parents=True, exist_ok=True)
        staging = {k: p.with_name(f".{p.name}.{os.getpid()}.partial")
                   for k, p in self.paths.items()}
        images = np.lib.format.open_memmap(staging["images"], "w+", np.uint8,
                                           (n,) + self.info.shape)
        labels = np.lib.format.open_memmap(staging["labels"], "w+", np.int32, (n,))
        starts = range(0, n, self.CHUNK)
        reader = Stream(source, chunk_steps=1, threads=4, prefetch=8)
        order = [np.arange(s, min(s + self.CHUNK, n)) for s in starts]
        for start, rows in zip(starts, order, strict=True):
            (chunk_images, chunk_labels), = reader.chunks(np.asarray(rows)[None])
            images[start:start + len(rows)] = chunk_images[0]
            labels[start:start + len(rows)] = chunk_labels[0]
        images.flush(), labels.flush()
        del images, labels
        for key, path in self.paths.items():
            os.replace(staging[key], path)

    def __len__(self) -> int:
        return len(self._open()[1])

    def _open(self):
        if self._maps is None:  # opened lazily: also in each worker process
            self._maps = tuple(np.load(self.paths[k], mmap_mode="r")
                               for k in ("images", "labels"))
        return self._maps

    def __getstate__(self):
        return {**self.__dict__, "_maps": None}

    def read(self, indices) -> tuple[np.ndarray, np.ndarray]:
        images, labels = self._open()
        indices = np.asarray(indices)
        return np.asarray(images[indices]), np.asarray(labels[indices])


@dataclasses.dataclass
class Subset:
    """The examples ``indices`` of ``source`` (the train split less a carved validation)."""

    source: object
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def info(self) -> data.DatasetInfo:
        return self.source.info

    def read(self, indices) -> tuple[np.ndarray, np.ndarray]:
        return self.source.read(self.indices[np.asarray(indices)])


def read_dataset(source, indices=None, chunk: int = 4096) -> data.Dataset:
    """Examples of ``source`` (all of them by default) in host memory, as a Dataset, read
    ``chunk`` at a time into one preallocated array (no list of every record)."""
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
    return data.Dataset(images, labels if source.info.num_classes else None, source.info)


class Transformed:
    """``source`` with its images cropped and resized as it is read (``data.center_crop``,
    ``data.resize``); a decoded cache of it stores the transformed images."""

    def __init__(self, source, crop: int, size: int):
        self.source, self.crop, self.size = source, crop, size
        shape = data.transformed_shape(source.info.shape, crop, size)
        self.info = dataclasses.replace(source.info, shape=shape)
        self.cache_tag = f"crop{crop}-size{size}"

    def __getattr__(self, name):  # name, split, version, directory of the source
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)

    def __len__(self) -> int:
        return len(self.source)

    def read(self, indices) -> tuple[np.ndarray, np.ndarray]:
        images, labels = self.source.read(indices)
        return data.transform_images(images, self.crop, self.size), labels


def open_source(data_cfg, role: str):
    """The split of ``role`` (``data.split_of``) as a Source, transformed as the config
    says: TFDS splits are streamed from their files; digits and npz sets are small by
    nature and read into memory."""
    name = data_cfg.name
    if not data.is_tfds(name):  # npy: sets stay memory-mapped until rows are read
        return ArraySource(data.load_role(data_cfg, role))
    source = TfdsSource(name, data.split_of(data_cfg, role), data_cfg.data_dir)
    crop, size = data.transform_of(data_cfg)
    return Transformed(source, crop, size) if crop or size else source


def role_source(data_cfg, role: str):
    """The split of ``role`` (a role or any split string, as ``data.load_role`` takes)
    to read rows from: TFDS splits through their decoded cache, the carved validation
    subset of the train split as a ``Subset``. What evaluation reads, batch by batch."""
    if role == "validation" and not data.split_of(data_cfg, role):
        if not data_cfg.validation_size:
            raise data.SplitError(
                f"{data_cfg.name} has no validation split in this config: set "
                "data.validation_split (a split string) or data.validation_size")
        train = role_source(data_cfg, "train")
        return Subset(train, data.validation_indices(len(train), data_cfg.validation_size)[1])
    return streaming_source(open_source(data_cfg, role), data_cfg)


def in_memory(source, data_cfg) -> data.Dataset:
    """The whole split of ``source`` in host memory: an in-memory source as it is (not
    read a second time), a TFDS split through its decoded cache."""
    if isinstance(source, ArraySource):
        return source.dataset
    return read_dataset(streaming_source(source, data_cfg))


def streaming_source(source, data_cfg):
    """What the stream reads ``source`` through: a TFDS split decoded once into a cache
    (``DecodedSource``) unless ``data.stream_cache`` is off; other sources as they are."""
    if isinstance(source, TfdsSource | Transformed) and data_cfg.get("stream_cache", True):
        return DecodedSource(source)
    return source


def split_nbytes(source) -> int:
    """The bytes the split would take on the device as uint8 images."""
    return len(source) * math.prod(source.info.shape)


# A chunk holds at most this many bytes of images (fewer batches than chunk_steps when
# the batches are large): the read-ahead buffers, not the split, bound the host memory.
MAX_CHUNK_BYTES = 32 * 2**20


@dataclasses.dataclass
class Stream:
    """Chunks of up to ``chunk_steps`` batches (and ``MAX_CHUNK_BYTES``) of one epoch's
    order, read ahead by Grain.

    ``rows`` picks this process's share of every batch (a slice of the batch axis) in a
    multi-process run; every process reads only its own rows.
    """

    source: object
    chunk_steps: int
    threads: int = 2
    prefetch: int = 2  # chunks read ahead: with the one in use and its device copy, the
    workers: int = 0   # stream holds about 4 × MAX_CHUNK_BYTES
    rows: slice = dataclasses.field(default_factory=lambda: slice(None))

    def chunks(self, order: np.ndarray, start_step: int = 0):
        """Yields (images (n, b, H, W, C) uint8, labels (n, b) int32) for steps
        ``start_step`` … of ``order`` (steps × batch example indices), n ≤ chunk_steps."""
        import grain

        order = np.asarray(order)[start_step:, self.rows]
        source = self.source
        batch_bytes = max(1, order.shape[1] * math.prod(source.info.shape))
        steps = max(1, min(self.chunk_steps, MAX_CHUNK_BYTES // batch_bytes))
        def read_batch(step):
            faults.fault_point("stream_read")  # a reader killed here: tests/test_stream.py
            return source.read(order[step])

        dataset = grain.MapDataset.range(len(order)).map(read_batch).batch(steps)
        iterable = dataset.to_iter_dataset(grain.ReadOptions(
            num_threads=self.threads, prefetch_buffer_size=self.prefetch))
        if self.workers > 0:
            from absl import flags

            if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags; a notebook
                flags.FLAGS.mark_as_parsed()  # or a test has parsed none: take the defaults
            iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=self.workers, per_worker_buffer_size=self.prefetch))
        iterator = iter(iterable)
        while True:
            try:
                images, labels = next(iterator)
            except StopIteration:
                return
            except Exception as err:  # a dead worker, an unreadable record, …
                raise PipelineError(_failure_message(err)) from err
            yield images, labels


def _failure_message(err: Exception) -> str:
    """One line: what failed, and how to go on (the rerun resumes)."""
    first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
    if "terminated unexpectedly" in first:  # Grain's words for a reader process that died
        cause = f"a reader process died ({first.split('.')[0]}"
        cause += "; -9 is a SIGKILL, often the out-of-memory killer)" if "-9" in first else ")"
        fix = "set fewer data.stream_workers (0 reads in this process)"
    else:
        cause = ("the input pipeline failed while reading training data "
                 f"({type(err).__name__}: {first})")
        fix = "fix the data (or set data.stream_workers=0 to read in this process)"
    return f"{cause}; nothing of this epoch was saved: {fix} and rerun the same command to resume"
