"""Input assembly: the splits of a run, checked against its config, in the form the
compiled epoch reads them — the whole train split in memory (the on-device pipeline) or a
source read as training goes (the stream) — and the evaluation sets, read batch by batch.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from cvae import config as config_lib
from cvae import data, evaluation

log = logging.getLogger("cvae")


@dataclasses.dataclass
class TrainingData:
    """The splits of a run, checked against its config, ready for the compiled epoch."""

    train_set: data.Dataset | None  # in host memory (the device pipeline); None if streamed
    eval_set: evaluation.EvalSet  # validation split, or the training split without one
    eval_split: str
    test_set: evaluation.EvalSet
    class_table: data.ClassTable | None
    preprocess: data.Preprocessor
    train_source: data.Source | None = None  # the stream pipeline's source (cvae.data.sources)
    batch_size: int = 0

    @property
    def pipeline(self) -> str:
        return "device" if self.train_set is not None else "stream"

    @property
    def _train_split(self) -> data.Dataset | data.Source:
        if self.train_set is not None:
            return self.train_set
        assert self.train_source is not None, "TrainingData holds one of the two"
        return self.train_source

    @property
    def in_memory(self) -> data.Dataset:
        """The training split held in host memory (the device pipeline)."""
        if self.train_set is None:
            raise ValueError("the training split is streamed (data.pipeline='stream')")
        return self.train_set

    @property
    def streamed(self) -> data.Source:
        """The training split's source (the stream pipeline)."""
        if self.train_source is None:
            raise ValueError("the training split is in memory (data.pipeline='device')")
        return self.train_source

    @property
    def info(self) -> data.DatasetInfo:
        return self._train_split.info

    @property
    def num_train(self) -> int:
        return len(self._train_split)

    def steps_per_epoch(self, batch_size: int) -> int:
        """Optimizer steps in one epoch: full batches only (the last partial batch is dropped).

        Args:
          batch_size: the global batch.

        Returns:
          ⌊num_train / batch_size⌋.
        """
        return self.num_train // batch_size

    def first_images(self, n: int) -> np.ndarray:
        """The first raw training images, for checks of the data against the model.

        Args:
          n: how many (fewer when the split is smaller).

        Returns:
          Raw images (n, H, W, C).
        """
        split = self._train_split
        if isinstance(split, data.Dataset):
            return split.images[:n]
        return split.read(np.arange(min(n, self.num_train)))[0]


def load_training_data(cfg, num_devices: int) -> TrainingData:
    """Loads and checks the splits of ``cfg.data`` for batches split over ``num_devices``.

    Chooses the pipeline (``choose_pipeline``), carves the validation subset, builds the
    class table for class-balanced sampling, and opens the evaluation sets (read batch by
    batch, never held whole).

    Args:
      cfg: the run's config.
      num_devices: the devices the batch is split over.

    Returns:
      The run's splits.

    Raises:
      ConfigError: a batch that does not divide over the devices or exceeds the data, or an
        option the chosen pipeline does not support.
    """
    if cfg.train.batch_size % num_devices:
        raise config_lib.ConfigError(
            f"train.batch_size = {cfg.train.batch_size} must be a multiple of the "
            f"{num_devices} devices in the mesh (or set train.num_devices)"
        )
    source = data.open_source(cfg.data, "train")
    pipeline = choose_pipeline(cfg.data, source)
    # Evaluation reads its splits batch by batch from their sources, whichever pipeline
    # trains: neither the test nor a validation split is ever held whole.
    test_source = data.role_source(cfg.data, "test")
    val_source = data.role_source(cfg.data, "validation") if cfg.data.validation_split else None
    train_set: data.Dataset | None = None
    train_source: data.Source | None = None
    carved: data.Source | None = None
    if pipeline == "device":  # the whole split in host memory (TFDS: decoded once, cached)
        train_set, carved_set = data.split_validation(
            data.in_memory(source, cfg.data), cfg.data.validation_size
        )
        carved = None if carved_set is None else data.ArraySource(carved_set)
        num_train = len(train_set)
    else:  # the same examples, read as training goes
        source = data.streaming_source(source, cfg.data)
        train_source = source
        if cfg.data.validation_size:
            train_idx, val_idx = data.validation_indices(len(source), cfg.data.validation_size)
            train_source = data.Subset(source, train_idx)
            carved = data.Subset(source, val_idx)
        num_train = len(train_source)
    val_source = val_source if val_source is not None else carved
    info = source.info
    if cfg.train.batch_size > num_train:
        raise config_lib.ConfigError(
            f"train.batch_size = {cfg.train.batch_size} exceeds the {num_train} "
            "training examples; choose a smaller batch"
        )
    binarize = cfg.data.binarize == "dynamic"
    class_table = None
    if cfg.data.class_balanced:
        if train_set is None:
            raise config_lib.ConfigError(
                "data.class_balanced = True is not supported by the streaming pipeline yet; "
                "set data.pipeline='device' (raise data.max_device_bytes if needed)"
            )
        if train_set.labels is None:
            raise config_lib.ConfigError("data.class_balanced = True needs labelled data")
        class_table = data.ClassTable.from_labels(train_set.labels, info.num_classes)
    # Without a validation split, model selection evaluates on the training set (when
    # streamed, on its first 10,000 examples).
    eval_source: data.Source
    if val_source is not None:
        eval_source, eval_split = val_source, "validation"
    elif train_set is not None:
        eval_source, eval_split = data.ArraySource(train_set), "train_eval"
    else:
        assert train_source is not None  # the stream pipeline
        eval_source = data.Subset(train_source, np.arange(min(num_train, 10000)))
        eval_split = "train_eval"
    return TrainingData(
        train_set,
        evaluation.EvalSet(eval_source, binarize),
        eval_split,
        evaluation.EvalSet(test_source, binarize),
        class_table,
        data.Preprocessor(info.pixel_range[1], binarize, cfg.data.dequantize),
        train_source,
        cfg.train.batch_size,
    )


def choose_pipeline(data_cfg, source) -> str:
    """``data.pipeline``, with "auto" resolved by the split's size against
    ``data.max_device_bytes``; "device" refuses a split over that limit."""
    nbytes = data.split_nbytes(source)
    fits = nbytes <= data_cfg.max_device_bytes
    if data_cfg.pipeline == "device" and not fits:
        raise config_lib.ConfigError(
            f"{source.info.name} needs {nbytes / 2**30:.2f} GiB on the device, over "
            f"data.max_device_bytes = {data_cfg.max_device_bytes / 2**30:.2f} GiB: set "
            "data.pipeline='stream' (or 'auto') to read it as training goes, or raise the "
            "limit if the device has room"
        )
    if data_cfg.pipeline == "auto":
        pipeline = "device" if fits else "stream"
        if pipeline == "stream":
            log.info(
                "data: %.2f GiB of training images exceed data.max_device_bytes "
                "(%.2f GiB): streaming them",
                nbytes / 2**30,
                data_cfg.max_device_bytes / 2**30,
            )
        return pipeline
    return data_cfg.pipeline
