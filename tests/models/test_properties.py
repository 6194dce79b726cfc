"""Property tests of the maths, over generated shapes and values (Hypothesis).

Each test draws its sizes, parameters and the integer seed of its JAX key; a failure prints
the falsifying example, seed included, and ``@reproduce_failure`` to replay it. Monte-Carlo
comparisons allow five standard errors of the estimate (measured from the same draws), so a
correct implementation fails about once in 10⁶ examples. Shapes are drawn from small sets:
each new shape is a new XLA compilation, which is where these tests spend their time.
"""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cvae import config as config_lib
from cvae.data import preprocessing
from cvae.evaluation import metrics
from cvae.models import likelihoods, objectives, posteriors
from cvae.models import vae as model_lib

pytestmark = pytest.mark.unit

seeds = st.integers(0, 2**31 - 1)
moderate = st.floats(-2.0, 2.0, allow_nan=False, width=32)


def _arrays(shape, elements=moderate):
    return hnp.arrays(np.float32, shape, elements=elements)


def _mc_kl(posterior, key, n=20_000):
    """Monte-Carlo KL(q ‖ N(0, I)) per example from n draws, with its standard error."""
    z = posterior.sample(key, n)  # (n, B, d)
    log_ratio = np.asarray(posterior.log_prob(z) - posteriors.standard_normal_log_prob(z))
    return log_ratio.mean(0), log_ratio.std(0) / math.sqrt(n)


@settings(max_examples=20)
@given(
    d=st.sampled_from([1, 3]),
    data=st.data(),
    seed=seeds,
)
def test_gaussian_kl_is_the_monte_carlo_kl(d, data, seed):
    mean = data.draw(_arrays((2, d)))
    log_var = data.draw(_arrays((2, d), st.floats(-1.5, 1.5, width=32)))
    q = posteriors.GaussianPosterior(jnp.asarray(mean), jnp.asarray(log_var))
    analytic = np.asarray(q.kl_per_dim().sum(-1))
    estimate, se = _mc_kl(q, jax.random.key(seed))
    np.testing.assert_array_less(np.abs(estimate - analytic), 5 * se + 1e-4)


@settings(max_examples=20)
@given(
    d=st.sampled_from([1, 3]),
    sigma0=st.sampled_from([0.01, 0.1, 0.5, 1.0, 2.0]),
    data=st.data(),
    seed=seeds,
)
def test_collapsed_kl_is_half_the_squared_mean_plus_a_constant(d, sigma0, data, seed):
    mean = data.draw(_arrays((2, d)))
    q = posteriors.CollapsedPosterior(jnp.asarray(mean), sigma0)
    analytic = np.asarray(q.kl_per_dim().sum(-1))
    constant = 0.5 * d * (sigma0**2 - 1.0 - math.log(sigma0**2))
    np.testing.assert_allclose(
        analytic, 0.5 * (mean.astype(np.float64) ** 2).sum(-1) + constant, rtol=1e-5, atol=1e-4
    )
    estimate, se = _mc_kl(q, jax.random.key(seed))
    np.testing.assert_array_less(np.abs(estimate - analytic), 5 * se + 1e-3)


@pytest.fixture(scope="module")
def vamp_model():
    cfg = config_lib.base_config().model
    cfg.posterior, cfg.prior = "gaussian", "vamp"
    cfg.num_pseudo_inputs, cfg.encoder_widths, cfg.latent_dim = 5, (16,), 2
    model = model_lib.build_model(cfg, (4, 4, 1), 0)
    return model, model_lib.init_params(model, jax.random.key(0))


def _vamp_reference_log_prob(model, params, z):
    """log (1/K) Σ_k N(z; μ_k, σ_k²), in float64 numpy, from the pseudo-inputs' posteriors."""
    components = model.apply({"params": params}, method=model.pseudo_posterior)
    mu = np.asarray(components.mean, np.float64)  # (K, d)
    var = np.exp(np.asarray(components.log_var, np.float64))
    z = np.asarray(z, np.float64)[..., None, :]
    log_n = -0.5 * np.sum(np.log(2 * np.pi * var) + (z - mu) ** 2 / var, axis=-1)
    top = log_n.max(-1, keepdims=True)
    return (top + np.log(np.mean(np.exp(log_n - top), axis=-1, keepdims=True)))[..., 0]


@settings(max_examples=15)
@given(z=_arrays((6, 2), st.floats(-4.0, 4.0, width=32)))
def test_vamp_prior_log_density_is_the_mixture_of_its_pseudo_posteriors(vamp_model, z):
    model, params = vamp_model
    ours = model.apply({"params": params}, jnp.asarray(z), method=model.prior_log_prob)
    np.testing.assert_allclose(ours, _vamp_reference_log_prob(model, params, z), atol=2e-4)


@settings(max_examples=10)
@given(seed=seeds, pixels=_arrays((3, 4, 4, 1), st.floats(0.0, 1.0, width=32)))
def test_vamp_monte_carlo_kl_is_an_unbiased_estimate_of_the_mixture_kl(vamp_model, seed, pixels):
    """The IWAE objective's VampPrior KL (mean over its k draws of log q − log p) against a
    float64 estimate from independent draws of the same posterior."""
    model, params = vamp_model
    x = jnp.asarray(pixels)
    k = 4000
    _, terms = objectives.iwae_loss(model, params, x, jax.random.key(seed), k=k)
    q = model.apply({"params": params}, x, method=model.encode)
    z = np.asarray(q.sample(jax.random.key(seed + 1), k))  # (k, B, d)
    mu, var = np.asarray(q.mean, np.float64), np.exp(np.asarray(q.log_var, np.float64))
    log_q = -0.5 * np.sum(np.log(2 * np.pi * var) + (z - mu) ** 2 / var, axis=-1)
    ratio = log_q - _vamp_reference_log_prob(model, params, z)
    se = ratio.std(0) / math.sqrt(k)
    np.testing.assert_array_less(np.abs(np.asarray(terms["kl"]) - ratio.mean(0)), 5 * 2**0.5 * se)


@settings(max_examples=20)
@given(d=st.integers(1, 4), data=st.data())
def test_bernoulli_log_probability_sums_to_one_over_every_binary_image(d, data):
    logits = data.draw(_arrays((1, 1, d), st.floats(-8.0, 8.0, width=32)))
    images = np.array(list(itertools.product([0.0, 1.0], repeat=d)), np.float32)
    log_p = likelihoods.Bernoulli().log_prob(images.reshape(-1, 1, 1, d), logits)
    assert float(jax.nn.logsumexp(log_p)) == pytest.approx(0.0, abs=1e-5)


def _integral(log_density, grid):
    """∫ exp(log_density) over a 1-D grid (trapezoid rule, float64)."""
    return np.trapezoid(np.exp(np.asarray(log_density, np.float64)), grid)


@settings(max_examples=20)
@given(mean=st.floats(-1.0, 2.0), scale=st.floats(0.05, 1.0))
def test_gaussian_log_density_integrates_to_one(mean, scale):
    grid = np.linspace(mean - 12 * scale, mean + 12 * scale, 20_001)
    x = grid.astype(np.float32).reshape(-1, 1, 1, 1)
    log_p = likelihoods.Gaussian(scale).log_prob(x, jnp.full((1, 1, 1), mean, jnp.float32))
    assert _integral(log_p, grid) == pytest.approx(1.0, abs=1e-4)


@settings(max_examples=20)
@given(mean=st.floats(-1.0, 2.0), raw_scale=st.floats(-3.0, 1.0))
def test_gaussian_with_a_learned_scale_integrates_to_one(mean, raw_scale):
    sigma = math.log1p(math.exp(raw_scale)) + 1e-3  # softplus(s) + 10⁻³, the model's scale
    grid = np.linspace(mean - 12 * sigma, mean + 12 * sigma, 20_001)
    x = grid.astype(np.float32).reshape(-1, 1, 1, 1)
    params = jnp.asarray([mean, raw_scale], jnp.float32).reshape(2, 1, 1, 1)
    log_p = likelihoods.Gaussian(0.0).log_prob(x, params)
    assert _integral(log_p, grid) == pytest.approx(1.0, abs=1e-4)


@settings(max_examples=30)
@given(logit=st.floats(-20.0, 20.0))
def test_continuous_bernoulli_log_density_integrates_to_one_on_the_unit_interval(logit):
    grid = np.linspace(0.0, 1.0, 200_001)
    x = grid.astype(np.float32).reshape(-1, 1, 1, 1)
    log_p = likelihoods.ContinuousBernoulli().log_prob(x, jnp.full((1, 1, 1), logit))
    # Near |logit| = 20 the density piles up at one end, e^20 ≈ 5·10⁸ against 1 at the
    # other: the grid resolves it to within 1e-3.
    assert _integral(log_p, grid) == pytest.approx(1.0, abs=1e-3)


@pytest.fixture(scope="module")
def tiny_model():
    cfg = config_lib.base_config().model
    cfg.posterior, cfg.encoder_widths, cfg.latent_dim = "gaussian", (16,), 2
    model = model_lib.build_model(cfg, (4, 4, 1), 0)
    return model, model_lib.init_params(model, jax.random.key(0))


binary_batches = _arrays((4, 4, 4, 1), st.sampled_from([0.0, 1.0]))


@functools.partial(jax.jit, static_argnums=(0, 4))
def _iwae_bounds(model, params, x, keys, k):
    """L_k(x) for each key: (keys, B)."""
    return jax.vmap(lambda key: objectives.iwae_bound(model, params, x, key, k))(keys)


@functools.partial(jax.jit, static_argnums=0)
def _elbos(model, params, x, keys):
    """The single-sample ELBO (analytic KL) for each key: (keys, B)."""
    return jax.vmap(lambda key: objectives.elbo_loss(model, params, x, key)[1]["elbo"])(keys)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _log_px(model, params, x, key, num_samples, chunk_size):
    return metrics.importance_sampled_log_likelihood(model, params, x, key, num_samples, chunk_size)


@settings(max_examples=15)
@given(seed=seeds, x=binary_batches)
def test_iwae_bound_at_k_1_is_the_single_sample_elbo(tiny_model, seed, x):
    """L_1 = log p(x|z) + log p(z) − log q(z|x) for the one draw z its key gives."""
    model, params = tiny_model
    key = jax.random.key(seed)
    bound = objectives.iwae_bound(model, params, jnp.asarray(x), key, 1)
    q = model.apply({"params": params}, jnp.asarray(x), method=model.encode)
    z = q.sample(key, 1)[0]
    decoded = model.apply({"params": params}, z, method=model.decode)
    elbo = (
        model.likelihood.log_prob(jnp.asarray(x), decoded)
        + posteriors.standard_normal_log_prob(z)
        - q.log_prob(z)
    )
    np.testing.assert_allclose(bound, elbo, rtol=1e-5, atol=1e-4)


@settings(max_examples=8)
@given(seed=seeds, x=binary_batches)
def test_iwae_bound_is_monotone_in_k_in_expectation(tiny_model, seed, x):
    """E[L_1] ≤ E[L_4] ≤ E[L_16] (Burda et al., 2015, Theorem 1), and E[L_1] is the
    analytic-KL ELBO; each expectation estimated from 400 independent bounds."""
    model, params = tiny_model
    x = jnp.asarray(x)
    keys = jax.random.split(jax.random.key(seed), 400)
    means, ses = {}, {}
    for k in (1, 4, 16):
        draws = np.asarray(_iwae_bounds(model, params, x, keys, k))
        means[k], ses[k] = draws.mean(0), draws.std(0) / math.sqrt(len(keys))
    elbos = np.asarray(_elbos(model, params, x, keys))
    elbo, elbo_se = elbos.mean(0), elbos.std(0) / math.sqrt(len(keys))
    np.testing.assert_array_less(np.abs(means[1] - elbo), 5 * np.hypot(ses[1], elbo_se))
    for small, large in ((1, 4), (4, 16)):
        tolerance = 5 * np.hypot(ses[small], ses[large])
        np.testing.assert_array_less(means[small] - tolerance, means[large])


@settings(max_examples=10)
@given(
    num_samples=st.integers(1, 40),
    chunk_fraction=st.floats(0.0, 1.0),
    seed=seeds,
    x=binary_batches,
)
def test_importance_sampled_log_likelihood_does_not_depend_on_the_chunking(
    tiny_model, num_samples, chunk_fraction, seed, x
):
    model, params = tiny_model
    chunk = 1 + int(chunk_fraction * (num_samples + 4))  # past K too: the last chunk masks
    key = jax.random.key(seed)
    whole = _log_px(model, params, jnp.asarray(x), key, num_samples, num_samples)
    chunked = _log_px(model, params, jnp.asarray(x), key, num_samples, chunk)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5)


@settings(max_examples=6)
@given(split_at=st.integers(1, 7), seed=seeds)
def test_importance_sampled_log_likelihood_does_not_depend_on_the_batching(
    tiny_model, split_at, seed
):
    """Scoring 8 examples as one batch or as two (their own draws each) estimates the same
    log p(x): the two estimates of each example agree within their Monte-Carlo error."""
    model, params = tiny_model
    x = (jax.random.uniform(jax.random.key(seed), (8, 4, 4, 1)) < 0.4).astype(jnp.float32)
    k = 2000

    def estimate(rows, key):
        return np.asarray(_log_px(model, params, x[rows], key, k, 500))

    keys = jax.random.split(jax.random.key(seed + 1), 9)
    whole = np.stack([estimate(slice(None), key) for key in keys[:3]])  # (3, 8)
    parts = np.stack(
        [
            np.concatenate([estimate(slice(0, split_at), a), estimate(slice(split_at, 8), b)])
            for a, b in zip(keys[3::2], keys[4::2], strict=True)
        ]
    )
    spread = np.concatenate([whole, parts]).std(0, ddof=1)
    np.testing.assert_array_less(np.abs(whole.mean(0) - parts.mean(0)), 8 * spread + 1e-3)


@settings(max_examples=30)
@given(
    n=st.integers(1, 12),
    d=st.sampled_from([1, 5, 16]),
    first_row=st.integers(0, 10_000),
    cut=st.floats(0.0, 1.0),
    data=st.data(),
)
def test_fixed_binarization_is_the_same_whatever_the_row_offset(n, d, first_row, cut, data):
    """Rows first_row … of a split, binarized in two pieces, equal the same rows binarized
    at once: the generator is advanced past the rows before each piece."""
    images = data.draw(_arrays((n, d, 1, 1), st.floats(0.0, 1.0, width=32)))
    at = int(cut * n)
    whole = preprocessing.fixed_binarization(images, first_row)
    pieces = np.concatenate(
        [
            preprocessing.fixed_binarization(images[:at], first_row),
            preprocessing.fixed_binarization(images[at:], first_row + at),
        ]
    )
    np.testing.assert_array_equal(pieces, whole)
    # and it is the benchmark's binarization of the rows of a split starting at row 0
    reference = np.random.default_rng(preprocessing.EVAL_BINARIZATION_SEED).random(
        ((first_row + n), d)
    )[first_row:]
    np.testing.assert_array_equal(whole.reshape(n, d), (reference < images.reshape(n, d)))
