"""The benchmark's accounting and output contract (its speed is never asserted)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks import common
from cvae import config as config_lib
from cvae.models import vae as model_lib
from tests.helpers import ROOT, mnist_data_dir, requires_mnist, run_cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("arch", ["seed", "torch_example", "iwae"])
def test_flops_per_example_is_six_per_dense_weight_of_the_built_model(arch):
    cfg = config_lib.apply_preset(config_lib.base_config(), arch).model
    cfg.posterior = "gaussian"
    params = model_lib.init_params(model_lib.build_model(cfg, (28, 28, 1), 10), jax.random.key(0))
    kernels = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if path[-1].key == "kernel"
    ]
    assert common.dense_flops_per_example(arch) == 6 * sum(int(np.prod(k.shape)) for k in kernels)


def test_importance_sampling_flops_count_a_hierarchys_nets_per_sample():
    """Burda et al.'s two-layer nets: the encoder 784-200-200 → 2×100 once per image; per
    sample the decoder 100-200-200-784, up_2 100-100-100 → 2×50 and down_2 50-100-100 →
    2×100, 2 FLOPs per weight. The same layers inferred top-down."""
    from benchmarks import evaluation as bench_evaluation

    cfg = config_lib.apply_preset(config_lib.base_config(), "iwae").model
    cfg.update(
        {"posterior": "gaussian", "latent_dim": 100, "upper_latent_dims": (50,)}
        | {"upper_widths": ((100, 100),)}
    )
    params = model_lib.init_params(model_lib.build_model(cfg, (28, 28, 1), 10), jax.random.key(0))
    encoder = 784 * 200 + 200 * 200 + 2 * 200 * 100
    per_sample = (
        (100 * 200 + 200 * 200 + 200 * 784)
        + (100 * 100 + 100 * 100 + 2 * 100 * 50)
        + (50 * 100 + 100 * 100 + 2 * 100 * 100)
    )
    got = bench_evaluation.importance_sampling_flops(params, 3, 7)
    assert got == 2 * (3 * 7 * per_sample + 3 * encoder)
    # Top-down: the trunks 784-200-200 and 200-100-100 and z₂'s heads 100 → 2×50 once per
    # image; per sample z₁'s posterior [h₁, z₂] 250-200 → 2×100 reads the drawn z₂.
    cfg.inference = "top_down"
    params = model_lib.init_params(model_lib.build_model(cfg, (28, 28, 1), 10), jax.random.key(0))
    per_image = (784 * 200 + 200 * 200) + (200 * 100 + 100 * 100) + 2 * 100 * 50
    top_down_per_sample = (
        (100 * 200 + 200 * 200 + 200 * 784)
        + (250 * 200 + 2 * 200 * 100)
        + (50 * 100 + 100 * 100 + 2 * 100 * 100)
    )
    got = bench_evaluation.importance_sampling_flops(params, 3, 7)
    assert got == 2 * (3 * 7 * top_down_per_sample + 3 * per_image)


def test_torch_init_draws_weights_and_biases_uniformly_within_one_over_sqrt_fan_in():
    cfg = config_lib.apply_preset(config_lib.base_config(), "torch_example").model
    cfg.init = "torch"
    params = model_lib.init_params(model_lib.build_model(cfg, (28, 28, 1), 10), jax.random.key(0))
    layer = params["encoder"]["trunk"]["hidden_0"]["dense"]
    bound = 1 / np.sqrt(784)
    for leaf in (layer["kernel"], layer["bias"]):
        assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.9 * bound
        assert abs(float(np.var(leaf)) - bound**2 / 3) < 0.1 * bound**2 / 3


@pytest.fixture(scope="module")
def mnist_subset(tmp_path_factory) -> str:
    """The first 10,000 MNIST training and 2,000 test images as an ``npz:`` set: what a
    benchmark's accounting needs, at a sixth of a full epoch's cost."""
    from cvae import data

    train = data.load("mnist", "train[:10000]", mnist_data_dir())
    test = data.load("mnist", "test[:2000]", mnist_data_dir())
    path = tmp_path_factory.mktemp("mnist") / "mnist_10k.npz"
    np.savez(
        path,
        x=train.images[..., 0],
        y=train.labels,
        x_test=test.images[..., 0],
        y_test=test.labels,
    )
    return f"npz:{path}"


def _benchmark(module: str, *flags: str, **env: str):
    """``python -m benchmarks.MODULE``, seed arch, batch 1024, 2 epochs (on MNIST unless
    the flags name another ``--dataset``): (the JSON record it prints last, the completed
    process)."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "",
        "TFDS_DATA_DIR": mnist_data_dir(),
        **env,
    }
    args = ["--arch", "seed", "--batch-size", "1024", "--epochs", "2", *flags]
    out = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out


def test_the_op_roofline_counts_each_product_and_convolution_as_often_as_it_runs():
    """Three matmuls in a scan and one convolution, inside a jitted function: each counted
    as often as it runs, with XLA's FLOPs for one run (2·m·k·n for the matmul; for the 3×3
    SAME convolution 2 per tap that lands inside the 8×8 map: 22² per map and channel), and
    the roofline's time each op's best time alone times its count."""
    import jax.numpy as jnp

    from benchmarks import roofline

    def fn(w, x, kernel):
        h, _ = jax.lax.scan(lambda h, _: (jnp.tanh(h @ w), None), x, None, length=3)
        maps = h.reshape(4, 8, 8, 1)
        return jax.lax.conv_general_dilated(
            maps, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    roof = roofline.op_roofline(
        jax.jit(fn), jnp.ones((64, 64)), jnp.ones((4, 64)), jnp.ones((3, 3, 1, 2)), repeats=2
    )
    conv, dot = sorted(roof.ops, key=lambda op: op.equation.primitive.name)
    assert (dot.equation.primitive.name, dot.count, dot.flops) == (
        "dot_general",
        3,
        2 * 4 * 64 * 64,
    )
    assert (conv.count, conv.flops) == (1, 2 * 4 * 2 * 22**2)
    assert roof.flops == 3 * dot.flops + conv.flops
    assert roof.seconds == pytest.approx(3 * dot.seconds + conv.seconds)
    assert roof.slowest(1)[0].startswith(("dot_general", "conv_general_dilated"))


def test_the_op_roofline_refuses_a_product_inside_a_loop_of_unknown_length():
    import jax.numpy as jnp

    from benchmarks import roofline

    def loop(w, x):
        return jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] @ w), (0, x))

    with pytest.raises(ValueError, match="inside a while: how often it runs"):
        roofline.heavy_ops(loop, jnp.ones((8, 8)), jnp.ones((2, 8)))


@requires_mnist
def test_bench_evaluation_relates_its_speed_to_the_peak_and_to_its_op_roofline():
    out = run_cli(
        "benchmarks.evaluation",
        *["--arch", "seed", "--k", "8", "--num_examples", "32", "--eval_batch_size", "16"],
        *["--data_dir", mnist_data_dir()],
    )
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads(out.stdout.strip().splitlines()[-1])
    assert record["image_samples_per_s"] == pytest.approx(32 * 8 / record["seconds"])
    assert record["fraction_of_op_roofline"] == pytest.approx(
        record["image_samples_per_s"] / record["op_roofline_image_samples_per_s"]
    )
    assert record["op_roofline_gflops"] > 0 and len(record["slowest_ops"]) == 3
    assert record["slowest_ops"][0].startswith("dot_general")  # an MLP: matmuls only


def test_xlas_flop_count_of_the_nll_is_the_dense_count_plus_a_few_percent_for_mlps():
    """For MLP nets XLA's count of the importance-sampled NLL's FLOPs is the dense layers'
    count plus the elementwise work (measured 3.8% more for the seed and iwae presets), and
    it grows linearly in the images and in the samples."""
    from benchmarks import evaluation as bench_evaluation

    cfg = config_lib.apply_preset(config_lib.base_config(), "seed").model
    cfg.posterior = "gaussian"
    model = model_lib.build_model(cfg, (28, 28, 1), 0, binary_data=True)
    params = model_lib.init_params(model, jax.random.key(0))
    counted = bench_evaluation.xla_flops(model, params, 3, 100)
    dense = bench_evaluation.importance_sampling_flops(params, 3, 100)
    assert dense < counted < 1.1 * dense
    assert bench_evaluation.xla_flops(model, params, 6, 100) == pytest.approx(2 * counted)
    more_samples = bench_evaluation.xla_flops(model, params, 3, 200) - counted
    assert more_samples == pytest.approx(
        dense - bench_evaluation.importance_sampling_flops(params, 3, 0), rel=0.1
    )


def test_xlas_flop_count_covers_the_convolutions_of_groups_of_latent_maps():
    """The dense count misses a conv hierarchy's work (its nets are convolutions); XLA's
    count is many times larger."""
    from benchmarks import evaluation as bench_evaluation
    from experiments.configs import mnist_deep

    cfg = mnist_deep.get_config().model
    cfg.conv_channels, cfg.groups_per_level = (8, 8), (1, 2)
    model = model_lib.build_model(cfg, (8, 8, 1), 0, binary_data=True)
    params = model_lib.init_params(model, jax.random.key(0))
    counted = bench_evaluation.xla_flops(model, params, 2, 10)
    assert counted > 10 * bench_evaluation.importance_sampling_flops(params, 2, 10)


@requires_mnist
def test_bench_prints_the_documented_json_line(mnist_subset):
    record, _ = _benchmark("training", "--dataset", mnist_subset, "--batch-size", "256")
    for key in (
        "peer",
        "arch",
        "batch_size",
        "epochs",
        "seed",
        "init",
        "train_examples_per_s",
        "first_epoch_s",
        "epoch_s",
        "test_neg_elbo",
        "peak_rss_mb",
        "matmul_peak_gflops",
        "flops_per_example",
        "fraction_of_peak",
    ):
        assert key in record
    assert record["peer"] == "cvae" and len(record["epoch_s"]) == 2
    # Every training image but the last partial batch, each epoch: 39 batches of 256.
    assert record["train_examples_per_s"] == pytest.approx(39 * 256 / record["epoch_s"][1])
    assert record["fraction_of_peak"] == pytest.approx(
        record["train_examples_per_s"]
        * record["flops_per_example"]
        / (record["matmul_peak_gflops"] * 1e9)
    )
    assert 80 < record["test_neg_elbo"] < 300  # a binarized-MNIST ELBO after 78 steps


@requires_mnist
def test_bench_members_compares_a_population_with_the_same_runs_alone(mnist_subset):
    record, out = _benchmark("population", "--members", "2", "--dataset", mnist_subset)
    assert record["benchmark"] == "population" and record["members"] == 2
    assert record["population_over_solo"] == pytest.approx(
        record["population_examples_per_s"] / record["solo_examples_per_s"]
    )
    # Each member trains what its run alone trains: the same test −ELBO, up to rounding
    # differences that grow with the steps (measured 2e-5 relative over ~100).
    np.testing.assert_allclose(
        record["population_test_neg_elbo"], record["solo_test_neg_elbo"], rtol=1e-3
    )
    assert record["state_bytes_per_member"] > 0
    # The layout experiments.sweep uses: one CPU device per usable core, said on stderr.
    cores = len(os.sched_getaffinity(0))
    assert record["device"].startswith(f"{cores} ×") and "device layout:" in out.stderr


@requires_mnist
def test_bench_pipeline_compares_the_loader_stream_and_device_paths(tmp_path):
    record, _ = _benchmark(
        "pipeline", "--train_split", "train[:10000]", CVAE_CACHE_DIR=str(tmp_path)
    )
    assert record["benchmark"] == "pipeline" and record["loader_examples_per_s"] > 0
    assert record["stream_over_device"] == pytest.approx(
        record["stream_train_examples_per_s"] / record["device_train_examples_per_s"]
    )
    assert record["same_test_neg_elbo"]  # the two paths train the same run
    assert list(tmp_path.glob("mnist-*.images.npy"))  # decoded once, into the cache dir


def test_bench_samplers_times_each_fit_and_draw_on_a_runs_codes(tmp_path):
    from cvae import training
    from tests.helpers import make_test_config

    training.train_and_evaluate(make_test_config(**{"train.num_epochs": 1}), tmp_path)
    out = run_cli(
        "benchmarks.samplers",
        *["--workdir", str(tmp_path), "--num_codes", "600", "--num_samples", "200"],
        *["--samplers", "gmm,diffusion"],
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads(out.stdout.strip().splitlines()[-1])
    assert record["num_codes"] == 600 and record["latent_dim"] == 4
    for kind in ("gmm", "diffusion"):
        assert record[f"fit_s_{kind}"] > 0 and record[f"sample_s_{kind}"] > 0
    assert "fit_s_flow" not in record and record["matmul_peak_gflops"] > 0


def test_bench_latent_times_the_tokenizer_the_dit_and_its_sampling():
    """A few steps of each at a small DiT: the documented JSON line, with the tokens of the
    latent and the pixel model equal (49)."""
    for space in ("latent", "pixels"):
        out = run_cli(
            "benchmarks.latent",
            *["--space", space, "--steps", "2", "--num_samples", "100", "--width", "32"],
            *["--depth", "1", "--sampling_steps", "2", "--batch_size", "16"],
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        record = json.loads(out.stdout.strip().splitlines()[-1])
        assert record["benchmark"] == "latent" and record["space"] == space
        assert record["tokens"] == 49 and record["batch_size"] == 16
        for name in ("tokenizer", "dit"):
            assert record[f"{name}_examples_per_s"] > 0
            assert 0 < record[f"{name}_fraction_of_peak"] < 1
        assert record["dit_sample_s_per_10000"] > 0


def test_bench_step_times_any_configs_step():
    """The trainer's step of a small grouped hierarchy: the documented JSON line, with the
    compiled step's FLOPs and a fraction of the measured peak (bf16 steps themselves are
    checked against f32 in tests/training/test_steps.py)."""
    out = run_cli(
        "benchmarks.step",
        *("--config", "experiments/configs/mnist_deep.py", "--shape", "8,8,1", "--steps", "2"),
        *("--config.model.conv_channels=(8,8)", "--config.model.groups_per_level=(1,2)"),
        *("--config.model.code_channels=1", "--config.train.batch_size=8"),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads(out.stdout.strip().splitlines()[-1])
    assert record["precision"] == "float32" and record["batch_size"] == 8  # auto, on a CPU
    assert record["examples_per_s"] > 0 and record["gflop_per_example"] > 0
    assert 0 < record["fraction_of_peak"] < 1
    # Its convolutions, forward and backward, timed alone: the step's op roofline.
    assert record["op_roofline_ms"] > 0 and record["fraction_of_op_roofline"] > 0
    assert record["slowest_ops"][0].startswith("conv_general_dilated")
