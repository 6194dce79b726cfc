import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cvae.models import posteriors
from cvae.models.posteriors import standard_normal_log_prob

pytestmark = pytest.mark.unit

N_MC = 200_000


def _mc_kl(posterior, key):
    """Monte-Carlo KL(q ‖ N(0, I)) = E_q[log q(z) − log p(z)] with its standard error."""
    z = posterior.sample(key, N_MC)
    log_ratio = np.asarray(posterior.log_prob(z) - standard_normal_log_prob(z), np.float64)
    return log_ratio.mean(axis=0), log_ratio.std(axis=0) / math.sqrt(N_MC)


def test_gaussian_kl_matches_monte_carlo():
    mean = jnp.array([[0.5, -1.0, 2.0], [0.0, 0.3, -0.2]])
    log_var = jnp.array([[-1.0, 0.5, 0.0], [1.0, -2.0, 0.2]])
    post = posteriors.GaussianPosterior(mean, log_var)
    analytic = np.asarray(post.kl_per_dim().sum(-1))
    mc, se = _mc_kl(post, jax.random.key(0))
    assert np.all(np.abs(mc - analytic) < 5 * se + 1e-4), (mc, analytic, se)


@pytest.mark.parametrize("sigma0", [0.01, 0.1, 1.0])
def test_collapsed_kl_matches_monte_carlo_and_closed_form(sigma0):
    mean = jnp.array([[0.5, -1.0, 2.0, 0.1], [0.0, 0.3, -0.2, 1.5]])
    post = posteriors.CollapsedPosterior(mean, sigma0)
    analytic = np.asarray(post.kl_per_dim().sum(-1), np.float64)
    d = mean.shape[-1]
    closed = 0.5 * np.sum(np.asarray(mean, np.float64) ** 2, -1) + d / 2 * (
        sigma0**2 - 1 - math.log(sigma0**2)
    )
    np.testing.assert_allclose(analytic, closed, rtol=1e-5)
    mc, se = _mc_kl(post, jax.random.key(1))
    assert np.all(np.abs(mc - analytic) < 5 * se + 1e-3 * np.abs(analytic)), (mc, analytic, se)


def test_collapsed_is_gaussian_with_fixed_variance():
    mean = jax.random.normal(jax.random.key(0), (5, 3))
    collapsed = posteriors.CollapsedPosterior(mean, 0.3)
    gaussian = posteriors.GaussianPosterior(mean, jnp.full_like(mean, 2 * math.log(0.3)))
    z = gaussian.sample(jax.random.key(1))
    np.testing.assert_allclose(collapsed.log_prob(z), gaussian.log_prob(z), rtol=1e-5)
    np.testing.assert_allclose(collapsed.kl_per_dim(), gaussian.kl_per_dim(), rtol=1e-4)


@pytest.mark.parametrize("family", ["gaussian", "collapsed"])
def test_sampling_is_a_function_of_the_key(family):
    mean = jnp.zeros((4, 3))
    post = posteriors.make_posterior(family, mean, jnp.zeros_like(mean), 0.5)
    a = post.sample(jax.random.key(7), 2)
    b = post.sample(jax.random.key(7), 2)
    c = post.sample(jax.random.key(8), 2)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.shape == (2, 4, 3)


def test_deterministic_posterior_is_a_point_mass_without_density():
    mean = jnp.arange(6.0).reshape(2, 3)
    post = posteriors.DeterministicPosterior(mean)
    np.testing.assert_array_equal(post.sample(jax.random.key(0)), mean)
    assert post.sample(jax.random.key(0), 4).shape == (4, 2, 3)
    with pytest.raises(ValueError, match="no density"):
        post.log_prob(mean)
    with pytest.raises(ValueError, match="infinite"):
        post.kl_per_dim()


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="model.posterior.*'bogus'"):
        posteriors.make_posterior("bogus", jnp.zeros((1, 2)))
