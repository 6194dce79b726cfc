"""The pure pieces of a training step (cvae.training.steps): the traced hyperparameters,
the learning-rate schedule and optimizer, the epoch's batch indices, the gather, and one
optimizer step — in process, a few steps at most."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cvae import config as config_lib
from cvae import data, parallel
from cvae.models import vae as model_lib
from cvae.training import steps
from tests.helpers import make_test_config

pytestmark = pytest.mark.unit


def test_hyperparameters_are_the_configs_traced_numbers_by_their_last_name():
    cfg = make_test_config(**{"model.sigma0": 0.2, "objective.beta": 3.0})
    hyper = steps.hyperparameters(cfg)
    assert set(hyper) == {name.split(".")[-1] for name in steps.HYPERPARAMETERS[1:]}
    assert hyper["sigma0"] == 0.2 and hyper["beta"] == 3.0
    assert hyper.pop("upper_sigma0s") == hyper.pop("upper_betas") == ()  # one layer
    assert all(isinstance(v, float) for v in hyper.values())
    # A hierarchy's upper σ₀, spelled out from model.sigma0 when not given per layer.
    two = {"model.upper_latent_dims": (2, 2), "model.upper_widths": ((8,), (8,))}
    defaulted = make_test_config(**{"model.sigma0": 0.2, **two})
    assert steps.hyperparameters(defaulted)["upper_sigma0s"] == (0.2, 0.2)
    assert steps.hyperparameters(defaulted)["upper_betas"] == (1.0, 1.0)
    given = make_test_config(
        **{"model.upper_sigma0s": (0.5, 0.1), "objective.upper_betas": (2.0, 0.5), **two}
    )
    assert steps.hyperparameters(given)["upper_sigma0s"] == (0.5, 0.1)
    assert steps.hyperparameters(given)["upper_betas"] == (2.0, 0.5)


def test_warmup_cosine_schedule_with_a_traced_peak_equals_optaxs_schedule():
    cfg = make_test_config(
        **{"train.lr_schedule": "warmup_cosine", "train.lr_warmup_steps": 10}
    ).train
    reference = optax.warmup_cosine_decay_schedule(0.0, 3e-3, 10, 100)
    traced = jax.jit(lambda peak, step: steps.learning_rate(cfg, 100, peak)(step))
    for step in (0, 5, 10, 50, 99):
        assert float(traced(jnp.float32(3e-3), step)) == pytest.approx(
            float(reference(step)), rel=1e-6, abs=1e-12
        )
    constant = make_test_config(**{"train.learning_rate": 2e-3}).train
    assert float(steps.learning_rate(constant, 100)(57)) == pytest.approx(2e-3)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_weight_decay_shrinks_the_parameters_of_a_zero_gradient(optimizer):
    """With a zero gradient only the decay moves the parameters: Adam adds λθ to the
    gradient (L2), AdamW decays θ directly; a decay of 0 leaves θ where it was."""
    cfg = make_test_config(
        **{"train.optimizer": optimizer, "train.weight_decay": 0.1, "train.learning_rate": 0.01}
    ).train
    params = {"w": jnp.ones(3)}
    tx = steps.make_optimizer(cfg, 10)
    updates, _ = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
    moved = optax.apply_updates(params, updates)["w"]
    assert np.all(np.asarray(moved) < 1.0)
    still = steps.make_optimizer(cfg, 10, weight_decay=0.0)
    updates, _ = still.update({"w": jnp.zeros(3)}, still.init(params), params)
    np.testing.assert_array_equal(optax.apply_updates(params, updates)["w"], params["w"])


def test_an_epoch_visits_every_example_once_in_an_order_set_by_key_and_epoch():
    indices = steps.make_epoch_indices(num_train=103, batch_size=10, class_table=None)
    key = jax.random.key(0)
    first = np.asarray(indices(key, 0))
    assert first.shape == (10, 10)  # whole batches only: 3 examples left out this epoch
    assert len(np.unique(first)) == 100 and first.max() < 103
    np.testing.assert_array_equal(first, np.asarray(indices(key, 0)))
    assert not np.array_equal(first, np.asarray(indices(key, 1)))
    assert not np.array_equal(first, np.asarray(indices(jax.random.key(1), 0)))


def test_class_balanced_epochs_draw_each_class_equally_often():
    labels = np.array([0] * 90 + [1] * 10)
    table = data.ClassTable.from_labels(labels, 2)
    indices = steps.make_epoch_indices(num_train=100, batch_size=20, class_table=table)
    drawn = np.concatenate([np.asarray(indices(jax.random.key(0), e)).ravel() for e in range(20)])
    share_of_minority = np.mean(labels[drawn] == 1)
    # 2,000 draws, each class with probability ½: 5 standard errors is ±0.056
    assert abs(share_of_minority - 0.5) < 0.056


def test_the_gather_returns_exactly_the_indexed_images():
    """steps.gather_rows (a 2-D view, faster on XLA:CPU) == images[indices], also vmapped
    over a population's member axis, for images of any rank."""
    rng = np.random.default_rng(0)
    for shape in [(50, 6, 5, 3), (50, 7, 7, 1), (50, 9)]:
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        indices = rng.integers(0, 50, (4, 11)).astype(np.int32)
        alone = jax.jit(steps.gather_rows)(images, indices[0])
        np.testing.assert_array_equal(alone, images[indices[0]])
        members = jax.jit(jax.vmap(steps.gather_rows, in_axes=(None, 0)))(images, indices)
        np.testing.assert_array_equal(members, images[indices])


def test_the_epoch_program_is_built_once_per_config_and_keeps_the_config_it_was_given():
    """A second run of a config in one process reuses its traced epoch; any field that
    differs, or another class table, builds a new one; and the program holds a frozen copy
    of the config, so changing the caller's config afterwards cannot reach a later trace."""
    model = model_lib.build_model(make_test_config().model, (4, 4, 1), 0)
    preprocess = data.Preprocessor(255.0, binarize=True, dequantize=False)
    table = data.ClassTable.from_labels(np.arange(40) % 4, 4)

    def build(cfg, class_table=None):
        return steps.build_programs(
            model=model,
            config=cfg,
            mesh=parallel.make_mesh(1),
            preprocess=preprocess,
            num_train=40,
            class_table=class_table,
            total_steps=10,
        )

    cfg = make_test_config(**{"train.batch_size": 8})
    first = build(cfg)
    assert build(make_test_config(**{"train.batch_size": 8})) is first
    assert build(make_test_config(**{"train.batch_size": 8, "seed": 3})) is not first
    assert build(cfg, table) is not first
    assert build(cfg, table) is build(cfg, data.ClassTable.from_labels(np.arange(40) % 4, 4))
    assert build(cfg, table) is not build(cfg, data.ClassTable.from_labels(np.arange(40) % 5, 5))

    cfg.train.skip_grad_norm = 1.0  # after the build: a new program, the first unchanged
    assert build(cfg) is not first
    state = {"step": jnp.int32(0), "params": model_lib.init_params(model, jax.random.key(0))}
    state["opt_state"] = steps.make_optimizer(cfg.train, 10).init(state["params"])
    images = np.zeros((40, 4, 4, 1), np.uint8)
    _, scalars = first.train_epoch(
        state, images, np.zeros(40, np.int32), jax.random.key(0), jax.random.key(1), 0
    )
    assert scalars["loss"].shape == (40 // 8,) and "skipped" not in scalars


def _compiled_step(start: int = 0, **overrides):
    """A jitted step of a tiny MLP VAE (``overrides`` on the test config), its state at
    optimizer step ``start``, 32 random 4×4 images, their labels and the config's hyper."""
    cfg = make_test_config(**{"model.encoder_widths": (16,), "model.latent_dim": 2, **overrides})
    model = model_lib.build_model(cfg.model, (4, 4, 1), 0)
    preprocess = data.Preprocessor(255.0, binarize=True, dequantize=False)
    step = jax.jit(steps.make_step(model=model, config=cfg, preprocess=preprocess, total_steps=10))
    params = model_lib.init_params(model, jax.random.key(0))
    tx = steps.make_optimizer(cfg.train, 10)
    state = {"step": jnp.int32(start), "params": params, "opt_state": tx.init(params)}
    if cfg.train.ema_decay > 0:
        state["online"] = params
    images = np.random.default_rng(0).integers(0, 256, (32, 4, 4, 1), dtype=np.uint8)
    labels = np.zeros(32, np.int32)
    return step, state, images, labels, steps.hyperparameters(cfg)


@pytest.fixture(scope="module")
def one_step():
    return _compiled_step()


def test_a_step_is_a_pure_function_of_its_state_batch_and_key(one_step):
    step, state, images, labels, hyper = one_step
    batch = jnp.arange(8)
    a, scalars = step(state, batch, images, labels, jax.random.key(1), hyper)
    b, _ = step(state, batch, images, labels, jax.random.key(1), hyper)
    c, _ = step(state, batch, images, labels, jax.random.key(2), hyper)
    assert int(a["step"]) == 1 and np.isfinite(float(scalars["loss"]))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    moved = jax.tree_util.tree_leaves(a["params"])[0]
    assert not np.array_equal(moved, jax.tree_util.tree_leaves(c["params"])[0])
    assert not np.array_equal(moved, jax.tree_util.tree_leaves(state["params"])[0])


def test_a_traced_hyperparameter_is_the_config_value_it_replaces(one_step):
    """make_step reads σ₀, β, the learning rate, … from ``hyper``: passing them traced (as a
    population member does) gives the step that the Python floats give."""
    step, state, images, labels, hyper = one_step
    batch = jnp.arange(8)
    floats, _ = step(state, batch, images, labels, jax.random.key(1), hyper)
    traced = {k: jnp.float32(v) for k, v in hyper.items()}
    arrays, _ = step(state, batch, images, labels, jax.random.key(1), traced)
    for x, y in zip(
        jax.tree_util.tree_leaves(floats), jax.tree_util.tree_leaves(arrays), strict=True
    ):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    doubled = dict(traced, learning_rate=2 * traced["learning_rate"])
    faster, _ = step(state, batch, images, labels, jax.random.key(1), doubled)
    delta = lambda s: (
        jax.tree_util.tree_leaves(s["params"])[0] - jax.tree_util.tree_leaves(state["params"])[0]
    )
    # Adam's first step moves each weight by about the learning rate: twice as far here
    np.testing.assert_allclose(delta(faster), 2 * delta(arrays), rtol=1e-3, atol=1e-7)


def test_base_config_hyperparameters_cover_every_traced_field():
    flat = config_lib.flatten(config_lib.base_config())
    assert all(name in flat for name in steps.HYPERPARAMETERS)


def test_the_kl_warm_up_reaches_the_iwae_bound():
    """With objective.kind='iwae' the step tempers the importance weights by the warmed-up β:
    halfway through a warm-up of β = 1 is the bound at β = 0.5, and neither is the plain
    bound."""
    step, state, images, labels, hyper = _compiled_step(
        start=5, **{"objective.kind": "iwae", "objective.k": 3}
    )
    batch, key = jnp.arange(8), jax.random.key(1)

    def loss(**changed):
        return float(step(state, batch, images, labels, key, dict(hyper, **changed))[1]["loss"])

    halfway = loss(kl_warmup_steps=10.0)
    assert halfway == pytest.approx(loss(beta=0.5), rel=1e-6)
    assert abs(halfway - loss()) > 1e-3


def test_an_update_above_the_skip_threshold_leaves_params_and_optimizer_state_untouched():
    """train.skip_grad_norm: above the threshold the step keeps params and Adam's moments
    (the step still advances, and says skipped = 1 with the norm); below it the step is
    exactly the step without the rule."""
    batch, key = jnp.arange(8), jax.random.key(1)
    plain, state, images, labels, hyper = _compiled_step()
    reference, scalars = plain(state, batch, images, labels, key, hyper)
    assert "skipped" not in scalars  # off by default: records unchanged
    for threshold, skipped in ((1e-6, 1.0), (1e6, 0.0)):
        step, *_ = _compiled_step(**{"train.skip_grad_norm": threshold})
        after, scalars = step(state, batch, images, labels, key, hyper)
        assert float(scalars["skipped"]) == skipped and float(scalars["grad_norm"]) > 1e-6
        assert int(after["step"]) == 1
        expected = state if skipped else reference
        for name in ("params", "opt_state"):
            for x, y in zip(
                jax.tree_util.tree_leaves(after[name]),
                jax.tree_util.tree_leaves(expected[name]),
                strict=True,
            ):
                np.testing.assert_array_equal(x, y)


def test_the_weights_average_follows_its_recurrence_and_the_optimizer_trains_online():
    """train.ema_decay = d: params_t = d·params_{t−1} + (1 − d)·online_t, from params_0 = the
    initial weights; the optimizer's steps are those of the run without the average."""
    batch, key, d = jnp.arange(8), jax.random.key(1), 0.9
    plain, state, images, labels, hyper = _compiled_step()
    step, averaged, *_ = _compiled_step(**{"train.ema_decay": d})
    assert set(averaged) == {"step", "params", "online", "opt_state"}
    expected_online, expected_average = state, state["params"]
    for t in range(3):
        expected_online, _ = plain(expected_online, batch + t, images, labels, key, hyper)
        expected_average = jax.tree_util.tree_map(
            lambda a, o: d * a + (1 - d) * o, expected_average, expected_online["params"]
        )
        averaged, _ = step(averaged, batch + t, images, labels, key, hyper)
        for got, want in (
            (averaged["online"], expected_online["params"]),
            (averaged["params"], expected_average),
        ):
            for x, y in zip(
                jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True
            ):
                np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "overrides, tolerance",
    [
        ({}, 0.05),
        (
            {  # two groups of 2×2×2 latent maps on residual conv blocks
                "model.arch": "resnet",
                "model.inference": "top_down",
                "model.decoder_layers": "all",
                "model.conv_channels": (8,),
                "model.groups_per_level": (2,),
                "model.code_channels": 2,
                "model.posterior": "gaussian",
            },
            0.25,
        ),
    ],
    ids=["mlp", "groups_of_maps"],
)
def test_bfloat16_steps_track_float32_and_keep_float32_state(overrides, tolerance):
    """Three mixed-precision steps (bf16 compute, f32 params and optimizer state) against
    three f32 steps from the same state: losses within 1%; the gradient of one batch near
    the f32 gradient (relative norm of the difference; measured with XLA:CPU's bf16: 3% for
    the MLP, 13% for the conv groups on 2×2 grids, where GroupNorm normalises 4 values — 5%
    on 4×4 grids, 8% at MNIST's size; Adam's first updates, about
    ±lr wherever a gradient is nonzero, amplify the sign of tiny entries, so the params are
    not the quantity to compare); float32 is the default on a CPU ("auto")."""
    runs = {}
    for precision in ("float32", "bfloat16"):
        step, state, images, labels, hyper = _compiled_step(
            **overrides, **{"train.precision": precision}
        )
        losses = []
        for i in range(3):
            state, scalars = step(
                state, jnp.arange(8 * i, 8 * i + 8), images, labels, jax.random.key(i), hyper
            )
            losses.append(float(scalars["loss"]))
        runs[precision] = (state, np.array(losses))
    (_, exact_losses), (mixed, mixed_losses) = runs["float32"], runs["bfloat16"]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(mixed["params"]))
    assert all(
        leaf.dtype == jnp.float32
        for leaf in jax.tree_util.tree_leaves(mixed["opt_state"])
        if jnp.issubdtype(leaf.dtype, jnp.floating)
    )
    np.testing.assert_allclose(mixed_losses, exact_losses, rtol=1e-2)
    # the gradient the optimizer receives: bf16 arithmetic, the f32 gradient's direction
    cfg = make_test_config(**{"model.encoder_widths": (16,), "model.latent_dim": 2, **overrides})
    model = model_lib.build_model(cfg.model, (4, 4, 1), 0)
    objective = steps.make_objective(model, cfg, steps.hyperparameters(cfg))
    x = jnp.asarray(np.random.default_rng(1).random((32, 4, 4, 1)) > 0.5, jnp.float32)

    def gradient(dtype):
        in_dtype = steps.in_precision(objective, dtype)
        grad = jax.jit(jax.grad(lambda p: in_dtype(p, x, jax.random.key(3))[0]))(mixed["params"])
        return jax.flatten_util.ravel_pytree(grad)[0]

    grads = {"exact": gradient(jnp.float32), "mixed": gradient(jnp.bfloat16)}
    assert grads["mixed"].dtype == jnp.float32
    error = jnp.linalg.norm(grads["mixed"] - grads["exact"]) / jnp.linalg.norm(grads["exact"])
    assert float(error) < tolerance, float(error)
    assert steps.compute_dtype(make_test_config().train) == jnp.float32  # auto, on a CPU
