import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from cvae import config as config_lib
from cvae.models import vae as model_lib

pytestmark = pytest.mark.unit


def _model_config(**overrides):
    c = config_lib.base_config().model
    for k, v in overrides.items():
        c[k] = v
    return c


def _kernel_shapes(tree):
    return {
        "/".join(str(getattr(p, "key", p)) for p in path): leaf.shape
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        if getattr(path[-1], "key", "") == "kernel"
    }


@pytest.mark.slow
def test_seed_preset_has_the_documented_layer_sizes():
    cfg = config_lib.apply_preset(config_lib.base_config(), "seed").model
    cfg.posterior = "gaussian"
    model = model_lib.build_model(cfg, (28, 28, 1), 10)
    shapes = _kernel_shapes(model_lib.init_params(model, jax.random.key(0)))
    encoder = [shapes[f"encoder/trunk/hidden_{i}/dense/kernel"] for i in range(3)]
    decoder = [shapes[f"decoder/trunk/hidden_{i}/dense/kernel"] for i in range(3)]
    assert encoder == [(784, 128), (128, 64), (64, 32)]
    assert shapes["encoder/mean/dense/kernel"] == (32, 16)
    assert shapes["encoder/log_var/dense/kernel"] == (32, 16)  # a head of its own
    assert decoder == [(16, 32), (32, 64), (64, 128)]
    assert shapes["decoder/output/dense/kernel"] == (128, 784)
    assert len(shapes) == 9


def test_collapsed_encoder_has_fewer_parameters_than_gaussian():
    counts = {}
    for family in ("gaussian", "collapsed", "deterministic"):
        model = model_lib.build_model(_model_config(posterior=family), (28, 28, 1), 10)
        params = model_lib.init_params(model, jax.random.key(0))
        counts[family] = model_lib.count_params(params["encoder"])
    assert counts["collapsed"] == counts["deterministic"] < counts["gaussian"]
    assert counts["gaussian"] - counts["collapsed"] == 32 * 16 + 16  # the log-variance head


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (8, 8, 1), (30, 20, 2)])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_conv_model_handles_any_image_shape(shape, likelihood):
    cfg = _model_config(
        arch="conv",
        conv_channels=(8, 16),
        conv_dense_width=32,
        likelihood=likelihood,
        posterior="gaussian",
    )
    model = model_lib.build_model(cfg, shape, 10)
    params = model_lib.init_params(model, jax.random.key(0))
    x = jnp.zeros((3,) + shape)
    posterior, z, dec = model.apply({"params": params}, x, jax.random.key(1), num_samples=2)
    assert z.shape == (2, 3, 16)
    expected = model.likelihood.param_shape(shape)
    assert dec.shape == (2, 3) + expected


@pytest.mark.parametrize(
    "shape,likelihood",
    [((32, 32, 3), "gaussian"), ((64, 64, 3), "gaussian"), ((16, 24, 1), "bernoulli")],
)
@pytest.mark.slow
@pytest.mark.parametrize("arch,channels", [("resnet", (8, 16)), ("ghosh", (8, 16, 32, 64))])
def test_image_nets_map_images_to_codes_and_back(shape, likelihood, arch, channels):
    cfg = _model_config(
        arch=arch, conv_channels=channels, likelihood=likelihood, posterior="gaussian"
    )
    model = model_lib.build_model(cfg, shape, 10)
    params = model_lib.init_params(model, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(2), (3,) + shape)
    posterior, z, dec = model.apply({"params": params}, x, jax.random.key(1), num_samples=2)
    assert z.shape == (2, 3, 16) and dec.shape == (2, 3) + model.likelihood.param_shape(shape)
    # GroupNorm normalises within an example: a code does not depend on the batch around it.
    alone = model.apply({"params": params}, x[:1], method=model.encode).mean
    np.testing.assert_allclose(alone, posterior.mean[:1], rtol=1e-4, atol=1e-5)  # rounding


@pytest.mark.slow
def test_ghosh_nets_have_the_papers_layers_at_64x64():
    cfg = _model_config(
        arch="ghosh",
        conv_channels=(128, 256, 512, 1024),
        latent_dim=64,
        likelihood="gaussian",
        posterior="deterministic",
    )
    model = model_lib.build_model(cfg, (64, 64, 3), 10)
    shapes = _kernel_shapes(model_lib.init_params(model, jax.random.key(0)))
    assert [shapes[f"encoder/conv_{i}/kernel"] for i in range(4)] == [
        (5, 5, 3, 128),
        (5, 5, 128, 256),
        (5, 5, 256, 512),
        (5, 5, 512, 1024),
    ]
    assert shapes["encoder/mean/kernel"] == (4 * 4 * 1024, 64)
    assert shapes["decoder/project/kernel"] == (64, 8 * 8 * 1024)
    assert [shapes[f"decoder/deconv_{i}/kernel"][-1] for i in range(3)] == [512, 256, 128]


def test_residual_nets_refuse_an_image_size_they_cannot_halve_in_one_line():
    cfg = _model_config(arch="resnet", conv_channels=(8, 16, 32))
    with pytest.raises(ValueError, match="multiples of 8; got 28×28"):
        model_lib.build_model(cfg, (28, 28, 1), 10)
    with pytest.raises(config_lib.ConfigError, match="multiples of 8 with model.arch='resnet'"):
        model_lib.build_model(_model_config(arch="resnet", conv_channels=(12,)), (8, 8, 1), 10)


FAMILIES = ["gaussian", "collapsed", "deterministic"]
LIKELIHOODS = [
    ("bernoulli", 0.0),
    ("gaussian", 0.0),
    ("gaussian", 0.1),
    ("continuous_bernoulli", 0.0),
]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("likelihood,scale", LIKELIHOODS)
def test_gradients_are_finite_for_every_family_and_likelihood(family, likelihood, scale):
    from cvae.models import objectives

    cfg = _model_config(
        posterior=family,
        likelihood=likelihood,
        likelihood_scale=scale,
        encoder_widths=(16,),
        latent_dim=3,
        code_l2=0.1,
    )
    model = model_lib.build_model(cfg, (4, 4, 1), 0)
    params = model_lib.init_params(model, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (8, 4, 4, 1))
    x = x.at[0].set(0.5)  # continuous Bernoulli's removable singularity lives near λ = ½
    grads = jax.grad(lambda p: objectives.elbo_loss(model, p, x, jax.random.key(2))[0])(params)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert any(np.any(g != 0) for g in leaves)


def test_conditional_model_uses_labels_and_unconditional_refuses_them():
    cfg = _model_config(conditional=True, encoder_widths=(16,), latent_dim=3)
    model = model_lib.build_model(cfg, (4, 4, 1), 10)
    params = model_lib.init_params(model, jax.random.key(0))
    z = jnp.zeros((2, 3))
    a = model.apply({"params": params}, z, jnp.array([0, 0]), method=model.decode)
    b = model.apply({"params": params}, z, jnp.array([0, 7]), method=model.decode)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.allclose(a[1], b[1])
    with pytest.raises(ValueError, match="needs labels"):
        model.apply({"params": params}, z, method=model.decode)
    plain = model_lib.build_model(_model_config(encoder_widths=(16,), latent_dim=3), (4, 4, 1), 10)
    plain_params = model_lib.init_params(plain, jax.random.key(0))
    with pytest.raises(ValueError, match="unconditional"):
        plain.apply({"params": plain_params}, z, jnp.array([0, 1]), method=plain.decode)


@pytest.mark.parametrize(
    "field,value,pattern",
    [
        ("latent_dim", 0, r"model.latent_dim.*positive"),
        ("latent_dim", -3, r"model.latent_dim"),
        ("posterior", "bogus", r"model.posterior.*gaussian"),
        ("likelihood", "poisson", r"model.likelihood.*bernoulli"),
        ("arch", "transformer", r"model.arch"),
        ("sigma0", float("inf"), r"model.sigma0"),
    ],
)
def test_bad_model_config_is_refused_by_name(field, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        model_lib.build_model(_model_config(**{field: value}), (28, 28, 1), 10)


def test_negative_or_zero_sigma0_is_refused_for_collapsed():
    c = config_lib.base_config()
    c.model.sigma0 = -0.1
    with pytest.raises(config_lib.ConfigError, match=r"model.sigma0 = -0.1.*≥ 0"):
        config_lib.validate(c)
    with pytest.raises(ValueError, match="model.sigma0"):
        model_lib.build_model(_model_config(sigma0=0.0), (28, 28, 1), 10)


@pytest.mark.slow
def test_input_of_the_wrong_shape_is_refused_before_compiling():
    model = model_lib.build_model(_model_config(encoder_widths=(8,), latent_dim=2), (28, 28, 1), 0)
    params = model_lib.init_params(model, jax.random.key(0))
    with pytest.raises(ValueError, match=r"\(4, 32, 32, 3\).*28×28×1"):
        model.apply({"params": params}, jnp.zeros((4, 32, 32, 3)), jax.random.key(0))
    with pytest.raises(ValueError, match="N×H×W×C"):
        model.apply({"params": params}, jnp.zeros((4, 784)), jax.random.key(0))


def test_conv_nets_refuse_the_torch_initialisation_instead_of_ignoring_it():
    with pytest.raises(config_lib.ConfigError, match="model.init.*conv"):
        model_lib.build_model(_model_config(arch="conv", init="torch"), (28, 28, 1), 10)


def _vamp_model(posterior="gaussian", latent_dim=1, k=3):
    cfg = config_lib.base_config().model
    cfg.posterior, cfg.encoder_widths, cfg.latent_dim = posterior, (8,), latent_dim
    cfg.prior, cfg.num_pseudo_inputs = "vamp", k
    model = model_lib.build_model(cfg, (4, 4, 1), 0)
    return model, model_lib.init_params(model, jax.random.key(0))


@pytest.mark.slow
@pytest.mark.parametrize("posterior", ["gaussian", "collapsed"])
def test_vamp_prior_density_is_the_mixture_of_pseudo_input_posteriors(posterior):
    model, params = _vamp_model(posterior)
    pseudo = np.clip(np.asarray(params["pseudo_inputs"]), 0, 1)
    q = model.apply({"params": params}, pseudo, method=model.encode)
    means = np.asarray(q.mean, np.float64)[:, 0]
    variances = np.exp(np.asarray(q.log_var, np.float64))[:, 0]
    z = np.linspace(-3, 3, 13)[:, None]
    log_normal = -0.5 * (z - means) ** 2 / variances - 0.5 * np.log(2 * np.pi * variances)
    brute = scipy.special.logsumexp(log_normal, axis=1) - np.log(len(means))
    got = model.apply({"params": params}, jnp.asarray(z, jnp.float32), method=model.prior_log_prob)
    np.testing.assert_allclose(got, brute, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_vamp_prior_gradients_reach_the_pseudo_inputs_and_its_samples_follow_the_mixture():
    from cvae.models import objectives

    model, params = _vamp_model("gaussian", latent_dim=2, k=4)
    x = (jax.random.uniform(jax.random.key(1), (16, 4, 4, 1)) < 0.4).astype(jnp.float32)
    grads = jax.grad(lambda p: objectives.elbo_loss(model, p, x, jax.random.key(2))[0])(params)
    assert float(jnp.abs(grads["pseudo_inputs"]).sum()) > 0
    z = model.apply({"params": params}, jax.random.key(3), 20000, method=model.sample_prior)
    q = model.apply(
        {"params": params}, jnp.clip(params["pseudo_inputs"], 0, 1), method=model.encode
    )
    # The mixture's mean and variance (law of total variance) against the samples'.
    mixture_mean = np.mean(np.asarray(q.mean), axis=0)
    mixture_var = (
        np.mean(np.exp(np.asarray(q.log_var)) + np.asarray(q.mean) ** 2, axis=0) - mixture_mean**2
    )
    np.testing.assert_allclose(np.mean(np.asarray(z), axis=0), mixture_mean, atol=0.03)
    np.testing.assert_allclose(np.var(np.asarray(z), axis=0), mixture_var, rtol=0.05)


def test_gated_layers_multiply_a_linear_map_by_a_sigmoid_gate():
    import flax.linen as nn

    from cvae.models import nets

    stack = nets.MLPStack((5,), activation="gated")
    h = jax.random.normal(jax.random.key(0), (3, 4))
    params = nn.Module.init(stack, jax.random.key(1), h)["params"]  # its `init` field shadows
    linear = lambda name: h @ params[name]["dense"]["kernel"] + params[name]["dense"]["bias"]
    np.testing.assert_allclose(
        stack.apply({"params": params}, h),
        linear("hidden_0") * jax.nn.sigmoid(linear("gate_0")),
        rtol=1e-5,
    )


@pytest.mark.parametrize(
    "overrides,shape",
    [
        ({}, (8, 8, 1)),
        ({"conditional": True, "init": "torch"}, (8, 8, 1)),
        ({"arch": "conv", "conv_channels": (4, 8), "conv_dense_width": 16}, (28, 28, 1)),
        ({"arch": "resnet", "conv_channels": (8, 16)}, (16, 16, 3)),
        ({"prior": "vamp", "num_pseudo_inputs": 50}, (8, 8, 1)),
    ],
)
def test_compiled_initialisation_equals_flax_op_by_op_bitwise(overrides, shape):
    """init_params compiles Flax's initialisation into one program; the parameters are the
    op-by-op ones bit for bit, so runs started before and after that change are the same."""
    cfg = config_lib.base_config().model
    cfg.encoder_widths, cfg.latent_dim = (32, 16), 4
    cfg.update(overrides)
    model = model_lib.build_model(cfg, shape, 10)
    key = jax.random.key(5)
    init_key, sample_key = jax.random.split(key)
    labels = jnp.zeros((1,), jnp.int32) if model.num_classes else None
    # Flax's own path: op by op (each primitive, and each of JAX's inner jitted
    # functions such as random.normal's, dispatched on its own)
    eager = model.init({"params": init_key}, jnp.zeros((1, *shape)), sample_key, labels)
    eager = eager["params"]
    compiled = model_lib.init_params(model, key)
    assert jax.tree_util.tree_structure(eager) == jax.tree_util.tree_structure(compiled)
    pseudo_inputs = eager.pop("pseudo_inputs", None)
    if pseudo_inputs is not None:  # 0.05 + 0.01·ε: one fused multiply-add when compiled
        compiled = dict(compiled)
        np.testing.assert_array_max_ulp(pseudo_inputs, compiled.pop("pseudo_inputs"), maxulp=2)
    for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(compiled)):
        np.testing.assert_array_equal(a, b)
