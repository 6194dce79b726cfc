"""Preprocessing: crops and resizes, scaling to [0, 1], binarization (dynamic for training,
fixed for evaluation), dequantization, and the on-device orders of examples.

Images are scaled to [0, 1]; training draws a fresh binarization x ~ Bernoulli(intensity)
at every use (``dynamic_binarize``); evaluation binarizes once, with a fixed generator
(``numpy.random.default_rng(0)``, ``u < x``) so that scores are comparable across runs and
seeds; continuous likelihoods may use uniform dequantization.

Batching rule: a training epoch uses ⌊N / batch⌋ full batches (the last partial batch is
dropped; a fresh permutation each epoch means every example is still seen); evaluation
covers every example, padding the last batch and masking the padding out.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from cvae.data.splits import Dataset

EVAL_BINARIZATION_SEED = 0


def transform_of(data_cfg) -> tuple[int, int]:
    """The crop and resize a config asks for.

    Args:
      data_cfg: the config's ``data`` section.

    Returns:
      (centre crop side, resized side), 0 for none.
    """
    return int(data_cfg.get("center_crop", 0)), int(data_cfg.get("resize", 0))


def transformed_shape(shape, crop: int, size: int) -> tuple[int, int, int]:
    """The H×W×C of images of ``shape`` after ``transform_images``.

    Args:
      shape: the images' H×W×C.
      crop: the centre crop's side (0: none).
      size: the resized side (0: none).

    Returns:
      The new H×W×C.

    Raises:
      ValueError: the crop is larger than the images.
    """
    height, width, depth = shape
    if crop:
        if crop > min(height, width):
            raise ValueError(
                f"data.center_crop = {crop} is larger than the {height}×{width} "
                f"images; choose at most {min(height, width)} (or 0 for none)"
            )
        height = width = crop
    if size:
        height = width = size
    return height, width, depth


def transform_images(images: np.ndarray, crop: int, size: int) -> np.ndarray:
    """A centred square crop, then a resize (Pillow's antialiased bicubic, on uint8 pixels).

    Args:
      images: uint8 images N×H×W×C.
      crop: the crop's side; 0 skips the crop.
      size: the resized side; 0 skips the resize.

    Returns:
      The transformed images, uint8.
    """
    height, width, depth = transformed_shape(images.shape[1:], crop, size)
    if crop:
        top, left = (images.shape[1] - crop) // 2, (images.shape[2] - crop) // 2
        images = images[:, top : top + crop, left : left + crop]
    if size and images.shape[1:3] != (size, size):
        from PIL import Image

        if images.dtype != np.uint8:
            raise ValueError(
                f"data.resize works on 8-bit images; this data set's are {images.dtype}"
            )
        resized = [
            np.asarray(
                Image.fromarray(im[..., 0] if depth == 1 else im).resize(
                    (size, size), Image.Resampling.BICUBIC
                )
            )
            for im in images
        ]
        images = np.stack(resized).reshape(len(images), size, size, depth)
    return images


def to_unit_interval(raw, pixel_max: float):
    """Raw pixels → float32 in [0, 1].

    Args:
      raw: pixels in [0, pixel_max].
      pixel_max: the top of the raw range (255 for uint8, 1 for floats).

    Returns:
      raw / pixel_max as float32.
    """
    return raw.astype(jnp.float32) / pixel_max


def dynamic_binarize(key, x01):
    """A fresh draw x_b ~ Bernoulli(x01) (Salakhutdinov & Murray's dynamic binarization).

    x_b = [u < 2¹⁶·x01] with u uniform on {0, …, 2¹⁶ − 1}: P(x_b = 1) = ⌈2¹⁶·x01⌉ / 2¹⁶,
    within 1.6·10⁻⁵ of x01 and exact at 0 and 1 (``jax.random.bernoulli`` compares a
    23-bit float instead). Each 32-bit threefry word gives two pixels their u, which
    halves the generator's work, the largest non-matmul cost of a small model's step.
    Leading axis = examples: each example's pixels come from its own row of words, so a
    batch-sharded input draws the same bits on any number of devices.

    Args:
      key: the PRNG key of this draw.
      x01: intensities in [0, 1], examples on the leading axis.

    Returns:
      {0, 1} float32 of the same shape.
    """
    x01 = jnp.asarray(x01)
    rows = x01.reshape(x01.shape[0], -1) if x01.ndim > 1 else x01[None]
    pixels = rows.shape[1]
    words = jax.random.bits(key, (rows.shape[0], (pixels + 1) // 2), jnp.uint32)
    u16 = jnp.concatenate([words >> 16, words & 0xFFFF], axis=1)[:, :pixels]
    drawn = (u16.astype(jnp.float32) < rows * 65536.0).astype(jnp.float32)
    return drawn.reshape(x01.shape)


def dequantize(key, raw_uint8):
    """Uniform dequantization (x + u) / 256, u ~ U[0, 1): a density on [0, 1].

    Args:
      key: the PRNG key of this draw.
      raw_uint8: 8-bit pixels.

    Returns:
      float32 in [0, 1) of the same shape.
    """
    return (raw_uint8.astype(jnp.float32) + jax.random.uniform(key, raw_uint8.shape)) / 256.0


def fixed_binarization(images01: np.ndarray, first_row: int = 0) -> np.ndarray:
    """The evaluation binarization: ``default_rng(0).random((N, D)) < x`` on flattened images.

    For MNIST's test split it is exactly the benchmark's binarization. ``images01`` may be
    rows ``first_row …`` of a split: the generator is advanced past the ``first_row · D``
    uniforms of the rows before (PCG64 draws one 64-bit word per double), so a split
    binarized batch by batch equals the split binarized whole, bitwise.

    Args:
      images01: intensities in [0, 1], N×H×W×C.
      first_row: the row of the split the first image is.

    Returns:
      {0, 1} uint8 of the same shape.
    """
    flat = images01.reshape(len(images01), math.prod(images01.shape[1:]))  # N may be 0
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
    """Host-side evaluation inputs, compact.

    The values are not yet in [0, 1] for raw pixels: divide by ``evaluation_scale``, or use
    ``evaluation_inputs`` for floats ready for a model.

    Args:
      dataset: the split.
      binarize: whether the run binarizes (``data.binarize = "dynamic"``).

    Returns:
      Fixed-binarized {0, 1} uint8 when binarizing, else the raw pixels.
    """
    if not binarize:
        return dataset.images
    return fixed_binarization(dataset.images.astype(np.float32) / dataset.info.pixel_range[1])


def evaluation_scale(dataset: Dataset, binarize: bool) -> float:
    """What ``evaluation_images`` must be divided by to lie in [0, 1].

    Args:
      dataset: the split.
      binarize: whether the run binarizes.

    Returns:
      1 for binarized inputs, else the raw pixel range's top.
    """
    return 1.0 if binarize else dataset.info.pixel_range[1]


def evaluation_inputs(dataset: Dataset, binarize: bool) -> np.ndarray:
    """Evaluation inputs as float32 in [0, 1], as every model entry point expects.

    Args:
      dataset: the split.
      binarize: whether the run binarizes.

    Returns:
      float32 N×H×W×C.
    """
    images = evaluation_images(dataset, binarize).astype(np.float32)
    return images / evaluation_scale(dataset, binarize)


def epoch_permutation(data_key, epoch, num_examples: int):
    """The order of the examples in one epoch: a function of (data_key, epoch) alone.

    Args:
      data_key: the run's data key.
      epoch: the epoch's index (from 0).
      num_examples: the size of the train split.

    Returns:
      A permutation of 0 … num_examples − 1.
    """
    return jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples)


@dataclasses.dataclass(frozen=True, eq=False)
class ClassTable:
    """Indices of each class, padded to a rectangle, for class-balanced sampling on device.

    Equal tables (the same arrays, value for value) compare and hash equal, so a table can
    key a cache of the programs built from it (``cvae.training.steps.build_programs``)."""

    indices: np.ndarray  # (C, max_count) int32, padded with 0
    counts: np.ndarray  # (C,) int32

    def _key(self) -> tuple:
        return (self.indices.shape, self.indices.tobytes(), self.counts.tobytes())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClassTable) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @classmethod
    def from_labels(cls, labels: np.ndarray, num_classes: int) -> ClassTable:
        """The table of a split's labels.

        Args:
          labels: int labels of the train split.
          num_classes: the number of classes.

        Returns:
          The table.

        Raises:
          ValueError: a class has no example.
        """
        counts = np.bincount(labels, minlength=num_classes).astype(np.int32)
        if np.any(counts == 0):
            missing = np.flatnonzero(counts == 0).tolist()
            raise ValueError(
                f"class-balanced sampling needs every class present; classes "
                f"{missing} have no training examples"
            )
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

    Args:
      key: the PRNG key of this draw.
      indices: ``ClassTable.indices``, (C, max_count).
      counts: ``ClassTable.counts``, (C,).
      num_draws: how many indices to draw.

    Returns:
      (num_draws,) example indices.
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
