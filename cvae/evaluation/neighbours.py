"""Nearest-neighbour sample metrics that separate fidelity from coverage, and a check for
copied training images.

With real features R = {r_i} (N of them), generated features F = {f_j} (M) and
NND_k(x) the distance from x to its k-th nearest neighbour in its own set (itself not
counted), a point's k-NN ball is B(x, NND_k(x)):

* improved precision and recall (Kynkäänniemi et al., 2019; k = 3):
  precision = (1/M) Σ_j 1[f_j ∈ ∪_i B(r_i, NND_k(r_i))] — samples that look real;
  recall = (1/N) Σ_i 1[r_i ∈ ∪_j B(f_j, NND_k(f_j))] — real data the samples reach;
* density and coverage (Naeem et al., 2020; k = 5), robust to outliers of either set:
  density = (1/(kM)) Σ_j Σ_i 1[f_j ∈ B(r_i, NND_k(r_i))] (≈ 1 for samples distributed as
  the data, above 1 when they crowd dense regions);
  coverage = (1/N) Σ_i 1[∃ j: f_j ∈ B(r_i, NND_k(r_i))];
* memorisation: the fraction of samples whose nearest training image is closer than the
  nearest test image is to the training set — closer than any unseen real image gets, so
  likely a copy. Computed in pixel space and in the classifier's feature space.

Distances are Euclidean, computed in float32 blocks of rows (‖a‖² + ‖b‖² − 2a·b, in JAX)
so that 10,000 × 60,000 pairs never sit in memory at once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

PRECISION_RECALL_K = 3  # Kynkäänniemi et al. (2019)
DENSITY_COVERAGE_K = 5  # Naeem et al. (2020)
_BLOCK = 1024


@jax.jit
def _squared_distances(a, b):
    d2 = jnp.sum(a**2, -1)[:, None] + jnp.sum(b**2, -1)[None] - 2.0 * a @ b.T
    return jnp.maximum(d2, 0.0)


def _as_rows(x) -> np.ndarray:
    return np.asarray(x, np.float32).reshape(len(x), -1)


def _blocks(x):
    """The rows of ``x`` in blocks of ``_BLOCK``, each a device array."""
    rows = _as_rows(x)
    for start in range(0, len(rows), _BLOCK):
        yield jnp.asarray(rows[start : start + _BLOCK])


def nearest_distances(queries, points) -> np.ndarray:
    """The distance from each query to its nearest point.

    Args:
      queries: (M, …) points, flattened to rows.
      points: (N, …) points of the same size.

    Returns:
      (M,) distances.
    """
    points = jnp.asarray(_as_rows(points))
    out = [
        np.sqrt(np.asarray(jnp.min(_squared_distances(q, points), axis=1)))
        for q in _blocks(queries)
    ]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def kth_neighbour_radii(points, k: int) -> np.ndarray:
    """NND_k: the distance from each point to its k-th nearest other point of the set.

    Args:
      points: (N, …) points, N > k.
      k: which neighbour.

    Returns:
      (N,) radii.
    """
    rows = _as_rows(points)
    if len(rows) <= k:
        raise ValueError(f"the k-NN radius needs more than k = {k} points, got {len(rows)}")
    all_rows = jnp.asarray(rows)
    # the k+1 smallest of each row: the point itself (distance 0) and its k neighbours
    radii = [
        np.sqrt(np.partition(np.asarray(_squared_distances(q, all_rows)), k, 1)[:, k])
        for q in _blocks(rows)
    ]
    return np.concatenate(radii)


def _inside_counts(queries, centres, radii) -> np.ndarray:
    """For each query, how many balls B(centre_i, radius_i) hold it: (M,)."""
    centres = jnp.asarray(_as_rows(centres))
    radii2 = jnp.asarray(np.asarray(radii, np.float32) ** 2)
    counts = [
        np.asarray(jnp.sum(_squared_distances(q, centres) <= radii2[None], axis=1))
        for q in _blocks(queries)
    ]
    return np.concatenate(counts)


def precision_recall(real, fake, k: int = PRECISION_RECALL_K) -> dict:
    """Improved precision and recall (Kynkäänniemi et al., 2019).

    Args:
      real: (N, …) real features.
      fake: (M, …) generated features.
      k: the neighbour that sets each ball's radius.

    Returns:
      {"precision", "recall"} in [0, 1].
    """
    precision = np.mean(_inside_counts(fake, real, kth_neighbour_radii(real, k)) > 0)
    recall = np.mean(_inside_counts(real, fake, kth_neighbour_radii(fake, k)) > 0)
    return {"precision": float(precision), "recall": float(recall)}


def density_coverage(real, fake, k: int = DENSITY_COVERAGE_K) -> dict:
    """Density and coverage (Naeem et al., 2020): balls around the real points only.

    Args:
      real: (N, …) real features.
      fake: (M, …) generated features.
      k: the neighbour that sets each real ball's radius.

    Returns:
      {"density" (≥ 0; ≈ 1 when fake is distributed as real), "coverage" in [0, 1]}.
    """
    radii = kth_neighbour_radii(real, k)
    density = np.sum(_inside_counts(fake, real, radii)) / (k * len(_as_rows(fake)))
    # a real ball is covered when its nearest sample lies inside it
    coverage = np.mean(nearest_distances(real, fake) <= radii)
    return {"density": float(density), "coverage": float(coverage)}


def memorisation(samples, train, test) -> float:
    """The fraction of samples closer to their nearest training point than the nearest
    test point is to the training set.

    Args:
      samples: (M, …) generated images or features.
      train: (N, …) the training set in the same space.
      test: (T, …) held-out real points in the same space.

    Returns:
      The fraction in [0, 1].
    """
    threshold = float(np.min(nearest_distances(test, train)))
    return float(np.mean(nearest_distances(samples, train) < threshold))
