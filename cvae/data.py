"""Data: sources, preprocessing, and the on-device batching used inside compiled epochs.

Sources (``load(name, split, data_dir=None)`` → ``Dataset(images, labels, info)``, images
N×H×W×C, uint8 where the data are 8-bit):

* any TFDS image data set, read with ``tfds.data_source`` (array_record; no TensorFlow);
  the data directory is the argument, else ``$TFDS_DATA_DIR``, else TFDS's default.
  Decoded arrays are cached under ``$CVAE_CACHE_DIR`` (default ``~/.cache/cvae``).
* ``digits``: scikit-learn's bundled 8×8 digits, offline anywhere. Its 0–16 intensities
  are mapped to 0–255 (round(v·255/16)); the split is fixed: a permutation drawn by
  ``numpy.random.default_rng(0)``, first 1,500 images train, remaining 297 test.
* ``npy:DIR``: ``x.npy`` (uint8 N×H×W×C), optional ``y.npy``, and ``x_<split>.npy`` /
  ``y_<split>.npy``: memory-mapped, so a set larger than memory can be streamed from it.
* ``npz:PATH``: ``x`` (N×H×W[×C], uint8 0–255 or float in [0, 1]) and optional ``y``
  for the train split; ``x_<split>`` / ``y_<split>`` for any other (``x_test``, …).

Splits are TFDS split strings for every source: a name (``"train"``, ``"validation"``),
a slice (``"train[:90%]"``, ``"train[-5000:]"``) or a sum (``"train+test[:100]"``), parsed
by TFDS's own ``ReadInstruction``. A config names the split of each role
(``data.train_split``, ``data.validation_split``, ``data.test_split``; ``load_role``); a
split that does not exist fails in one line naming those that do (``SplitError``).

Preprocessing: images are scaled to [0, 1]; training draws a fresh binarization
x ~ Bernoulli(intensity) at every use (``dynamic_binarize``); evaluation binarizes once,
with a fixed generator (``numpy.random.default_rng(0)``, ``u < x``) so that scores are
comparable across runs and seeds; continuous likelihoods may use uniform dequantization.

Batching rule: a training epoch uses ⌊N / batch⌋ full batches (the last partial batch is
dropped; a fresh permutation each epoch means every example is still seen); evaluation
covers every example, padding the last batch and masking the padding out.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import hashlib
import os
import pathlib
import tempfile
import types
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DIGITS_TRAIN_SIZE = 1500
EVAL_BINARIZATION_SEED = 0
VALIDATION_SPLIT_SEED = 0


class DatasetNotPreparedError(ValueError):
    """A TFDS data set is not prepared in any searched directory (and we never download)."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know of a data set: image shape, classes, raw pixel range."""
    name: str
    shape: tuple[int, int, int]  # H, W, C
    num_classes: int  # 0 when unlabelled
    pixel_range: tuple[float, float]  # range of the raw values in ``images``


class Dataset(NamedTuple):
    """One split in host memory: images, labels (None when unlabelled) and their info."""
    images: np.ndarray  # N×H×W×C
    labels: np.ndarray | None  # N, int32
    info: DatasetInfo

    def __len__(self) -> int:
        return len(self.images)


class SplitError(ValueError):
    """A split string names a split the data set does not have, or cannot be parsed."""


ROLES = ("train", "validation", "test")


def load(name: str, split: str, data_dir: str | None = None) -> Dataset:
    """Loads ``split`` (a TFDS split string) of the data set called ``name`` into host
    memory (an ``npy:`` set's images stay memory-mapped until indexed)."""
    if name == "digits":
        return _select(_digits_splits(), split, name)
    if name.startswith("npz:"):
        return _select(_npz_splits(name[4:]), split, name)
    if name.startswith("npy:"):
        return _select(_npy_splits(name[4:]), split, name)
    return _load_tfds(name, split, data_dir)


def is_tfds(name: str) -> bool:
    """Whether ``name`` is a TFDS data set (not digits, npz: or npy:)."""
    return name != "digits" and not name.startswith(("npz:", "npy:"))


def split_of(data_cfg, role: str) -> str:
    """The split string a config gives ``role`` (train | validation | test); any other
    string is taken as a split string itself. An empty ``data.validation_split`` means the
    validation examples are carved from the train split (``data.validation_size``)."""
    if role in ROLES:
        return data_cfg.get(f"{role}_split", role if role != "validation" else "")
    return role


def load_role(data_cfg, role: str) -> Dataset:
    """The split of ``role`` (see ``split_of``) of the config's data set, its images
    transformed as the config says (``data.center_crop``, ``data.resize``): what training,
    evaluation and sampling read. ``role = "validation"`` without a validation split
    gives the carved subset."""
    split = split_of(data_cfg, role)
    if role == "validation" and not split:
        train = load_role(data_cfg, "train")
        validation = split_validation(train, data_cfg.validation_size)[1]
        if validation is None:
            raise SplitError(f"{data_cfg.name} has no validation split in this config: set "
                             "data.validation_split (a split string) or data.validation_size")
        return validation
    if is_tfds(data_cfg.name):
        # A TFDS split is read through the stream's source — decoded (and cropped and
        # resized) once into its cache — so its full-resolution images are never all
        # held in memory at once.
        from cvae import stream

        return stream.in_memory(stream.open_source(data_cfg, role), data_cfg)
    loaded = load(data_cfg.name, split, data_cfg.data_dir)
    crop, size = transform_of(data_cfg)
    if not (crop or size):
        return loaded
    images = transform_images(loaded.images, crop, size)
    info = dataclasses.replace(loaded.info, shape=tuple(int(d) for d in images.shape[1:]))
    return Dataset(images, loaded.labels, info)


def transform_of(data_cfg) -> tuple[int, int]:
    """(center crop side, resized side) of a config; 0 = none."""
    return int(data_cfg.get("center_crop", 0)), int(data_cfg.get("resize", 0))


def transformed_shape(shape, crop: int, size: int) -> tuple[int, int, int]:
    """The H×W×C of images of ``shape`` after ``transform_images``; one-line errors for a
    crop larger than the images."""
    height, width, depth = shape
    if crop:
        if crop > min(height, width):
            raise ValueError(f"data.center_crop = {crop} is larger than the {height}×{width} "
                             f"images; choose at most {min(height, width)} (or 0 for none)")
        height = width = crop
    if size:
        height = width = size
    return height, width, depth


def transform_images(images: np.ndarray, crop: int, size: int) -> np.ndarray:
    """A centred square crop of side ``crop``, then a resize to ``size``×``size`` (Pillow's
    antialiased bicubic filter, on the uint8 pixels); 0 skips a step."""
    height, width, depth = transformed_shape(images.shape[1:], crop, size)
    if crop:
        top, left = (images.shape[1] - crop) // 2, (images.shape[2] - crop) // 2
        images = images[:, top:top + crop, left:left + crop]
    if size and images.shape[1:3] != (size, size):
        from PIL import Image

        if images.dtype != np.uint8:
            raise ValueError("data.resize works on 8-bit images; this data set's are "
                             f"{images.dtype}")
        resized = [np.asarray(Image.fromarray(im[..., 0] if depth == 1 else im).resize(
            (size, size), Image.Resampling.BICUBIC)) for im in images]
        images = np.stack(resized).reshape(len(images), size, size, depth)
    return images


def _select(splits: dict, spec: str, name: str) -> Dataset:
    """The examples ``spec`` (a TFDS split string) picks from ``splits``: split name → a
    function reading that split (called only for the splits ``spec`` names)."""
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
        raise SplitError(_split_message(name, spec, sorted(splits), err)) from None
    pieces = []
    for part in parts:
        whole = read[part.splitname]()
        rows = slice(part.from_, part.to)
        pieces.append(Dataset(whole.images[rows],
                              None if whole.labels is None else whole.labels[rows], whole.info))
    if any(len(piece) == 0 for piece in pieces):
        raise SplitError(f"split {spec!r} of {name} selects no examples; widen the slice")
    if len(pieces) == 1:
        return pieces[0]
    labels = (None if any(p.labels is None for p in pieces)
              else np.concatenate([p.labels for p in pieces]))
    return Dataset(np.concatenate([p.images for p in pieces]), labels, pieces[0].info)


def _split_message(name: str, spec: str, known, err) -> str:
    text = str(err).strip().strip("'\"")
    first = text.splitlines()[0].rstrip(".") if text else type(err).__name__
    return (f"data set {name!r}: cannot read split {spec!r} ({first}); its splits are "
            f"{', '.join(map(repr, known))}, and a split may be sliced or summed, e.g. "
            "'train[:90%]' or 'train+test'")


def _digits_splits() -> dict:
    """digits' fixed split: a permutation by default_rng(0), 1,500 train, 297 test."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(0).permutation(len(bunch.images))
    chosen = {"train": order[:DIGITS_TRAIN_SIZE], "test": order[DIGITS_TRAIN_SIZE:]}
    images = np.round(bunch.images * 255.0 / 16.0).astype(np.uint8)[..., None]
    info = DatasetInfo("digits", (8, 8, 1), 10, (0.0, 255.0))
    return {split: (lambda idx=idx: Dataset(images[idx], bunch.target[idx].astype(np.int32),
                                            info))
            for split, idx in chosen.items()}


def _npz_splits(path: str) -> dict:
    """Every split of an npz data set: ``x``/``y`` is "train", ``x_<s>``/``y_<s>`` is s."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise ValueError(f"npz data set {path!r}: no such file")
    try:
        archive = np.load(file, allow_pickle=False)
    except Exception as err:  # a truncated or non-npz file
        raise ValueError(f"npz data set {path!r} could not be read ({err}); save it with "
                         "numpy.savez(path, x=images, y=labels)") from err
    names = ["train" if k == "x" else k[2:] for k in archive.files
             if k == "x" or k.startswith("x_")]
    if not names:
        raise ValueError(f"npz data set {path!r} has no array 'x' nor any 'x_<split>' (it "
                         f"has {sorted(archive.files)}); the train split is 'x' (and 'y'), "
                         "other splits 'x_<split>'")
    return {name: functools.partial(_npz_split, archive, path, name) for name in names}


def _npy_splits(path: str) -> dict:
    """Every split of an ``npy:DIR`` set: ``x.npy``/``y.npy`` is "train", ``x_<s>.npy`` /
    ``y_<s>.npy`` is s; uint8 N×H×W×C images, memory-mapped (read only where indexed)."""
    directory = pathlib.Path(path)
    if not directory.is_dir():
        raise ValueError(f"npy data set {path!r}: no such directory (it holds x.npy, "
                         "optional y.npy, and x_<split>.npy for other splits)")
    files = {("train" if f.stem == "x" else f.stem[2:]): f for f in directory.glob("x*.npy")
             if f.stem == "x" or f.stem.startswith("x_")}
    if not files:
        raise ValueError(f"npy data set {path!r} has no x.npy nor any x_<split>.npy")

    def read(split: str) -> Dataset:
        try:
            x = np.load(files[split], mmap_mode="r")
        except Exception as err:
            raise ValueError(f"npy data set {path!r}: {files[split].name} could not be read "
                             f"({err}); save it with numpy.save") from err
        if x.dtype != np.uint8 or x.ndim != 4 or len(x) == 0:
            raise ValueError(f"npy data set {path!r}: {files[split].name} must be uint8 "
                             f"N×H×W×C with N > 0, got {x.dtype} {x.shape}")
        labels_file = files[split].with_name(files[split].name.replace("x", "y", 1))
        labels, num_classes = None, 0
        if labels_file.exists():
            labels = np.asarray(np.load(labels_file), np.int32)
            if labels.shape != (len(x),) or labels.min() < 0:
                raise ValueError(f"npy data set {path!r}: {labels_file.name} must hold "
                                 f"{len(x)} integer labels ≥ 0, got shape {labels.shape}")
            num_classes = int(labels.max()) + 1
        info = DatasetInfo(f"npy:{path}", tuple(int(s) for s in x.shape[1:]), num_classes,
                           (0.0, 255.0))
        return Dataset(x, labels, info)

    return {split: functools.partial(read, split) for split in files}


def _npz_split(archive, path: str, split: str) -> Dataset:
    x_key, y_key = ("x", "y") if split == "train" else (f"x_{split}", f"y_{split}")
    x = archive[x_key]
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or len(x) == 0:
        raise ValueError(f"npz data set {path!r}: {x_key!r} must be N×H×W or N×H×W×C with "
                         f"N > 0, got shape {x.shape}")
    if x.dtype == np.uint8:
        pixel_range = (0.0, 255.0)
    elif np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise ValueError(f"npz data set {path!r}: float {x_key!r} must be finite and in "
                             f"[0, 1], got [{np.nanmin(x):g}, {np.nanmax(x):g}]")
        x, pixel_range = x.astype(np.float32), (0.0, 1.0)
    else:
        raise ValueError(f"npz data set {path!r}: {x_key!r} must be uint8 or float, "
                         f"got {x.dtype}")
    labels, num_classes = None, 0
    if y_key in archive:
        y = archive[y_key]
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
            raise ValueError(f"npz data set {path!r}: {y_key!r} must hold {len(x)} integer "
                             f"labels ≥ 0, got shape {y.shape} and dtype {y.dtype}")
        labels, num_classes = y.astype(np.int32), int(y.max()) + 1
        if "num_classes" in archive:
            num_classes = int(archive["num_classes"])
    info = DatasetInfo(f"npz:{path}", tuple(int(s) for s in x.shape[1:]), num_classes,
                       pixel_range)
    return Dataset(x, labels, info)


def _tfds_candidate_dirs(data_dir: str | None) -> list[str]:
    if data_dir:
        return [data_dir]
    if os.environ.get("TFDS_DATA_DIR"):
        return [os.environ["TFDS_DATA_DIR"]]
    return [os.path.expanduser("~/tensorflow_datasets")]


def _cache_path(name: str, version: str, split: str, data_dir: str) -> pathlib.Path:
    root = pathlib.Path(os.environ.get("CVAE_CACHE_DIR", "~/.cache/cvae")).expanduser()
    tag = hashlib.sha1(f"{os.path.abspath(data_dir)}|{split}".encode()).hexdigest()[:12]
    return root / f"{name.replace('/', '_')}-{version}-{tag}.npz"


def _load_tfds(name: str, split: str, data_dir: str | None) -> Dataset:
    builder, found_dir = tfds_builder(name, split, data_dir)
    image_key, label_key, num_classes = feature_keys(builder.info.features)
    cache = _cache_path(name, str(builder.info.version), split, found_dir)
    if cache.exists():
        with np.load(cache) as cached:
            images = cached["images"]
            labels = cached["labels"] if label_key else None
    else:
        source = tfds_data_source(name, split, found_dir)
        records = source.__getitems__(list(range(len(source))))
        images = np.stack([r[image_key] for r in records])
        labels = (np.asarray([r[label_key] for r in records], np.int32) if label_key
                  else np.zeros(0, np.int32))
        _atomic_savez(cache, images=images, labels=labels)
    if images.ndim == 3:
        images = images[..., None]
    info = DatasetInfo(name, tuple(int(s) for s in images.shape[1:]), num_classes,
                       (0.0, 255.0) if images.dtype == np.uint8 else (0.0, 1.0))
    return Dataset(images, labels if label_key else None, info)


def tfds_builder(name: str, split: str, data_dir: str | None):
    """(builder, directory) of the prepared TFDS data set ``name``, its ``split`` string
    checked against the prepared splits; one-line errors for what is missing."""
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
            "TFDS_DATA_DIR) at DIR")
    try:  # the split string against the prepared splits, before anything is read
        tfds.core.ReadInstruction.from_spec(split).to_absolute(builder.info.splits)
    except (ValueError, KeyError, AssertionError) as err:
        raise SplitError(_split_message(name, split, sorted(builder.info.splits), err)) from None
    return builder, found_dir


def tfds_data_source(name: str, split: str, directory: str):
    """TFDS's random-access source over ``split`` (array_record files; no TensorFlow)."""
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(name, split=split, data_dir=directory, download=False)
    except NotImplementedError as err:
        raise DatasetNotPreparedError(
            f"data set {name!r} in {directory} is not in a random-access format ({err}); "
            f"rebuild it with `tfds build {name} --file_format array_record`") from err


def _unknown_dataset_message(name: str, err: Exception) -> str:
    """One line for a name TFDS does not know; TFDS's own message lists ~250 data sets,
    which serve here only to suggest the closest names."""
    import difflib

    text = str(err).strip()
    known = [line.strip()[2:] for line in text.splitlines() if line.strip().startswith("- ")]
    if not known:  # a known set with a bad version or config
        return (f"data set {name!r}: {text.splitlines()[0] if text else type(err).__name__}; "
                "use a TFDS name such as 'mnist', 'digits', or 'npz:PATH'")
    close = difflib.get_close_matches(name, known + ["digits"], n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return (f"data set {name!r} is not known to tensorflow-datasets{hint} (data.name takes a "
            "TFDS name such as 'mnist', 'digits' for the offline set, or 'npz:PATH')")


def feature_keys(features):
    """(image key, label key or None, number of classes) of a TFDS features dict.

    The images are the first ``Image`` feature, or else the first uint8 ``Tensor`` of rank
    2 or 3 (how a data set written without TensorFlow, which TFDS needs to encode images,
    stores its pixels); the labels are the first ``ClassLabel``."""
    import tensorflow_datasets as tfds

    def is_pixels(feature) -> bool:
        return (isinstance(feature, tfds.features.Tensor) and feature.np_dtype == np.uint8
                and len(feature.shape) in (2, 3))

    images = ([k for k, f in features.items() if isinstance(f, tfds.features.Image)]
              + [k for k, f in features.items() if is_pixels(f)])
    labels = [(k, f.num_classes) for k, f in features.items()
              if isinstance(f, tfds.features.ClassLabel)]
    if not images:
        raise ValueError(f"the TFDS data set has no image feature ({list(features)})")
    label_key, num_classes = labels[0] if labels else (None, 0)
    return images[0], label_key, num_classes


def _atomic_savez(path: pathlib.Path, **arrays) -> None:
    """Writes to a temporary file and renames it, so a crash never leaves a torn cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as f:
            np.savez(f, **arrays)
        os.replace(f.name, path)
    except OSError:
        pass  # the cache is an optimisation: an unwritable cache directory is not an error


# --------------------------------------------------------------------------- splits


def validation_indices(num_examples: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices of ``split_validation``, sorted."""
    if size >= num_examples:
        raise ValueError(f"data.validation_size = {size} leaves no training data "
                         f"({num_examples} training examples); choose fewer")
    order = np.random.default_rng(VALIDATION_SPLIT_SEED).permutation(num_examples)
    return np.sort(order[size:]), np.sort(order[:size])


def split_validation(dataset: Dataset, size: int) -> tuple[Dataset, Dataset | None]:
    """(train, validation): a fixed subset of ``size`` examples, the same for every seed."""
    if size == 0:
        return dataset, None
    train, val = validation_indices(len(dataset), size)
    pick = lambda idx: Dataset(dataset.images[idx],
                               None if dataset.labels is None else dataset.labels[idx],
                               dataset.info)
    return pick(train), pick(val)


# ---------------------------------------------------------------------- preprocessing


def to_unit_interval(raw, pixel_max: float):
    """Raw pixels → float32 in [0, 1]."""
    return raw.astype(jnp.float32) / pixel_max


def dynamic_binarize(key, x01):
    """A fresh draw x_b ~ Bernoulli(x01) (Salakhutdinov & Murray's dynamic binarization).

    x_b = [u < 2¹⁶·x01] with u uniform on {0, …, 2¹⁶ − 1}: P(x_b = 1) = ⌈2¹⁶·x01⌉ / 2¹⁶,
    within 1.6·10⁻⁵ of x01 and exact at 0 and 1 (``jax.random.bernoulli`` compares a
    23-bit float instead). Each 32-bit threefry word gives two pixels their u, which
    halves the generator's work — the largest non-matmul cost of a small model's step
    (0.45 → 0.24 ms at 128 × 784 pixels on XLA:CPU). Leading axis = examples: each
    example's pixels come from its own row of words, so a batch-sharded input draws the
    same bits on any number of devices.
    """
    x01 = jnp.asarray(x01)
    rows = x01.reshape(x01.shape[0], -1) if x01.ndim > 1 else x01[None]
    pixels = rows.shape[1]
    words = jax.random.bits(key, (rows.shape[0], (pixels + 1) // 2), jnp.uint32)
    u16 = jnp.concatenate([words >> 16, words & 0xFFFF], axis=1)[:, :pixels]
    drawn = (u16.astype(jnp.float32) < rows * 65536.0).astype(jnp.float32)
    return drawn.reshape(x01.shape)


def dequantize(key, raw_uint8):
    """Uniform dequantization (x + u) / 256, u ~ U[0, 1): a density on [0, 1]."""
    return (raw_uint8.astype(jnp.float32) + jax.random.uniform(key, raw_uint8.shape)) / 256.0


def fixed_binarization(images01: np.ndarray, first_row: int = 0) -> np.ndarray:
    """The evaluation binarization: ``default_rng(0).random((N, D)) < x`` on the flattened
    images (so for MNIST's test split it is exactly the benchmark's binarization).

    ``images01`` may be rows ``first_row …`` of a split: the generator is advanced past the
    ``first_row · D`` uniforms of the rows before (PCG64 draws one 64-bit word per double),
    so a split binarized batch by batch equals the split binarized whole, bitwise."""
    flat = images01.reshape(len(images01), -1)
    bits = np.random.PCG64(EVAL_BINARIZATION_SEED)  # what default_rng(seed) wraps
    bits.advance(first_row * flat.shape[1])
    u = np.random.Generator(bits).random(flat.shape)
    return (u < flat).astype(np.uint8).reshape(images01.shape)


@dataclasses.dataclass(frozen=True)
class Preprocessor:
    """Turns a gathered batch of raw pixels into model input, inside the compiled program."""

    pixel_max: float
    binarize: bool
    dequantize: bool

    def __call__(self, key, raw):
        if self.binarize:
            return dynamic_binarize(key, to_unit_interval(raw, self.pixel_max))
        if self.dequantize and self.pixel_max == 255.0:
            return dequantize(key, raw)
        return to_unit_interval(raw, self.pixel_max)


def evaluation_images(dataset: Dataset, binarize: bool) -> np.ndarray:
    """Host-side evaluation inputs, compact: fixed-binarized {0, 1} uint8, or the raw pixels.

    The values are not yet in [0, 1] for raw pixels: divide by ``evaluation_scale``, or use
    ``evaluation_inputs`` for floats ready for a model."""
    if not binarize:
        return dataset.images
    return fixed_binarization(dataset.images.astype(np.float32) / dataset.info.pixel_range[1])


def evaluation_scale(dataset: Dataset, binarize: bool) -> float:
    """What ``evaluation_images`` must be divided by to lie in [0, 1]."""
    return 1.0 if binarize else dataset.info.pixel_range[1]


def evaluation_inputs(dataset: Dataset, binarize: bool) -> np.ndarray:
    """Evaluation inputs as float32 in [0, 1], as every model entry point expects."""
    images = evaluation_images(dataset, binarize).astype(np.float32)
    return images / evaluation_scale(dataset, binarize)


# ---------------------------------------------------------------- on-device sampling


def epoch_permutation(data_key, epoch, num_examples: int):
    """The order of epoch ``epoch``: a function of (data_key, epoch) alone."""
    return jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples)


@dataclasses.dataclass(frozen=True)
class ClassTable:
    """Indices of each class, padded to a rectangle, for class-balanced sampling on device."""

    indices: np.ndarray  # (C, max_count) int32, padded with 0
    counts: np.ndarray  # (C,) int32

    @classmethod
    def from_labels(cls, labels: np.ndarray, num_classes: int) -> ClassTable:
        """The table of ``labels``; every class must have at least one example."""
        counts = np.bincount(labels, minlength=num_classes).astype(np.int32)
        if np.any(counts == 0):
            missing = np.flatnonzero(counts == 0).tolist()
            raise ValueError(f"class-balanced sampling needs every class present; classes "
                             f"{missing} have no training examples")
        table = np.zeros((num_classes, counts.max()), np.int32)
        for c in range(num_classes):
            members = np.flatnonzero(labels == c)
            table[c, : len(members)] = members
        return cls(table, counts)


def class_balanced_indices(key, indices, counts, num_draws: int):
    """``num_draws`` example indices in which every class appears ⌊or⌈num_draws/C⌉ times.

    Slot s belongs to class s mod C; a class's slots walk through a fresh random
    permutation of its members (cycling when a small class is oversampled); the slots are
    then shuffled. Static shapes throughout, so it runs inside the compiled epoch.
    """
    num_classes, max_count = indices.shape
    order_key, shuffle_key = jax.random.split(key)
    valid = jnp.arange(max_count)[None, :] < counts[:, None]
    scores = jnp.where(valid, jax.random.uniform(order_key, indices.shape), jnp.inf)
    member_order = jnp.argsort(scores, axis=1)  # valid members first, in random order
    slots = jnp.arange(num_draws)
    cls = slots % num_classes
    position = (slots // num_classes) % counts[cls]
    drawn = indices[cls, member_order[cls, position]]
    return jax.random.permutation(shuffle_key, drawn)
