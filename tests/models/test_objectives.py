import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cvae import config as config_lib
from cvae.evaluation import metrics
from cvae.models import objectives
from cvae.models import vae as model_lib

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def gaussian_setup():
    cfg = config_lib.base_config().model
    cfg.posterior = "gaussian"
    cfg.encoder_widths = (32,)
    cfg.latent_dim = 4
    model = model_lib.build_model(cfg, (6, 6, 1), 0)
    params = model_lib.init_params(model, jax.random.key(0))
    x = (jax.random.uniform(jax.random.key(1), (128, 6, 6, 1)) < 0.3).astype(jnp.float32)
    return model, params, x


def _mean_over_keys(fn, n_keys=10):
    values = np.stack([np.asarray(fn(jax.random.key(100 + i))) for i in range(n_keys)])
    return values.mean(), values.std() / np.sqrt(values.size)


@pytest.mark.slow
def test_iwae_bound_rises_with_k_and_sits_above_the_elbo(gaussian_setup):
    model, params, x = gaussian_setup
    elbo, elbo_se = _mean_over_keys(lambda k: objectives.elbo_loss(model, params, x, k)[1]["elbo"])
    bounds = {}
    for k in (1, 5, 50):
        bound = lambda key, k=k: objectives.iwae_bound(model, params, x, key, k)
        bounds[k], _ = _mean_over_keys(bound)
    # L_1 is an unbiased estimate of the ELBO; L_1 ≤ L_5 ≤ L_50 in expectation.
    assert abs(bounds[1] - elbo) < 5 * elbo_se + 0.05
    assert bounds[5] > elbo
    assert bounds[1] < bounds[5] < bounds[50]


@pytest.mark.parametrize("prior", ["standard", "vamp"])
def test_the_annealed_iwae_bound_tempers_each_weights_latent_part_by_beta(prior):
    """β = 1 is the IWAE bound bitwise (loss and gradient); β < 1 is
    log (1/k) Σ exp(log p(x|z_i) + β (log p(z_i) − log q(z_i|x))) over the same draws, and
    the reported "iwae" stays the untempered bound."""
    cfg = config_lib.base_config().model
    cfg.update({"posterior": "gaussian", "encoder_widths": (16,), "latent_dim": 3})
    cfg.prior, cfg.num_pseudo_inputs = prior, 4
    model = model_lib.build_model(cfg, (4, 4, 1), 0)
    params = model_lib.init_params(model, jax.random.key(0))
    x = (jax.random.uniform(jax.random.key(1), (6, 4, 4, 1)) < 0.4).astype(jnp.float32)
    key, k = jax.random.key(2), 5

    def loss(p, beta):
        return objectives.iwae_loss(model, p, x, key, k=k, beta=beta)

    plain, terms = loss(params, 1.0)
    np.testing.assert_array_equal(plain, -jnp.mean(objectives.iwae_bound(model, params, x, key, k)))
    tempered, tempered_terms = loss(params, 0.3)
    np.testing.assert_array_equal(tempered_terms["iwae"], terms["iwae"])
    posterior = model.apply({"params": params}, x, method=model.encode)
    z = posterior.sample(key, k)
    log_w, dec = objectives.weights_at(model, params, x, posterior, z)
    recon = model.likelihood.log_prob(x, dec)
    want = jax.nn.logsumexp(recon + 0.3 * (log_w - recon), axis=0) - np.log(k)
    np.testing.assert_allclose(tempered, -np.mean(want), rtol=1e-6)
    assert abs(float(tempered) - float(plain)) > 1e-3  # the tempering is not a no-op

    traced = jax.grad(lambda p: loss(p, jnp.float32(1.0))[0])(params)
    untempered = jax.grad(lambda p: -jnp.mean(objectives.iwae_bound(model, p, x, key, k)))(params)
    for a, b in zip(jax.tree_util.tree_leaves(traced), jax.tree_util.tree_leaves(untempered)):
        np.testing.assert_array_equal(a, b)


def test_importance_sampled_log_likelihood_exceeds_elbo(gaussian_setup):
    model, params, x = gaussian_setup
    log_px = metrics.importance_sampled_log_likelihood(
        model, params, x, jax.random.key(3), num_samples=500, chunk_size=100
    )
    elbo = objectives.elbo_loss(model, params, x, jax.random.key(4))[1]["elbo"]
    iwae50 = objectives.iwae_bound(model, params, x, jax.random.key(5), 50)
    assert log_px.shape == (128,)
    assert float(log_px.mean()) > float(iwae50.mean()) > float(elbo.mean())


@pytest.mark.slow
@pytest.mark.parametrize("chunk_size", [7, 50, 120])
def test_chunking_does_not_change_the_estimate(gaussian_setup, chunk_size):
    model, params, x = gaussian_setup
    key = jax.random.key(9)
    whole = metrics.importance_sampled_log_likelihood(model, params, x, key, 120, chunk_size=120)
    chunked = metrics.importance_sampled_log_likelihood(model, params, x, key, 120, chunk_size)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5)


def test_importance_sampling_refuses_point_masses():
    cfg = config_lib.base_config().model
    cfg.posterior = "deterministic"
    model = model_lib.build_model(cfg, (6, 6, 1), 0)
    params = model_lib.init_params(model, jax.random.key(0))
    with pytest.raises(ValueError, match="density"):
        metrics.importance_sampled_log_likelihood(
            model, params, jnp.zeros((2, 6, 6, 1)), jax.random.key(0), 10
        )


def test_same_key_same_loss_different_key_different_loss(gaussian_setup):
    model, params, x = gaussian_setup
    a = objectives.elbo_loss(model, params, x, jax.random.key(1))[0]
    b = objectives.elbo_loss(model, params, x, jax.random.key(1))[0]
    c = objectives.elbo_loss(model, params, x, jax.random.key(2))[0]
    assert float(a) == float(b) and float(a) != float(c)


@pytest.mark.slow
def test_free_bits_remove_the_kl_gradient_below_the_floor(gaussian_setup):
    model, params, x = gaussian_setup
    key = jax.random.key(0)
    grad = lambda **kw: jax.grad(lambda p: objectives.elbo_loss(model, p, x, key, **kw)[0])(params)
    floored = grad(beta=1.0, free_bits=100.0)  # every dimension's KL is far below 100 nats
    recon_only = grad(beta=0.0)
    plain = grad(beta=1.0)
    for a, b in zip(jax.tree_util.tree_leaves(floored), jax.tree_util.tree_leaves(recon_only)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    leaves = zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(recon_only))
    assert any(not np.allclose(a, b) for a, b in leaves)


def test_kl_warmup_is_linear_then_flat():
    w = [float(objectives.kl_weight(s, 2.0, 100)) for s in (0, 50, 100, 1000)]
    assert w == [0.0, 1.0, 2.0, 2.0]
    assert float(objectives.kl_weight(0, 0.5, 0)) == 0.5


def test_active_units_counts_dimensions_whose_mean_varies():
    rng = np.random.default_rng(0)
    means = np.concatenate([rng.normal(size=(1000, 3)), 0.01 * rng.normal(size=(1000, 2))], 1)
    count, variances = metrics.active_units(means)
    assert count == 3 and variances.shape == (5,)


def test_running_moments_over_uneven_batches_equal_the_variance_of_the_whole():
    """Evaluation's active units come from moments merged batch by batch; with a mean of
    10⁶ a naive sum of squares would lose every digit of a unit variance."""
    rng = np.random.default_rng(0)
    means = 1e6 + rng.normal(size=(1000, 4)) * np.array([1.0, 0.2, 0.05, 0.0])
    moments = metrics.RunningMoments()
    for start, stop in ((0, 1), (1, 300), (300, 300), (300, 999), (999, 1000)):
        moments.add(means[start:stop])
    np.testing.assert_allclose(moments.variance, np.var(means, axis=0), rtol=1e-9, atol=1e-12)
    assert moments.count == 1000 and moments.active_units() == metrics.active_units(means)[0] == 2


def _imq_mmd_reference(a, b, scales=objectives.MMD_SCALES):
    """The WAE-MMD estimator written out with numpy loops over pairs."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n, d = a.shape
    k = lambda u, v: sum(2 * d * s / (2 * d * s + np.sum((u - v) ** 2)) for s in scales)
    within = sum(k(a[i], a[j]) + k(b[i], b[j]) for i in range(n) for j in range(n) if i != j)
    across = sum(k(a[i], b[j]) for i in range(n) for j in range(n))
    return within / (n * (n - 1)) - 2 * across / n**2


def test_imq_mmd_equals_a_pairwise_reference():
    a = jax.random.normal(jax.random.key(0), (7, 3))
    b = 0.5 + jax.random.normal(jax.random.key(1), (7, 3))
    np.testing.assert_allclose(
        float(objectives.imq_mmd(a, b)), _imq_mmd_reference(a, b), atol=2e-5
    )  # float32 against float64 over 7 kernel scales


def test_imq_mmd_is_near_zero_for_one_gaussian_and_grows_with_a_mean_shift():
    n, d = 500, 8
    same = [
        float(
            objectives.imq_mmd(
                jax.random.normal(jax.random.key(2 * i), (n, d)),
                jax.random.normal(jax.random.key(2 * i + 1), (n, d)),
            )
        )
        for i in range(5)
    ]
    shifted = [
        float(
            objectives.imq_mmd(
                jax.random.normal(jax.random.key(10), (n, d)) + shift,
                jax.random.normal(jax.random.key(11), (n, d)),
            )
        )
        for shift in (0.25, 0.5, 1.0, 2.0)
    ]
    # Unbiased: same-distribution estimates scatter around 0, well below any shift's.
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same)) + 1e-3
    assert max(abs(v) for v in same) < shifted[0] / 3
    assert all(x < y for x, y in zip(shifted, shifted[1:]))


@pytest.mark.slow
def test_decoder_gradient_penalty_equals_finite_differences():
    cfg = config_lib.base_config().model
    cfg.posterior, cfg.encoder_widths, cfg.latent_dim = "deterministic", (16,), 3
    cfg.activation = "tanh"  # smooth, so central differences converge
    model = model_lib.build_model(cfg, (4, 4, 1), 0)
    params = model_lib.init_params(model, jax.random.key(0))
    z = jax.random.normal(jax.random.key(1), (5, 3))
    decoded_sum = lambda codes: np.asarray(
        model.likelihood.mean(model.apply({"params": params}, codes, method=model.decode)),
        np.float64,
    ).sum(axis=(1, 2, 3))
    eps = 1e-2
    grads = np.stack(
        [
            (decoded_sum(z + eps * np.eye(3)[j]) - decoded_sum(z - eps * np.eye(3)[j])) / (2 * eps)
            for j in range(3)
        ],
        axis=-1,
    )
    np.testing.assert_allclose(
        objectives.decoder_gradient_penalty(model, params, z), np.sum(grads**2, axis=-1), rtol=2e-3
    )


@pytest.mark.slow
def test_wae_loss_is_reconstruction_plus_weighted_mmd_and_draws_the_prior_from_its_key():
    cfg = config_lib.base_config().model
    cfg.posterior, cfg.encoder_widths, cfg.latent_dim = "deterministic", (16,), 3
    model = model_lib.build_model(cfg, (4, 4, 1), 0)
    params = model_lib.init_params(model, jax.random.key(0))
    x = (jax.random.uniform(jax.random.key(1), (32, 4, 4, 1)) < 0.4).astype(jnp.float32)
    loss, terms = objectives.wae_mmd_loss(model, params, x, jax.random.key(2), mmd_weight=3.0)
    np.testing.assert_allclose(
        float(loss), -float(jnp.mean(terms["recon"])) + 3.0 * float(terms["mmd"]), rtol=1e-6
    )
    again = objectives.wae_mmd_loss(model, params, x, jax.random.key(2), mmd_weight=3.0)[1]
    other = objectives.wae_mmd_loss(model, params, x, jax.random.key(3), mmd_weight=3.0)[1]
    assert float(again["mmd"]) == float(terms["mmd"]) != float(other["mmd"])
    # The MMD's gradient reaches the encoder: it pulls the codes toward N(0, I).
    grads = jax.grad(
        lambda p: objectives.wae_mmd_loss(model, p, x, jax.random.key(2), mmd_weight=1.0)[1]["mmd"]
    )(params)
    assert sum(float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads["encoder"])) > 0
