import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cvae.models import likelihoods

pytestmark = pytest.mark.unit


def _image(values):
    return jnp.asarray(values, jnp.float32).reshape(1, 1, -1, 1)


def test_bernoulli_matches_direct_formula():
    x = _image([0.0, 1.0, 1.0, 0.3])
    logits = _image([-2.0, 0.5, 30.0, 1.2])
    xs, ls = np.asarray(x, np.float64), np.asarray(logits, np.float64)
    p = 1 / (1 + np.exp(-ls))  # float64: log1p(-p) stays finite at logit 30
    direct = np.sum(xs * np.log(p) + (1 - xs) * np.log1p(-p))
    np.testing.assert_allclose(likelihoods.Bernoulli().log_prob(x, logits), [direct], rtol=1e-5)


def test_gaussian_fixed_and_learned_scale_match_direct_formula():
    x = _image([0.1, 0.9])
    mu = _image([0.0, 1.0])
    sigma = 0.3
    direct = np.sum(
        -0.5 * ((np.asarray(x) - np.asarray(mu)) / sigma) ** 2
        - np.log(sigma)
        - 0.5 * np.log(2 * np.pi)
    )
    np.testing.assert_allclose(likelihoods.Gaussian(sigma).log_prob(x, mu), [direct], rtol=1e-5)
    learned = likelihoods.Gaussian(0.0)
    assert learned.param_shape((1, 2, 1)) == (2, 1, 2, 1)
    raw = jnp.log(jnp.expm1(sigma - 1e-3))  # softplus⁻¹(σ − 10⁻³)
    params = jnp.stack([mu, jnp.full_like(mu, raw)], axis=1)
    np.testing.assert_allclose(learned.log_prob(x, params), [direct], rtol=1e-4)


@pytest.mark.parametrize("eta", [-20.0, -3.0, -1e-2, -1e-4, 0.0, 1e-6, 5e-3, 0.02, 0.7, 9.0])
def test_continuous_bernoulli_density_integrates_to_one(eta):
    grid = np.linspace(0.0, 1.0, 20001)
    x = jnp.asarray(grid, jnp.float32).reshape(1, 1, -1, 1)
    logits = jnp.full_like(x, eta)
    cb = likelihoods.ContinuousBernoulli()
    per_pixel = (
        x * logits - jax.nn.softplus(logits) + likelihoods.continuous_bernoulli_log_norm(logits)
    )
    density = np.exp(np.asarray(per_pixel, np.float64).ravel())
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=2e-4)
    mean = float(cb.mean(jnp.asarray(eta)))
    assert np.trapezoid(grid * density, grid) == pytest.approx(mean, abs=2e-4)


def test_continuous_bernoulli_normaliser_is_smooth_with_finite_gradients_at_half():
    f = likelihoods.continuous_bernoulli_log_norm
    etas = jnp.array([-2e-2, -1.01e-2, -0.99e-2, 0.0, 0.99e-2, 1.01e-2])
    values = np.asarray(f(etas))
    assert np.all(np.abs(values - np.log(2.0)) < 1e-4)
    grads = jax.vmap(jax.grad(f))(etas)
    assert np.all(np.isfinite(grads))
    np.testing.assert_allclose(grads, np.asarray(etas) / 6, atol=1e-4)  # d/dη (η²/12)


def test_samples_have_the_likelihood_mean():
    key = jax.random.key(0)
    logits = jnp.full((20000, 1, 1, 1), 1.5)
    for lik in (likelihoods.Bernoulli(), likelihoods.ContinuousBernoulli()):
        samples = lik.sample(key, logits)
        assert float(samples.mean()) == pytest.approx(float(lik.mean(logits[0, 0, 0, 0])), abs=0.01)


@pytest.mark.parametrize("name", ["bernoulli", "continuous_bernoulli"])
def test_data_outside_unit_interval_is_refused(name):
    lik = likelihoods.make_likelihood(name)
    lik.validate(np.array([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match=rf"{name}.*\[0, 1\].*255"):
        lik.validate(np.array([0.0, 255.0]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        lik.validate(np.array([-0.1, 0.5]))


def test_unknown_likelihood_and_negative_scale_are_refused():
    with pytest.raises(ValueError, match="model.likelihood.*'poisson'"):
        likelihoods.make_likelihood("poisson")
    with pytest.raises(ValueError, match="likelihood_scale"):
        likelihoods.make_likelihood("gaussian", -1.0)


def test_bernoulli_binary_form_equals_the_general_form_on_binary_data():
    rng = np.random.default_rng(3)
    x = (rng.random((5, 4, 4, 1)) < 0.4).astype(np.float32)
    logits = jnp.asarray(rng.normal(0, 8, (5, 4, 4, 1)), jnp.float32)
    general, binary = likelihoods.Bernoulli(), likelihoods.Bernoulli(binary_targets=True)
    np.testing.assert_allclose(binary.log_prob(x, logits), general.log_prob(x, logits), rtol=1e-6)
    grad = lambda lik: jax.grad(lambda eta: lik.log_prob(x, eta).sum())(logits)
    np.testing.assert_allclose(grad(binary), grad(general), atol=1e-6)
    # The shortcut is for {0, 1} data only: on grey targets the two forms part ways.
    grey = np.full_like(x, 0.5)
    assert not np.allclose(binary.log_prob(grey, logits), general.log_prob(grey, logits))
    assert likelihoods.make_likelihood("bernoulli", binary_data=True).binary_targets


def test_softplus_matches_jax_in_value_and_both_derivative_modes():
    y = jnp.asarray([-200.0, -30.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 30.0, 200.0], jnp.float32)
    np.testing.assert_allclose(likelihoods.softplus(y), jax.nn.softplus(y), rtol=1e-6)
    reverse = jax.vmap(jax.grad(likelihoods.softplus))(y)
    forward = jax.jvp(likelihoods.softplus, (y,), (jnp.ones_like(y),))[1]
    np.testing.assert_allclose(reverse, jax.nn.sigmoid(y), rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(forward, jax.nn.sigmoid(y), rtol=1e-6, atol=1e-30)
    assert np.isfinite(jax.grad(lambda v: likelihoods.softplus(v).sum())(y)).all()
