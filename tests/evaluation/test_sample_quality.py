"""The classifier-feature FID: the Fréchet distance against closed forms and an independent
matrix square root, and the classifier recipe on the offline digits."""

import jax
import numpy as np
import pytest
from scipy import linalg

from cvae import data
from cvae.evaluation import sample_quality

pytestmark = pytest.mark.unit


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu_a, mu_b = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 0.0])
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25])
    a = mu_a + np.sqrt(var_a) * rng.standard_normal((400_000, 3))
    b = mu_b + np.sqrt(var_b) * rng.standard_normal((400_000, 3))
    # Commuting covariances: FD = ‖Δμ‖² + Σ_j (σ_a,j − σ_b,j)².
    exact = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert sample_quality.frechet_distance(a, b) == pytest.approx(exact, abs=0.03)
    assert sample_quality.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_agrees_with_a_general_matrix_square_root():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((500, 6)) @ rng.standard_normal((6, 6))
    b = rng.standard_normal((500, 6)) @ rng.standard_normal((6, 6)) + 1.0
    mu_a, cov_a = a.mean(0), np.cov(a, rowvar=False)
    mu_b, cov_b = b.mean(0), np.cov(b, rowvar=False)
    reference = (
        np.sum((mu_a - mu_b) ** 2)
        + np.trace(cov_a + cov_b)
        - 2 * np.trace(np.real(linalg.sqrtm(cov_a @ cov_b)))
    )
    got = sample_quality.frechet_distance(a, b)
    assert got == pytest.approx(reference, rel=1e-6)
    assert got == pytest.approx(sample_quality.frechet_distance(b, a), rel=1e-6)


def test_frechet_distance_is_finite_with_fewer_samples_than_features_and_rejects_bad_input():
    rng = np.random.default_rng(2)
    value = sample_quality.frechet_distance(
        rng.standard_normal((20, 64)), rng.standard_normal((30, 64))
    )
    assert np.isfinite(value) and value > 0
    with pytest.raises(ValueError, match="feature sizes differ"):
        sample_quality.frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"\(N ≥ 2, D\)"):
        sample_quality.frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))


@pytest.mark.slow
def test_classifier_recipe_learns_digits_reproducibly():
    train, test = data.load("digits", "train"), data.load("digits", "test")
    x_train, x_test = train.images / 255.0, test.images / 255.0
    first = sample_quality.train_classifier(x_train, train.labels, jax.random.key(0), epochs=10)
    second = sample_quality.train_classifier(x_train, train.labels, jax.random.key(0), epochs=10)
    for p, q in zip(
        jax.tree_util.tree_leaves(first.params),
        jax.tree_util.tree_leaves(second.params),
        strict=True,
    ):
        np.testing.assert_array_equal(p, q)
    assert first.accuracy(x_test, test.labels) > 0.9
    # Features separate real digits from noise far more than test from train.
    noise = np.random.default_rng(0).random(x_test.shape)
    assert sample_quality.classifier_fid(first, noise, x_test) > 10 * sample_quality.classifier_fid(
        first, x_train, x_test
    )
    with pytest.raises(ValueError, match="labels"):
        sample_quality.train_classifier(x_train, train.labels[:10], jax.random.key(0))
