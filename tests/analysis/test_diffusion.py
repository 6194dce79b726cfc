"""The flow-matching sampler over codes: it learns a three-mode toy density (samples,
exact log-density), draws the same codes from the same key, and conditions on labels,
classifier-free guidance sharpening each class."""

import jax
import numpy as np
import pytest

from cvae.samplers import diffusion

pytestmark = pytest.mark.slow

CENTRES = np.array([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]], np.float32)


def _blobs(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    codes = CENTRES[labels] + 0.5 * rng.standard_normal((n, 2))
    return codes.astype(np.float32), labels


@pytest.fixture(scope="module")
def unconditional():
    codes, _ = _blobs(4000, 0)
    return diffusion.fit_diffusion(codes, jax.random.key(0), num_updates=1000, width=128)


@pytest.fixture(scope="module")
def conditional():
    codes, labels = _blobs(4000, 0)
    return diffusion.fit_diffusion(
        codes, jax.random.key(0), labels, num_classes=3, num_updates=1000, width=128
    )


def _nearest_centre(z):
    return np.argmin(((np.asarray(z)[:, None] - CENTRES[None]) ** 2).sum(-1), axis=1)


def test_samples_cover_each_mode_in_its_share_and_spread(unconditional):
    z = np.asarray(unconditional.sample(jax.random.key(1), 3000))
    shares = np.bincount(_nearest_centre(z), minlength=3) / len(z)
    np.testing.assert_allclose(shares, 1 / 3, atol=0.05)
    spread = np.linalg.norm(z - CENTRES[_nearest_centre(z)], axis=1)
    assert 0.4 < np.median(spread) < 0.9  # each mode's radius: 0.5·√(2 ln 2) ≈ 0.59


def test_the_same_key_draws_the_same_codes(unconditional):
    a = unconditional.sample(jax.random.key(5), 64)
    np.testing.assert_array_equal(a, unconditional.sample(jax.random.key(5), 64))
    assert not np.array_equal(a, unconditional.sample(jax.random.key(6), 64))


def test_the_log_density_integrates_to_one_and_favours_the_modes(unconditional):
    x, y = np.linspace(-7, 7, 57), np.linspace(-3, 8, 45)
    grid = np.stack(np.meshgrid(x, y), -1).reshape(-1, 2).astype(np.float32)
    log_p = np.asarray(unconditional.log_prob(grid, num_steps=16))
    mass = np.exp(log_p).sum() * (x[1] - x[0]) * (y[1] - y[0])
    assert mass == pytest.approx(1.0, abs=0.05)
    at_modes = np.asarray(unconditional.log_prob(CENTRES, num_steps=16))
    between = np.asarray(unconditional.log_prob(np.array([[0.0, 0.0]], np.float32), 16))
    assert at_modes.min() > between.max() + 3.0


def test_labels_pick_the_class_and_guidance_sharpens_it(conditional):
    for label in range(3):
        z = np.asarray(conditional.sample(jax.random.key(2), 400, np.full(400, label)))
        assert np.mean(_nearest_centre(z) == label) > 0.95
    plain = np.asarray(conditional.sample(jax.random.key(3), 800, np.full(800, 1)))
    guided = np.asarray(conditional.sample(jax.random.key(3), 800, np.full(800, 1), 3.0))
    assert guided.std(0).mean() < plain.std(0).mean()
    unlabelled = np.asarray(conditional.sample(jax.random.key(4), 3000))  # the null label
    np.testing.assert_allclose(
        np.bincount(_nearest_centre(unlabelled), minlength=3) / 3000, 1 / 3, atol=0.06
    )


def test_labels_for_an_unconditional_sampler_are_refused(unconditional):
    with pytest.raises(ValueError, match="fitted without labels"):
        unconditional.sample(jax.random.key(0), 4, np.zeros(4, int))
    with pytest.raises(ValueError, match="num_classes"):
        diffusion.fit_diffusion(np.zeros((10, 2)), jax.random.key(0), np.zeros(10, int))
