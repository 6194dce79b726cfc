"""The one evaluation core: its estimates, its invariances, and what it refuses."""

import jax
import numpy as np
import pytest

from cvae import data, evaluation, parallel, training
from cvae.models import vae as model_lib
from tests.helpers import make_test_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch collapsed VAE on digits, with its model, params and test split."""
    workdir = tmp_path_factory.mktemp("eval_run")
    cfg = make_test_config()
    result = training.train_and_evaluate(cfg, workdir)
    test = data.load("digits", "test")
    model = model_lib.build_model(
        cfg.model, test.info.shape, test.info.num_classes, binary_data=True
    )
    params = jax.device_get(result.state["params"])
    return model, params, evaluation.EvalSet.from_dataset(test, binarize=True)


def test_importance_samples_do_not_depend_on_the_chunking(trained):
    model, params, eval_set = trained
    scores = [
        evaluation.evaluate(model, params, eval_set, k=30, chunk_size=c, batch_size=100)
        for c in (0, 7, 30)
    ]
    for other in scores[1:]:
        assert other["nll_is"] == pytest.approx(scores[0]["nll_is"], abs=1e-4)
        assert other["elbo"] == scores[0]["elbo"]


def test_importance_sampled_nll_lies_between_the_elbo_and_more_samples(trained):
    model, params, eval_set = trained
    one = evaluation.evaluate(model, params, eval_set, k=1, batch_size=100)
    many = evaluation.evaluate(model, params, eval_set, k=200, batch_size=100)
    assert many["nll_is"] < one["nll_is"]  # L_K rises with K (in expectation; 297 images)
    assert many["nll_is"] <= -many["elbo"]
    assert many["num_examples"] == len(eval_set) == 297 and many["k"] == 200


def test_a_hierarchy_scores_each_layer_and_its_joint_importance_samples_ignore_chunking():
    """A two-layer model at its initial parameters: the per-layer KL terms and active units
    add up to the totals; the importance samples are joint draws of both layers, each from
    its own key, so the chunking changes nothing; the bound lies above the ELBO."""
    cfg = make_test_config(**{"model.upper_latent_dims": (3,), "model.upper_widths": ((8,),)})
    test = data.load("digits", "test")
    model = model_lib.build_model(cfg.model, test.info.shape, 0, binary_data=True)
    params = model_lib.init_params(model, jax.random.key(0))
    eval_set = evaluation.EvalSet.from_dataset(test, binarize=True)
    scores = [
        evaluation.evaluate(model, params, eval_set, k=12, chunk_size=c, batch_size=100)
        for c in (5, 12)
    ]
    assert scores[1]["nll_is"] == pytest.approx(scores[0]["nll_is"], abs=1e-4)
    first = scores[0]
    assert first["kl"] == pytest.approx(first["kl_1"] + first["kl_2"], rel=1e-5)
    assert first["active_units"] == first["active_units_1"] + first["active_units_2"]
    assert first["nll_is"] <= -first["elbo"]
    table = evaluation.format_table(first)
    assert "kl_2" in table and "active_units_1" in table
    # each model's kl row says what it is: a KL with a density, a code penalty without
    assert "code penalty" not in evaluation.format_table(first, "gaussian")
    assert "KL(q(z|x)" not in evaluation.format_table(first, "deterministic")
    assert "code penalty" in evaluation.format_table(first, "deterministic")


def test_one_device_and_eight_devices_score_alike(trained):
    model, params, eval_set = trained
    one = evaluation.evaluate(
        model, params, eval_set, k=20, batch_size=96, mesh=parallel.make_mesh(1)
    )
    eight = evaluation.evaluate(
        model, params, eval_set, k=20, batch_size=96, mesh=parallel.make_mesh(8)
    )
    for name in ("elbo", "recon", "kl", "nll_is"):
        assert eight[name] == pytest.approx(one[name], rel=1e-5), name
    assert eight["active_units"] == one["active_units"]


def test_a_memory_mapped_split_scores_as_the_same_split_in_memory(trained, tmp_path):
    """The evaluation core reads row ranges from a source: the split from .npy memory maps
    (binarized batch by batch) scores exactly as the split held in memory."""
    model, params, eval_set = trained
    test = data.load("digits", "test")
    np.save(tmp_path / "x.npy", test.images[:5])  # a train split is required; unused here
    np.save(tmp_path / "x_test.npy", test.images)
    np.save(tmp_path / "y_test.npy", test.labels)
    mapped = evaluation.EvalSet(
        data.ArraySource(data.load(f"npy:{tmp_path}", "test")), binarize=True
    )
    assert isinstance(mapped.source.dataset.images, np.memmap)
    in_memory = evaluation.evaluate(model, params, eval_set, k=5, batch_size=64)
    assert evaluation.evaluate(model, params, mapped, k=5, batch_size=64) == in_memory
    np.testing.assert_array_equal(mapped.first()[0], eval_set.first()[0])


def test_padding_never_counts(trained):
    """257 images in batches of 64: the last batch holds 1 real example and 63 padding rows.
    The collapsed KL is analytic (no draws), so the 257-image mean minus the 256-image one
    must be exactly that one example's KL: padding rows never enter a mean."""
    model, params, eval_set = trained
    subset = eval_set.head
    with_pad = evaluation.evaluate(model, params, subset(257), batch_size=64)
    without = evaluation.evaluate(model, params, subset(256), batch_size=64)
    last_kl = 257 * with_pad["kl"] - 256 * without["kl"]
    posterior = model.apply({"params": params}, subset(257).first()[0][256:], method=model.encode)
    expected = float(posterior.kl_per_dim().sum())
    assert last_kl == pytest.approx(expected, rel=1e-4, abs=1e-3)
    assert with_pad["num_examples"] == 257


def test_deterministic_models_have_no_nll(tmp_path):
    cfg = make_test_config(**{"model.posterior": "deterministic", "train.num_epochs": 1})
    result = training.train_and_evaluate(cfg, tmp_path)
    test = data.load("digits", "test")
    model = model_lib.build_model(cfg.model, test.info.shape, 10, binary_data=True)
    scores = evaluation.evaluate(
        model,
        jax.device_get(result.state["params"]),
        evaluation.EvalSet.from_dataset(test, True),
        k=10,
    )
    assert "nll_is" not in scores and np.isfinite(scores["elbo"])


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"k": -1}, "K must be ≥ 0"),
        ({"batch_size": 0}, "batch size must be ≥ 1"),
        ({"chunk_size": -2}, "chunk size must be ≥ 0"),
    ],
)
def test_bad_arguments_are_refused_in_words(trained, kwargs, pattern):
    model, params, eval_set = trained
    with pytest.raises(ValueError, match=pattern):
        evaluation.evaluate(model, params, eval_set, **kwargs)


def test_auto_chunk_keeps_about_five_thousand_decoder_rows():
    assert evaluation.auto_chunk_size(100, 5000) == 50
    assert evaluation.auto_chunk_size(500, 5000) == 10
    assert evaluation.auto_chunk_size(100, 20) == 20  # never more than K
    assert evaluation.auto_chunk_size(10000, 5000) == 1
    # Rows of 28 × 28 × 32 maps: 32 times fewer rows (156) than rows of 784 logits.
    assert evaluation.auto_chunk_size(50, 1000, 28 * 28 * 32) == 3
    assert evaluation.auto_chunk_size(500, 1000, 28 * 28 * 32) == 1


def test_a_sample_adds_its_decoders_output_or_its_finest_maps_to_the_widest_array():
    """What sizes the automatic chunk, read from the trace: an MLP's 784 logits per sample of
    an MNIST image (its hidden layers are narrower), and a conv hierarchy's finest state of
    8 × 8 positions × 8 channels on the digits (wider than its 64 logits)."""
    from cvae import config as config_lib
    from cvae.models import vae

    seed = config_lib.apply_preset(config_lib.base_config(), "seed").model
    seed.posterior = "gaussian"
    mlp = vae.build_model(seed, (28, 28, 1), 0, binary_data=True)
    assert evaluation.sample_row_elements(mlp) == 784
    conv = make_test_config(
        **{
            "model.arch": "resnet",
            "model.conv_channels": (8, 8),
            "model.groups_per_level": (2, 2),
            "model.code_channels": 1,
            "model.inference": "top_down",
            "model.decoder_layers": "all",
        }
    ).model
    groups = vae.build_model(conv, (8, 8, 1), 10, binary_data=True)
    assert evaluation.sample_row_elements(groups) == 8 * 8 * 8
