"""Models whose code is a map (``model.arch = "conv_map"``, ``cvae.models.code_maps``): the
map's shape for each image size, the KL per position, σ₀ → 0 as the deterministic
tokenizer, and codes of the wrong shape refused in one line."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cvae import config as config_lib
from cvae.errors import ConfigError
from cvae.models import objectives, protocol
from cvae.models import vae as vae_lib

pytestmark = pytest.mark.unit


def _tokenizer(shape, **fields):
    cfg = config_lib.base_config().model
    cfg.update({"arch": "conv_map", "conv_channels": (8, 8), **fields})
    model = vae_lib.build_model(cfg, shape, 10)
    return model, vae_lib.init_params(model, jax.random.key(0))


@pytest.mark.parametrize(
    "shape, stages, channels, code_shape",
    [
        ((28, 28, 1), 2, 2, (7, 7, 2)),  # MNIST
        ((28, 28, 1), 2, 8, (7, 7, 8)),
        ((32, 32, 3), 2, 4, (8, 8, 4)),  # CIFAR-shaped colour images
        ((8, 8, 1), 2, 4, (2, 2, 4)),  # the digits
        ((8, 8, 1), 1, 4, (4, 4, 4)),
    ],
)
def test_the_code_is_a_map_of_the_declared_shape_and_decodes_from_either_form(
    shape, stages, channels, code_shape
):
    model, params = _tokenizer(shape, conv_channels=(8,) * stages, code_channels=channels)
    assert model.layer_shapes == (code_shape,)
    assert model.layer_dims == (int(np.prod(code_shape)),) and model.code_dim == np.prod(code_shape)
    x = jax.random.uniform(jax.random.key(1), (3, *shape))
    mean = model.apply({"params": params}, x, method=model.encode).mean
    assert mean.shape == (3, model.code_dim)
    (maps,) = protocol.shaped_layers(model, mean)
    assert maps.shape == (3, *code_shape)
    # position (i, j) of the map is the c numbers at (i·w + j)·c of the flat code
    np.testing.assert_array_equal(maps[:, 1, 0], mean[:, code_shape[1] * channels :][:, :channels])
    from_maps = model.apply({"params": params}, maps, method=model.decode)
    from_flat = model.apply({"params": params}, mean, method=model.decode)
    assert from_maps.shape == (3, *shape)
    np.testing.assert_array_equal(from_maps, from_flat)
    np.testing.assert_array_equal(protocol.flat_code(model, maps), mean)


@pytest.mark.parametrize("family", ["gaussian", "collapsed"])
def test_the_kl_is_analytic_per_position_and_matches_monte_carlo(family):
    """KL(q ‖ N(0, I)) at each position of the map (summed over its c channels) against
    E_q[log q(z) − log p(z)] from 40,000 draws: within 4 standard errors."""
    model, params = _tokenizer(
        (8, 8, 1), conv_channels=(8,), code_channels=3, posterior=family, sigma0=0.3
    )
    x = jax.random.uniform(jax.random.key(2), (2, 8, 8, 1))
    posterior = model.apply({"params": params}, x, method=model.encode)
    (analytic,) = protocol.shaped_layers(model, posterior.kl_per_dim())
    analytic = analytic.sum(-1)  # (2, 4, 4): per position
    z = posterior.sample(jax.random.key(3), 40_000)  # (n, 2, 48)
    log_var = jnp.broadcast_to(posterior.log_var, posterior.mean.shape)
    log_q = -0.5 * (jnp.log(2 * jnp.pi) + log_var + (z - posterior.mean) ** 2 / jnp.exp(log_var))
    log_p = -0.5 * (jnp.log(2 * jnp.pi) + z**2)
    (per_draw,) = protocol.shaped_layers(model, log_q - log_p)
    per_draw = per_draw.sum(-1)  # (n, 2, 4, 4)
    estimate, error = per_draw.mean(0), per_draw.std(0) / np.sqrt(len(z))
    assert analytic.shape == (2, 4, 4) and np.all(analytic > 0)
    assert np.all(np.abs(estimate - analytic) < 4 * error + 1e-4)
    # and the model's KL is the sum over positions
    kl = model.elbo_terms(params, x, jax.random.key(4))["kl"]
    np.testing.assert_allclose(kl, analytic.sum((1, 2)), rtol=1e-5)


def test_sigma0_to_zero_is_the_deterministic_tokenizer():
    """Same parameters: the collapsed tokenizer's draws and reconstruction term converge to
    the autoencoder's as σ₀ → 0 (and its KL is ½‖μ‖² plus the σ₀ constant)."""
    model, params = _tokenizer((8, 8, 1), conv_channels=(8,), code_channels=2)
    x = jax.random.bernoulli(jax.random.key(5), 0.4, (6, 8, 8, 1)).astype(jnp.float32)
    deterministic = model.clone(posterior_family="deterministic")
    _, auto = objectives.elbo_loss(deterministic, params, x, jax.random.key(6))
    gaps = []
    for sigma0 in (1e-1, 1e-3, 1e-6):
        collapsed = model.with_sigma0s((sigma0,))
        terms = collapsed.elbo_terms(params, x, jax.random.key(6))
        gaps.append(float(jnp.max(jnp.abs(terms["recon"] - auto["recon"]))))
        mean = collapsed.apply({"params": params}, x, method=collapsed.encode).mean
        d = collapsed.code_dim
        constant = 0.5 * d * (sigma0**2 - 1 - np.log(sigma0**2))
        np.testing.assert_allclose(
            terms["kl"], 0.5 * jnp.sum(mean**2, -1) + constant, rtol=1e-5, atol=1e-3
        )
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-3


def test_a_code_of_the_wrong_shape_is_one_line_naming_both_shapes():
    model, params = _tokenizer((8, 8, 1), conv_channels=(8,), code_channels=2)
    for wrong in (jnp.zeros((3, 4, 4, 3)), jnp.zeros((3, 30)), jnp.zeros((3, 2, 2, 2))):
        with pytest.raises(ValueError) as error:
            model.apply({"params": params}, wrong, method=model.decode)
        message = str(error.value)
        assert "\n" not in message
        assert str(tuple(wrong.shape)) in message and "…×4×4×2" in message and "…×32" in message


def test_a_conditional_tokenizer_reads_its_labels_at_every_position():
    model, params = _tokenizer((8, 8, 1), conv_channels=(8,), code_channels=2, conditional=True)
    x = jnp.ones((2, 8, 8, 1)) * 0.5
    means = [
        model.apply({"params": params}, x, jnp.array([y, y]), method=model.encode).mean
        for y in (0, 1)
    ]
    assert float(jnp.min(jnp.abs(means[0] - means[1]))) > 0  # every position moves
    with pytest.raises(ValueError, match="needs labels"):
        model.apply({"params": params}, x, method=model.encode)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"code_channels": 0}, "model.code_channels"),
        ({"upper_latent_dims": (4,), "upper_widths": ((8,),)}, "model.arch"),
        ({"activation": "gated"}, "model.activation"),
    ],
)
def test_a_tokenizer_config_it_cannot_build_is_refused_naming_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        _tokenizer((8, 8, 1), **fields)


def test_a_deterministic_tokenizers_rae_penalty_is_half_lambda_the_squared_map():
    """The RAE's code penalty on a code map: (λ/2) Σ over positions and channels of μ²."""
    model, params = _tokenizer(
        (8, 8, 1), conv_channels=(8,), code_channels=2, posterior="deterministic"
    )
    x = jax.random.bernoulli(jax.random.key(7), 0.4, (3, 8, 8, 1)).astype(jnp.float32)
    _, terms = objectives.elbo_loss(model, params, x, jax.random.key(8), code_l2=0.5)
    (maps,) = protocol.shaped_layers(
        model, model.apply({"params": params}, x, method=model.encode).mean
    )
    np.testing.assert_allclose(terms["kl"], 0.25 * jnp.sum(maps**2, (1, 2, 3)), rtol=1e-5)
