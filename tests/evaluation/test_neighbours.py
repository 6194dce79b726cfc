"""Precision/recall, density/coverage and the memorisation check against brute-force
numpy references on small point sets, and at their known extremes."""

import numpy as np
import pytest

from cvae.evaluation import neighbours

pytestmark = pytest.mark.unit


def _distances(a, b):
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def _radii(x, k):
    return np.sort(_distances(x, x), axis=1)[:, k]  # column 0 is the point itself


def _reference(real, fake, k_pr=3, k_dc=5):
    """The papers' definitions, written out with full distance matrices."""
    r_radii, f_radii = _radii(real, k_pr), _radii(fake, k_pr)
    d = _distances(fake, real)  # (M, N)
    precision = np.mean((d <= r_radii[None]).any(1))
    recall = np.mean((d.T <= f_radii[None]).any(1))
    r5 = _radii(real, k_dc)
    density = (d <= r5[None]).sum() / (k_dc * len(fake))
    coverage = np.mean((d <= r5[None]).any(0))
    return precision, recall, density, coverage


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_metrics_equal_a_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(150, 4)).astype(np.float32)
    fake = (rng.normal(size=(120, 4)) * 1.3 + 0.4).astype(np.float32)
    pr = neighbours.precision_recall(real, fake)
    dc = neighbours.density_coverage(real, fake)
    precision, recall, density, coverage = _reference(
        real.astype(np.float64), fake.astype(np.float64)
    )
    assert pr["precision"] == pytest.approx(precision, abs=1 / 120)
    assert pr["recall"] == pytest.approx(recall, abs=1 / 150)
    assert dc["density"] == pytest.approx(density, rel=1e-2)
    assert dc["coverage"] == pytest.approx(coverage, abs=1 / 150)


def test_the_radii_and_nearest_distances_span_blocks(monkeypatch):
    """Row blocks (here of 7) give the numbers of one block."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 3)), rng.normal(size=(25, 3))
    whole = neighbours.kth_neighbour_radii(x, 3), neighbours.nearest_distances(y, x)
    monkeypatch.setattr(neighbours, "_BLOCK", 7)
    np.testing.assert_allclose(neighbours.kth_neighbour_radii(x, 3), whole[0], rtol=1e-5)
    np.testing.assert_allclose(neighbours.nearest_distances(y, x), whole[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(whole[0], _radii(x, 3), rtol=1e-4)


def test_samples_drawn_like_the_real_data_score_near_one():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(2000, 2))
    fake = rng.normal(size=(2000, 2))  # the same distribution, other draws
    pr, dc = neighbours.precision_recall(real, fake), neighbours.density_coverage(real, fake)
    assert pr["precision"] > 0.9 and pr["recall"] > 0.9
    assert 0.85 < dc["density"] < 1.15 and dc["coverage"] > 0.9


def test_samples_collapsed_to_one_point_have_no_recall_and_no_coverage():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(1000, 2))
    fake = np.zeros((1000, 2))  # every sample the mean: faithful, no diversity
    pr, dc = neighbours.precision_recall(real, fake), neighbours.density_coverage(real, fake)
    assert pr["precision"] == 1.0  # the mean lies among the real points
    assert pr["recall"] < 0.01 and dc["coverage"] < 0.02


def test_samples_far_from_the_data_have_no_precision_and_no_density():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(500, 2))
    pr = neighbours.precision_recall(real, real + 20.0)
    dc = neighbours.density_coverage(real, real + 20.0)
    assert pr == {"precision": 0.0, "recall": 0.0}
    assert dc == {"density": 0.0, "coverage": 0.0}


def test_copies_of_training_points_are_memorised_and_fresh_draws_are_not():
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(500, 8)), rng.normal(size=(200, 8))
    assert neighbours.memorisation(train[:100], train, test) == 1.0
    assert neighbours.memorisation(rng.normal(size=(300, 8)), train, test) < 0.02


def test_too_few_points_for_the_ball_radius_is_a_clear_error():
    with pytest.raises(ValueError, match="more than k = 3 points"):
        neighbours.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))
