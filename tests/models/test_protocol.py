"""The one model interface: every design — the one-layer VAE (Gaussian, collapsed,
deterministic, VampPrior, conditional, a code map) and the three hierarchies — answers the
protocol of ``cvae.models.protocol`` with the same meaning: its layers' sizes, a code that
splits into them, σ₀ per layer, per-layer ELBO terms, importance weights of one signature,
``descend``, and the labels it accepts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cvae import config as config_lib
from cvae.models import objectives
from cvae.models import vae as vae_lib
from cvae.models.protocol import LatentVariableModel

pytestmark = pytest.mark.unit

SHAPE = (8, 8, 1)
TWO = {"upper_latent_dims": (3,), "upper_widths": ((16,),), "upper_posteriors": ("gaussian",)}
DESIGNS = {
    "vae": {"posterior": "gaussian"},
    "cvae": {"posterior": "collapsed", "sigma0": 0.1},
    "ae": {"posterior": "deterministic"},
    "vamp": {"posterior": "gaussian", "prior": "vamp", "num_pseudo_inputs": 5},
    "conditional": {"posterior": "collapsed", "conditional": True},
    "bottom_up": {"posterior": "collapsed", "sigma0": 0.1, **TWO},
    "top_down": {"posterior": "gaussian", "inference": "top_down", **TWO},
    "residual": {
        "posterior": "gaussian",
        "inference": "top_down",
        "arch": "resnet",
        "conv_channels": (8, 8),
        "decoder_layers": "all",
        **TWO,
    },
    # tokenizers: a 2×2×1 code map (two halvings of 8×8), its KL per position
    "code_map": {
        "posterior": "collapsed",
        "sigma0": 0.1,
        "arch": "conv_map",
        "conv_channels": (8, 8),
        "code_channels": 1,
    },
    "conditional_code_map": {
        "posterior": "gaussian",
        "arch": "conv_map",
        "conv_channels": (8, 8),
        "code_channels": 1,
        "conditional": True,
    },
}


def _model(name):
    cfg = config_lib.base_config().model
    cfg.update({"encoder_widths": (16,), "latent_dim": 4, **DESIGNS[name]})
    model = vae_lib.build_model(cfg, SHAPE, 10)
    return model, vae_lib.init_params(model, jax.random.key(0))


def _inputs(model, n=5):
    x = jax.random.bernoulli(jax.random.key(1), 0.4, (n, *SHAPE)).astype(jnp.float32)
    return x, (jnp.arange(n) % 10 if model.num_classes else None)


@pytest.mark.parametrize("name", DESIGNS)
def test_every_design_declares_its_layers_and_splits_its_code(name):
    model, params = _model(name)
    assert isinstance(model, LatentVariableModel)
    depth = 2 if "upper_latent_dims" in DESIGNS[name] else 1
    assert model.layer_dims == ((4, 3) if depth == 2 else (4,))
    assert model.code_dim == sum(model.layer_dims)
    assert model.bound_family == ("layered" if depth == 2 else "single")
    code = jnp.arange(2 * model.code_dim, dtype=jnp.float32).reshape(2, -1)
    parts = model.split_code(code)
    assert [p.shape[-1] for p in parts] == list(model.layer_dims)
    np.testing.assert_array_equal(jnp.concatenate(parts, -1), code)


@pytest.mark.parametrize("name", [n for n in DESIGNS if n != "ae"])
def test_elbo_terms_have_a_kl_per_layer_that_sums_to_the_kl(name):
    model, params = _model(name)
    x, labels = _inputs(model)
    terms = model.elbo_terms(params, x, jax.random.key(2), labels)
    layers = [f"kl_{i + 1}" for i in range(len(model.layer_dims))]
    assert set(terms) == {"recon", "kl", "elbo", *layers}
    np.testing.assert_allclose(sum(terms[k] for k in layers), terms["kl"], rtol=1e-5)
    np.testing.assert_allclose(terms["recon"] - terms["kl"], terms["elbo"], rtol=1e-6)
    # the method is the objective's terms, and the objective picks the model's formula
    _, loss_terms = objectives.elbo_loss(model, params, x, jax.random.key(2), labels=labels)
    np.testing.assert_array_equal(terms["elbo"], loss_terms["elbo"])


@pytest.mark.parametrize("name", [n for n in DESIGNS if n != "ae"])
def test_importance_weights_have_one_signature_and_one_meaning(name):
    """(k, B) for k draws, (B,) for None; their log-mean-exp is the IWAE bound, which lies
    above the ELBO's mean (Jensen) for k large enough to see it."""
    model, params = _model(name)
    x, labels = _inputs(model)
    log_w = model.log_importance_weights(params, x, jax.random.key(3), 64, labels)
    assert log_w.shape == (64, len(x))
    one = model.log_importance_weights(params, x, jax.random.key(3), None, labels)
    assert one.shape == (len(x),)
    bound = objectives.iwae_bound(model, params, x, jax.random.key(3), 64, labels)
    np.testing.assert_allclose(bound, jax.nn.logsumexp(log_w, 0) - np.log(64), rtol=1e-6)
    elbo = jnp.mean(log_w, axis=0)
    assert np.all(np.asarray(bound) >= np.asarray(elbo) - 1e-4)


@pytest.mark.parametrize("name", ["cvae", "bottom_up"])
def test_with_sigma0s_sets_each_layers_sigma0(name):
    model, params = _model(name)
    x, labels = _inputs(model)
    depth = len(model.layer_dims)
    wide = model.with_sigma0s((0.5,) * depth)
    same = model.with_sigma0s((0.1,) * depth)  # both designs were built with σ₀ = 0.1
    key = jax.random.key(4)
    np.testing.assert_array_equal(
        same.elbo_terms(params, x, key, labels)["kl"],
        model.elbo_terms(params, x, key, labels)["kl"],
    )
    assert not np.allclose(
        wide.elbo_terms(params, x, key, labels)["kl"],
        model.elbo_terms(params, x, key, labels)["kl"],
    )
    with pytest.raises(ValueError):
        model.with_sigma0s((0.1,) * (depth + 1))


@pytest.mark.parametrize("name", ["cvae", "top_down", "residual"])
def test_descend_keeps_the_code_at_and_above_its_layer(name):
    """Layer 1 keeps the whole code (a one-layer model's only layer); a hierarchy's top
    layer keeps the top and regenerates the rest; a layer the model lacks is refused."""
    model, params = _model(name)
    code = model.apply({"params": params}, jax.random.key(5), 3, method=model.sample_prior)
    kept = model.apply({"params": params}, code, 1, method=model.descend)
    np.testing.assert_array_equal(kept, code)
    depth = len(model.layer_dims)
    if depth == 1:
        with pytest.raises(ValueError, match="one stochastic layer"):
            model.apply({"params": params}, code, 2, method=model.descend)
        return
    top = model.apply({"params": params}, code, depth, method=model.descend)
    np.testing.assert_array_equal(model.split_code(top)[-1], model.split_code(code)[-1])
    assert not np.allclose(model.split_code(top)[0], model.split_code(code)[0])


@pytest.mark.parametrize("name", ["cvae", "conditional", "bottom_up", "residual"])
def test_the_model_says_which_labels_it_accepts(name):
    model, _ = _model(name)
    if model.num_classes:
        model.check_labels(jnp.zeros(3, jnp.int32))
        with pytest.raises(ValueError, match="needs labels"):
            model.check_labels(None)
    else:
        model.check_labels(None)
        with pytest.raises(ValueError, match="labels were given"):
            model.check_labels(jnp.zeros(3, jnp.int32))
