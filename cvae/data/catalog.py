"""TFDS catalog data sets, read with ``tfds.data_source`` from their array_record files
(no TensorFlow, never a download).

The data directory is the config's ``data.data_dir``, else ``$TFDS_DATA_DIR``, else TFDS's
default ``~/tensorflow_datasets``. Prepare a set once, on a machine with network access:
``tfds build mnist --data_dir DIR --file_format array_record``.
"""

from __future__ import annotations

import os

import numpy as np

from cvae.data.splits import DatasetInfo, DatasetNotPreparedError, SplitError, split_message


def _tfds_candidate_dirs(data_dir: str | None) -> list[str]:
    if data_dir:
        return [data_dir]
    if os.environ.get("TFDS_DATA_DIR"):
        return [os.environ["TFDS_DATA_DIR"]]
    return [os.path.expanduser("~/tensorflow_datasets")]


def tfds_builder(name: str, split: str, data_dir: str | None):
    """The builder of a prepared TFDS data set, its split string checked.

    Args:
      name: the TFDS name.
      split: a split string, checked against the prepared splits before anything is read.
      data_dir: the TFDS directory; None for ``$TFDS_DATA_DIR`` or TFDS's default.

    Returns:
      (builder, the directory it was found in).

    Raises:
      DatasetNotPreparedError: an unknown name, or a set not prepared in any searched
        directory (the message gives the ``tfds build`` command).
      SplitError: the split does not exist.
    """
    import tensorflow_datasets as tfds

    searched = _tfds_candidate_dirs(data_dir)
    builder = None
    for directory in searched:
        try:
            candidate = tfds.builder(name, data_dir=directory)
        except Exception as err:  # unknown name, bad version string, …
            raise DatasetNotPreparedError(_unknown_dataset_message(name, err)) from None
        if candidate.is_prepared():
            builder, found_dir = candidate, directory
            break
    if builder is None:
        raise DatasetNotPreparedError(
            f"data set {name!r} is not prepared in {', '.join(searched)} and cvae never "
            f"downloads. On a machine with network access run `tfds build {name} "
            f"--data_dir DIR --file_format array_record`, then point data.data_dir (or "
            "TFDS_DATA_DIR) at DIR"
        )
    try:  # the split string against the prepared splits, before anything is read
        tfds.core.ReadInstruction.from_spec(split).to_absolute(builder.info.splits)
    except (ValueError, KeyError, AssertionError) as err:
        raise SplitError(split_message(name, split, sorted(builder.info.splits), err)) from None
    return builder, found_dir


def tfds_data_source(name: str, split: str, directory: str):
    """TFDS's random-access source over a split (array_record files; no TensorFlow).

    Args:
      name: the TFDS name.
      split: a split string.
      directory: the TFDS directory holding the set.

    Returns:
      The source (``len``, ``__getitems__``).

    Raises:
      DatasetNotPreparedError: the set is stored in a format without random access.
    """
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(name, split=split, data_dir=directory, download=False)
    except NotImplementedError as err:
        raise DatasetNotPreparedError(
            f"data set {name!r} in {directory} is not in a random-access format ({err}); "
            f"rebuild it with `tfds build {name} --file_format array_record`"
        ) from err


def _unknown_dataset_message(name: str, err: Exception) -> str:
    """One line for a name TFDS does not know; TFDS's own message lists ~250 data sets,
    which serve here only to suggest the closest names."""
    import difflib

    text = str(err).strip()
    known = [line.strip()[2:] for line in text.splitlines() if line.strip().startswith("- ")]
    if not known:  # a known set with a bad version or config
        return (
            f"data set {name!r}: {text.splitlines()[0] if text else type(err).__name__}; "
            "use a TFDS name such as 'mnist', 'digits', or 'npz:PATH'"
        )
    close = difflib.get_close_matches(name, known + ["digits"], n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return (
        f"data set {name!r} is not known to tensorflow-datasets{hint} (data.name takes a "
        "TFDS name such as 'mnist', 'digits' for the offline set, or 'npz:PATH')"
    )


def feature_keys(features):
    """The image and label features of a TFDS features dict.

    The images are the first ``Image`` feature, or else the first uint8 ``Tensor`` of rank
    2 or 3 (how a data set written without TensorFlow, which TFDS needs to encode images,
    stores its pixels); the labels are the first ``ClassLabel``.

    Args:
      features: ``builder.info.features``.

    Returns:
      (image key, label key or None, number of classes; 0 when unlabelled).

    Raises:
      ValueError: the set has no image feature.
    """
    import tensorflow_datasets as tfds

    def is_pixels(feature) -> bool:
        return (
            isinstance(feature, tfds.features.Tensor)
            and feature.np_dtype == np.uint8
            and len(feature.shape) in (2, 3)
        )

    images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)] + [
        k for k, f in features.items() if is_pixels(f)
    ]
    labels = [
        (k, f.num_classes) for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)
    ]
    if not images:
        raise ValueError(f"the TFDS data set has no image feature ({list(features)})")
    label_key, num_classes = labels[0] if labels else (None, 0)
    return images[0], label_key, num_classes


class TfdsSource:
    """A TFDS split read record by record from its array_record files (``tfds.data_source``);
    nothing is decoded before it is asked for."""

    def __init__(self, name: str, split: str, data_dir: str | None):
        builder, directory = tfds_builder(name, split, data_dir)
        self.name, self.split, self.directory = name, split, directory
        self.version = str(builder.info.version)
        self.image_key, self.label_key, num_classes = feature_keys(builder.info.features)
        shape = tuple(int(d) for d in builder.info.features[self.image_key].shape)
        shape = shape + (1,) if len(shape) == 2 else shape
        if None in shape or any(d <= 0 for d in shape):
            raise ValueError(
                f"{name}: images of varying size {shape} cannot be streamed yet; "
                "resize them when preparing the data set"
            )
        self.info = DatasetInfo(name, shape, num_classes, (0.0, 255.0))
        self._source = None

    @property
    def source(self):
        if self._source is None:  # opened lazily: also in each worker process
            self._source = tfds_data_source(self.name, self.split, self.directory)
        return self._source

    def __len__(self) -> int:
        return len(self.source)

    def __getstate__(self):  # worker processes reopen the files themselves
        return {**self.__dict__, "_source": None}

    def read(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``indices`` of the split.

        Args:
          indices: example indices (any integer array-like).

        Returns:
          (images (n, H, W, C), labels (n,) int32; zeros when the set is unlabelled).
        """
        records = self.source.__getitems__([int(i) for i in indices])
        images = np.stack([r[self.image_key] for r in records]).reshape(
            (len(records),) + self.info.shape
        )
        labels = (
            np.asarray([r[self.label_key] for r in records], np.int32)
            if self.label_key
            else np.zeros(len(records), np.int32)
        )
        return images, labels
