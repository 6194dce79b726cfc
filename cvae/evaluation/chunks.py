"""How an evaluation is cut up: examples into batches (split over the devices) and each
image's K importance samples into chunks, sized so the widest array of a chunk stays near
the cache (``auto_chunk_size``, from what one sample adds to it: ``sample_row_elements``).
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np

from cvae.models import vae  # the models' one initialiser (every design)

CHUNK_ROWS = 5000  # decoder rows per importance-sampling chunk when chunk_size = 0 (auto)
MNIST_PIXELS = 784  # an MLP's widest array per row: its logits
CHUNK_ELEMENTS = CHUNK_ROWS * MNIST_PIXELS  # what a chunk's widest array holds (auto)


def auto_chunk_size(batch_size: int, k: int, row_elements: int = MNIST_PIXELS) -> int:
    """Importance samples per chunk whose widest array holds about ``CHUNK_ELEMENTS``
    numbers: ``CHUNK_ROWS`` rows (image × sample) of an MLP's 784 logits, fewer of a conv
    net's wider maps.

    Measured on XLA:CPU: for the seed MLP 5,000 rows keep the decoder's output near the
    cache and amortise the loop's per-iteration cost (25,000 rows ran at half the speed);
    for a hierarchy of conv maps of 28 × 28 × 32, 100–250 rows per device ran 1.3–1.5×
    faster than 2,500 (docs/performance.md, Evaluation).

    Args:
      batch_size: examples per evaluation batch.
      k: importance samples per example.
      row_elements: the numbers one row adds to the chunk's widest array
        (``sample_row_elements``).

    Returns:
      The chunk size, between 1 and k.
    """
    rows = CHUNK_ELEMENTS // max(row_elements, 1)
    return max(1, min(k, rows // max(batch_size, 1)))


def sub_jaxprs(eqn) -> list:
    """The jaxprs inside one equation: a call's, a loop's body and condition, a branch's.

    Args:
      eqn: an equation of a jaxpr.

    Returns:
      Its inner jaxprs (open ones: a closed jaxpr's ``.jaxpr``), in parameter order.
    """
    found = []
    for value in eqn.params.values():
        for sub in value if isinstance(value, tuple | list) else (value,):
            inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr holds a Jaxpr
            if hasattr(inner, "eqns"):
                found.append(inner)
    return found


def _equations(jaxpr):
    """Every equation of a jaxpr and of the jaxprs inside it (calls, loops, branches)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for inner in sub_jaxprs(eqn):
            yield from _equations(inner)


@functools.lru_cache(maxsize=32)
def sample_row_elements(model) -> int:
    """The numbers one importance sample of one image adds to the widest array of the
    importance-sampled log-likelihood: 784 for an MLP decoding MNIST (its logits), 28 · 28
    · 32 for a conv net whose finest maps have 32 channels. Read from the program's trace
    (no computation): each array's size with two samples minus its size with one.

    Args:
      model: any model of ``cvae.models.protocol``.

    Returns:
      The largest growth, at least 1.
    """
    params = jax.eval_shape(lambda key: vae.init_params(model, key), jax.random.key(0))
    x = jax.ShapeDtypeStruct((1, *model.event_shape), np.float32)
    labels = jax.ShapeDtypeStruct((1,), np.int32) if model.num_classes else None

    def sizes(draws: int) -> list[int]:
        def weights(params, x, labels):
            keys = jax.random.split(jax.random.key(0), draws)
            return jax.vmap(lambda key: model.log_importance_weights(params, x, key, None, labels))(
                keys
            )

        jaxpr = jax.make_jaxpr(weights)(params, x, labels).jaxpr
        return [math.prod(v.aval.shape) for eqn in _equations(jaxpr) for v in eqn.outvars]

    one, two = sizes(1), sizes(2)
    grown = [b - a for a, b in zip(one, two, strict=True)] if len(one) == len(two) else []
    return max(1, *grown) if grown else max(1, max(two) - max(one))


def evaluation_batch_size(batch_size: int, num_examples: int, num_devices: int) -> int:
    """The evaluation batch actually used.

    Args:
      batch_size: the batch asked for.
      num_examples: the examples to score.
      num_devices: the devices the batch is split over.

    Returns:
      No larger than the data needs, and divisible by ``num_devices``.
    """
    size = min(batch_size, num_examples)
    return -(-size // num_devices) * num_devices
