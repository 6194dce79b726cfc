"""Deep hierarchies of latent maps (``model.groups_per_level``): the layout of groups on the
residual pyramid, each group's KL in closed form against Monte Carlo, ``descend`` from any
group, and the configs that cannot be built refused in one line."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cvae import config as config_lib
from cvae.errors import ConfigError
from cvae.models import likelihoods, posteriors
from cvae.models import vae as vae_lib
from cvae.models.hierarchy import StochasticLayer
from cvae.models.residual_hierarchy import ResidualTopDownVAE

pytestmark = pytest.mark.unit

BERNOULLI = likelihoods.make_likelihood("bernoulli")


def _images(n, shape=(8, 8, 1), seed=0):
    return jax.random.bernoulli(jax.random.key(seed), 0.4, (n, *shape)).astype(jnp.float32)


def _grouped_config(**fields):
    """Five groups on the 8×8 digits: two 4×4×2 maps, then three 2×2×2 maps on top."""
    m = config_lib.base_config().model
    m.update(
        {
            "arch": "resnet",
            "inference": "top_down",
            "decoder_layers": "all",
            "conv_channels": (8, 16),
            "groups_per_level": (2, 3),
            "code_channels": 2,
            "posterior": "gaussian",
            **fields,
        }
    )
    return m


def test_groups_sit_on_their_levels_as_maps_and_only_a_new_level_upsamples():
    model = vae_lib.build_model(_grouped_config(), (8, 8, 1), 10)
    assert model.layer_shapes == ((4, 4, 2),) * 2 + ((2, 2, 2),) * 3
    assert model.layer_dims == (32, 32, 8, 8, 8) and model.code_dim == 88
    assert model.layer_levels == (0, 0, 1, 1, 1)
    params = vae_lib.init_params(model, jax.random.key(0))
    names = set(params)
    assert {n for n in names if n.startswith("expand")} == {"expand_2"}  # z₃ → z₂ changes level
    assert {n for n in names if n.startswith("trunk")} == {"trunk_1", "trunk_2"}
    assert {f"posterior_{i}" for i in range(1, 6)} <= names
    assert {f"prior_{i}" for i in range(1, 5)} <= names and "prior_5" not in names
    # a map's heads are convolutions at every position, not dense layers over the grid
    assert params["posterior_1"]["mean"]["kernel"].shape == (1, 1, 8, 2)
    assert params["state_3"]["write"]["kernel"].shape == (1, 1, 2, 16)


def test_one_group_per_level_is_the_layout_without_groups():
    """groups = (1, 1) names, initialises and computes what the two-level design does."""
    layers = (StochasticLayer(4, (16,)), StochasticLayer(2, (8,), "collapsed", 0.1))
    plain, grouped = (
        ResidualTopDownVAE(
            layers, BERNOULLI, (8, 8, 1), "relu", decoder_layers="all", channels=(8, 8), **extra
        )
        for extra in ({}, {"groups": (1, 1)})
    )
    key = jax.random.key(3)
    a, b = vae_lib.init_params(plain, key), vae_lib.init_params(grouped, key)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    x = _images(8)
    want = plain.elbo_terms(a, x, jax.random.key(4))
    got = grouped.elbo_terms(a, x, jax.random.key(4))
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.parametrize("top", ["gaussian", "collapsed"])
def test_each_groups_kl_in_closed_form_is_its_monte_carlo_expectation(top):
    """Over K joint draws z ~ q, each group's closed-form KL(q(z_l | z_{>l}, x) ‖ p(z_l |
    z_{>l})) averages to the mean of log q(z_l | ·) − log p(z_l | ·) at the draws, within
    four standard errors of the difference (the top group's against N(0, I))."""
    m = _grouped_config(upper_posteriors=("gaussian", "collapsed", "gaussian", top))
    m.upper_sigma0s = (0.3, 0.3, 0.3, 0.3)
    model = vae_lib.build_model(m, (8, 8, 1), 10)
    params = vae_lib.init_params(model, jax.random.key(1))
    x, k = _images(4), 4000
    found, zs, _, conditionals, top_log_p = model.apply({"params": params}, x, jax.random.key(2), k)
    closed = [
        jnp.sum(posteriors.diag_normal_kl_per_dim(q.mean, q.log_var, *p), axis=-1)
        for q, p in zip(found[:-1], conditionals, strict=True)
    ] + [jnp.sum(found[-1].kl_per_dim(), axis=-1)]
    log_p = [
        posteriors.diag_normal_log_prob(z, mean, log_var)
        for z, (mean, log_var) in zip(zs[:-1], conditionals, strict=True)
    ] + [top_log_p]
    for layer, (q, z, kl, lp) in enumerate(zip(found, zs, closed, log_p, strict=True), start=1):
        sampled = q.log_prob(z) - lp  # (K, B)
        difference = sampled - jnp.broadcast_to(kl, sampled.shape)
        error = np.asarray(jnp.std(difference, axis=0)) / np.sqrt(k)
        gap = np.abs(np.asarray(jnp.mean(difference, axis=0)))
        assert np.all(np.asarray(jnp.mean(kl, axis=0)) > 0.05), layer  # a real KL to test
        assert np.all(gap < 4 * error + 1e-4), (layer, gap, error)


def test_descend_keeps_the_groups_at_and_above_a_layer_and_regenerates_those_below():
    model = vae_lib.build_model(_grouped_config(), (8, 8, 1), 10)
    params = vae_lib.init_params(model, jax.random.key(0))
    code = model.apply({"params": params}, jax.random.key(5), 3, method=model.sample_prior)
    other = model.apply({"params": params}, jax.random.key(6), 3, method=model.sample_prior)
    for layer in (2, 3, 5):
        mixed = jnp.concatenate(
            model.split_code(other)[: layer - 1] + model.split_code(code)[layer - 1 :], axis=-1
        )
        got = model.apply({"params": params}, mixed, layer, method=model.descend)
        kept, regenerated = model.split_code(got), model.split_code(code)
        for i in range(layer - 1, 5):
            np.testing.assert_array_equal(kept[i], regenerated[i])
        # below: the conditional means given the kept groups, not the other code's draws
        want = model.apply({"params": params}, code, layer, method=model.descend)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"groups_per_level": (2, 0)}, "model.groups_per_level"),
        ({"groups_per_level": (2, 3, 1)}, "one count per level: 2"),
        ({"arch": "mlp"}, "unless model.arch='resnet'"),
        ({"inference": "bottom_up"}, "model.inference='top_down'"),
        ({"upper_latent_dims": (4,), "upper_widths": ((8,),)}, "model.upper_latent_dims"),
        ({"upper_posteriors": ("gaussian",)}, "model.upper_posteriors"),
        ({"upper_sigma0s": (0.1, 0.1)}, "model.upper_sigma0s"),
    ],
)
def test_a_grouped_config_that_cannot_be_built_is_refused_in_one_line(fields, message):
    with pytest.raises(ConfigError, match=message) as refused:
        vae_lib.build_model(_grouped_config(**fields), (8, 8, 1), 10)
    assert "\n" not in str(refused.value)


def test_groups_on_levels_the_images_cannot_halve_to_are_refused_in_one_line():
    m = _grouped_config(conv_channels=(8, 8, 8), groups_per_level=(1, 1, 1))
    with pytest.raises(ValueError, match="top level on a 1×1 grid") as refused:
        vae_lib.build_model(m, (8, 8, 1), 10)
    assert "\n" not in str(refused.value)


def test_a_group_betas_count_follows_the_groups():
    c = config_lib.base_config()
    c.model = _grouped_config()
    c.objective.upper_betas = (1.0, 1.0)
    with pytest.raises(ConfigError, match="4 finite β"):
        config_lib.validate(c)
    c.objective.upper_betas = (1.0, 0.5, 0.5, 0.25)
    config_lib.validate(c)


def test_temperatures_scale_each_groups_noise():
    """τ = 1 everywhere is the plain draw; τ = 0 everywhere the chain of conditional means
    (no key matters); doubling the top's τ doubles its draw under N(0, I)."""
    model = vae_lib.build_model(_grouped_config(), (8, 8, 1), 10)
    params = vae_lib.init_params(model, jax.random.key(0))

    def draw(key, temperatures=None):
        return model.apply({"params": params}, key, 4, temperatures, method=model.sample_prior)

    plain = draw(jax.random.key(1))
    np.testing.assert_array_equal(draw(jax.random.key(1), jnp.ones(5)), plain)
    np.testing.assert_array_equal(
        draw(jax.random.key(1), jnp.zeros(5)), draw(jax.random.key(2), jnp.zeros(5))
    )
    hot_top = draw(jax.random.key(1), jnp.array([1.0, 1.0, 1.0, 1.0, 2.0]))
    np.testing.assert_array_equal(model.split_code(hot_top)[-1], 2 * model.split_code(plain)[-1])
    assert not np.allclose(model.split_code(hot_top)[0], model.split_code(plain)[0])


def test_resampling_one_group_keeps_every_other_group_and_reaches_the_image():
    """The decoder reads the top-down state every group writes into: a redrawn group, even
    the top one with every group below it kept, changes p(x|z)."""
    model = vae_lib.build_model(_grouped_config(), (8, 8, 1), 10)
    params = vae_lib.init_params(model, jax.random.key(0))
    code = model.apply({"params": params}, jax.random.key(5), 3, method=model.sample_prior)
    decoded = model.apply({"params": params}, code, method=model.decode)
    for layer in (1, 3, 5):
        got = model.apply(
            {"params": params}, code, layer, jax.random.key(7), method=model.resample_layer
        )
        for i, (new, old) in enumerate(
            zip(model.split_code(got), model.split_code(code), strict=True), start=1
        ):
            assert np.array_equal(new, old) is (i != layer), (layer, i)
        moved = model.apply({"params": params}, got, method=model.decode)
        assert np.abs(moved - decoded).max() > 1e-4, layer
    with pytest.raises(ValueError, match="layer must be 1 … 5, got 6"):
        model.apply({"params": params}, code, 6, jax.random.key(7), method=model.resample_layer)


def test_kl_balancing_weights_each_groups_kl_by_its_share_per_dimension():
    """γ_l ∝ (mean KL_l + 0.01) / (d_l / Σ d), mean 1, no gradient; with it the loss is
    −recon + Σ_l β γ_l KL_l and the reported terms are unchanged; without it, the plain loss."""
    from cvae.models.objectives import elbo as elbo_lib

    model = vae_lib.build_model(_grouped_config(), (8, 8, 1), 10)
    params = vae_lib.init_params(model, jax.random.key(0))
    x, key = _images(16), jax.random.key(9)
    plain, terms = elbo_lib.layered_elbo_loss(model, params, x, key, beta=0.5)
    balanced, same_terms = elbo_lib.layered_elbo_loss(
        model, params, x, key, beta=0.5, kl_balance=True
    )
    off, _ = elbo_lib.layered_elbo_loss(model, params, x, key, beta=0.5, kl_balance=False)
    assert float(off) == float(plain)
    for name in terms:
        np.testing.assert_array_equal(same_terms[name], terms[name])
    kls = [np.mean(np.asarray(terms[f"kl_{i}"], np.float64)) for i in range(1, 6)]
    dims = np.asarray(model.layer_dims, np.float64)
    gammas = (np.asarray(kls) + 0.01) / (dims / dims.sum())
    gammas /= gammas.mean()
    got = elbo_lib.balance_coefficients([terms[f"kl_{i}"] for i in range(1, 6)], model.layer_dims)
    np.testing.assert_allclose(got, gammas, rtol=1e-5)
    want = -np.mean(np.asarray(terms["recon"], np.float64)) + 0.5 * np.sum(gammas * kls)
    np.testing.assert_allclose(float(balanced), want, rtol=1e-5)
    assert not np.allclose(gammas, 1.0)  # the groups differ: the test can tell
    grad = jax.grad(lambda k: jnp.sum(elbo_lib.balance_coefficients([k, k + 1.0], (4, 4))))(
        jnp.ones(3)
    )
    np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"objective.kl_warmup_steps": 0}, "objective.kl_warmup_steps > 0"),
        ({"model.groups_per_level": (), "model.arch": "mlp"}, "unless a hierarchy"),
        ({"objective.kind": "iwae"}, "objective.kind='elbo'"),
    ],
)
def test_kl_balancing_outside_a_warming_hierarchy_is_refused(fields, message):
    c = config_lib.base_config()
    c.model = _grouped_config(inference="top_down")
    c.objective.kl_balance, c.objective.kl_warmup_steps = True, 100
    for dotted, value in fields.items():
        section, name = dotted.split(".")
        c[section][name] = value
    if c.model.arch == "mlp":
        c.model.inference, c.model.decoder_layers = "bottom_up", "bottom"
    with pytest.raises(ConfigError, match="objective.kl_balance"):
        try:
            config_lib.validate(c)
        except ConfigError as refused:
            assert message in str(refused)
            raise
