"""The streaming pipeline: the same run as the on-device path, chosen by size,
resumable, with worker processes, and failing cleanly when the data cannot be read."""

import os

import jax
import numpy as np
import pytest

from cvae import Workdir, data, load_run, training
from cvae import config as config_lib
from cvae.runs import checkpoint
from tests.helpers import make_test_config, mnist_data_dir, requires_mnist

pytestmark = pytest.mark.slow


def _params(result):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(result.state["params"])]


def _assert_same_params(a, b):
    for x, y in zip(_params(a), _params(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def device_run(tmp_path_factory):
    cfg = make_test_config(**{"data.pipeline": "device", "train.num_epochs": 3})
    return training.train_and_evaluate(cfg, tmp_path_factory.mktemp("device") / "run")


def _stream_config(**overrides):
    # 21 batches of 64 per epoch in chunks of 5: four full chunks and a last one of 1.
    return make_test_config(
        **{
            "data.pipeline": "stream",
            "train.num_epochs": 3,
            "data.stream_chunk_steps": 5,
            **overrides,
        }
    )


def test_the_stream_trains_the_same_run_as_the_device_path_bitwise(device_run, tmp_path):
    streamed = training.train_and_evaluate(_stream_config(), tmp_path / "run")
    _assert_same_params(streamed, device_run)  # measured: bitwise on XLA:CPU
    assert streamed.final_metrics == device_run.final_metrics
    records = Workdir(tmp_path / "run").read_metrics()
    assert [r["split"] for r in records].count("validation") == 3  # the carved 100 examples


def test_a_resumed_stream_run_is_the_uninterrupted_run(device_run, tmp_path):
    training.train_and_evaluate(_stream_config(**{"train.num_epochs": 1}), tmp_path / "run")
    resumed = training.train_and_evaluate(_stream_config(), tmp_path / "run")
    _assert_same_params(resumed, device_run)


def test_worker_processes_read_the_same_batches(device_run, tmp_path):
    streamed = training.train_and_evaluate(
        _stream_config(**{"data.stream_workers": 2}), tmp_path / "run"
    )
    _assert_same_params(streamed, device_run)


def test_auto_streams_what_exceeds_the_device_limit_and_device_refuses_it():
    small = {"data.max_device_bytes": 50_000}  # digits' 1,500 × 64 bytes = 96,000
    assert training.load_training_data(make_test_config(**small), 1).pipeline == "stream"
    assert training.load_training_data(make_test_config(), 1).pipeline == "device"
    with pytest.raises(config_lib.ConfigError, match="data.pipeline='stream'"):
        training.load_training_data(make_test_config(**small, **{"data.pipeline": "device"}), 1)
    with pytest.raises(config_lib.ConfigError, match="data.pipeline"):
        config_lib.validate(make_test_config(**{"data.pipeline": "disk"}))


def test_a_failing_read_stops_the_run_without_saving_the_half_read_epoch(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_read = data.Subset.read

    def failing_read(self, indices):
        calls["n"] += 1
        if calls["n"] > 30:  # inside the second epoch (21 batches each)
            raise OSError("disk went away")
        return real_read(self, indices)

    monkeypatch.setattr(data.Subset, "read", failing_read)
    cfg = _stream_config(**{"train.checkpoint_every_epochs": 1})
    with pytest.raises(data.PipelineError, match="OSError: disk went away.*rerun the same"):
        training.train_and_evaluate(cfg, tmp_path / "run")
    ckpt = checkpoint.Checkpointer(tmp_path / "run" / "checkpoints")
    assert ckpt.latest_step() == 21  # epoch 1's save; nothing of epoch 2
    ckpt.close()
    monkeypatch.setattr(data.Subset, "read", real_read)
    assert training.train_and_evaluate(cfg, tmp_path / "run").epoch == 3  # the rerun resumes


@requires_mnist
def test_mnist_streamed_from_its_tfds_files_equals_the_device_path(tmp_path):
    common = {
        "data.name": "mnist",
        "data.data_dir": mnist_data_dir(),
        "data.train_split": "train[:3000]",
        "data.test_split": "test[:500]",
        "data.validation_size": 500,
        "train.num_epochs": 1,
        "train.batch_size": 100,
    }
    variants = {
        "device": {"data.pipeline": "device"},
        "decoded": {"data.pipeline": "stream"},  # decoded once into a cache
        "records": {"data.pipeline": "stream", "data.stream_cache": False},
    }
    runs = {
        name: training.train_and_evaluate(make_test_config(**common, **overrides), tmp_path / name)
        for name, overrides in variants.items()
    }
    for name, kind in (("decoded", data.DecodedSource), ("records", data.TfdsSource)):
        d = training.load_training_data(make_test_config(**common, **variants[name]), 1)
        assert isinstance(d.train_source.source, kind)
        _assert_same_params(runs[name], runs["device"])


def test_generated_colour_images_over_the_device_limit_stream_through_a_resnet(tmp_path):
    """64×64×3 images, 4× a small device limit: auto streams them, a residual net trains on
    a Gaussian likelihood, and a run stopped after one epoch resumes to the same params."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (112, 64, 64, 3), dtype=np.uint8)
    np.savez(tmp_path / "colour.npz", x=images, x_test=images[:32])
    overrides = {
        "data.name": f"npz:{tmp_path / 'colour.npz'}",
        "data.binarize": "none",
        "data.dequantize": True,
        "data.validation_size": 16,
        "data.max_device_bytes": images.nbytes // 4,
        "data.stream_chunk_steps": 1,
        "model.arch": "resnet",
        "model.conv_channels": (8,),
        "model.likelihood": "gaussian",
        "train.batch_size": 16,
        "train.image_grid_size": 4,
        "eval.num_importance_samples": 2,
    }
    whole = training.train_and_evaluate(make_test_config(**overrides), tmp_path / "whole")
    assert training.load_training_data(make_test_config(**overrides), 1).pipeline == "stream"
    assert np.isfinite(whole.final_metrics["elbo"])
    training.train_and_evaluate(
        make_test_config(**overrides, **{"train.num_epochs": 1}), tmp_path / "split"
    )
    _assert_same_params(
        training.train_and_evaluate(make_test_config(**overrides), tmp_path / "split"), whole
    )


def test_a_generated_tfds_set_streams_stops_on_sigterm_and_resumes_to_the_same_run(tmp_path):
    """Random 64×64×3 images written as a TFDS data set (array_record files), 4× a small
    device limit: experiments.train streams them, a SIGTERM mid-run saves and stops, and
    the rerun ends with the params of a run never stopped."""
    import signal
    import time

    from tests import launcher
    from tests.helpers import run_cli, write_random_colour_tfds

    name = write_random_colour_tfds(tmp_path / "tfds", num_train=160, num_test=32)
    settings = {
        "data.name": name,
        "data.data_dir": tmp_path / "tfds",
        "data.binarize": "none",
        "model.likelihood": "gaussian",
        "data.validation_size": 16,
        "data.max_device_bytes": 160 * 64 * 64 * 3 // 4,
        "data.stream_chunk_steps": 1,
        "model.encoder_widths": "(32,16)",
        "model.latent_dim": 4,
        "train.batch_size": 64,
        "train.num_devices": 1,
        "train.num_epochs": 100,
        "eval.every_epochs": 100,
        "eval.num_importance_samples": 2,
        "train.image_grid_size": 0,
    }
    args = [
        "experiments.train",
        "--config",
        "experiments/configs/digits_cvae.py",
        *[f"--config.{k}={v}" for k, v in settings.items()],
    ]
    env = {"CVAE_CACHE_DIR": str(tmp_path / "cache")}
    proc = launcher.start(*args, "--workdir", str(tmp_path / "a"), env=env)
    deadline = time.time() + 180
    while time.time() < deadline and len(Workdir(tmp_path / "a").read_metrics()) < 3:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 143 and "SIGTERM received" in err, err[-2000:]
    assert "streaming them" in err  # auto chose the stream
    stopped_at = Workdir(tmp_path / "a").read_metrics()[-1]["epoch"]
    assert 3 <= stopped_at < 100
    # The rerun resumes a; b runs whole, in a fresh interpreter (a different string-hash
    # seed from a's forked processes, so a dependence on set order would show).
    for workdir in ("a", "b"):
        out = run_cli(*args, "--workdir", str(tmp_path / workdir), env=env, fresh=workdir == "b")
        assert out.returncode == 0, out.stderr[-2000:]
    stopped, whole = (load_run(tmp_path / w, which="latest").params for w in ("a", "b"))
    for x, y in zip(
        jax.tree_util.tree_leaves(stopped), jax.tree_util.tree_leaves(whole), strict=True
    ):
        np.testing.assert_array_equal(x, y)


def test_a_killed_reader_process_is_one_line_and_the_rerun_resumes(tmp_path):
    """A reader process SIGKILLed in the first epoch (a fail point, as the out-of-memory
    killer would): exit status 2, one line naming it and the fix, no checkpoint; the same
    command then trains the run."""
    from tests.helpers import run_cli

    args = [
        "experiments.train",
        "--config",
        "experiments/configs/digits_cvae.py",
        "--workdir",
        str(tmp_path / "run"),
        *[
            f"--config.{k}={v}"
            for k, v in {
                "data.pipeline": "stream",
                "data.stream_workers": 1,
                "train.num_epochs": 1,
                "model.encoder_widths": "(32,16)",
                "model.latent_dim": 4,
                "train.num_devices": 1,
                "train.image_grid_size": 0,
            }.items()
        ],
    ]
    killed = run_cli(*args, env={"CVAE_FAULT": "stream_read:5"})
    assert killed.returncode == 2, killed.stderr[-2000:]
    last = killed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: a reader process died") and "stream_workers" in last, last
    assert "Traceback" not in killed.stderr
    assert Workdir(tmp_path / "run").read_metrics() == []
    assert not list((tmp_path / "run" / "checkpoints").glob("*/[0-9]*"))
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert load_run(tmp_path / "run").meta["epoch"] == 1


def test_cropped_and_resized_images_stream_as_they_train_on_device(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "big.npz",
        x=rng.integers(0, 256, (96, 20, 18, 3), dtype=np.uint8),
        x_test=rng.integers(0, 256, (16, 20, 18, 3), dtype=np.uint8),
    )
    common = {
        "data.name": f"npz:{tmp_path / 'big.npz'}",
        "data.center_crop": 16,
        "data.resize": 8,
        "data.binarize": "none",
        "data.validation_size": 16,
        "train.batch_size": 16,
        "model.likelihood": "gaussian",
        "data.stream_chunk_steps": 2,
        "eval.num_importance_samples": 2,
    }
    runs = {
        p: training.train_and_evaluate(
            make_test_config(**common, **{"data.pipeline": p}), tmp_path / p
        )
        for p in ("device", "stream")
    }
    assert training.load_training_data(make_test_config(**common), 1).info.shape == (8, 8, 3)
    _assert_same_params(runs["stream"], runs["device"])


PEAK_MEMORY_SCRIPT = r"""
import sys, threading, time
sys.path.insert(0, sys.argv[1])
from cvae import load_run, training
from tests.helpers import make_test_config

def anonymous_mb():  # resident memory not backed by a file (the memory-mapped set is)
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(status["RssAnon"].split()[0]) / 1024

peak = [0.0]
def watch():
    while True:
        peak[0] = max(peak[0], anonymous_mb())
        time.sleep(0.002)
threading.Thread(target=watch, daemon=True).start()
result = training.train_and_evaluate(make_test_config(**{
    "data.name": f"npy:{sys.argv[2]}", "data.validation_size": 0, "data.validation_split": "val",
    "data.binarize": "dynamic", "data.max_device_bytes": 2**20, "model.likelihood": "bernoulli",
    "model.encoder_widths": (16,), "train.batch_size": 512, "train.num_epochs": 1,
    "data.stream_chunk_steps": 5, "train.image_grid_size": 0,
    "eval.num_importance_samples": 0}), sys.argv[3])
# After training (which scored the test split): evaluate it again from the saved run, and
# encode the sample of training codes an ex-post sampler is fitted to.
run = load_run(sys.argv[3])
scores = run.evaluate("test", k=0)
codes, _ = run.training_codes()
time.sleep(0.05)
print("peak", result.epoch, scores["num_examples"], len(codes), peak[0], flush=True)
"""


def _write_npy_set(directory, n, rng, shape=(64, 64, 3)):
    directory.mkdir()
    images = np.lib.format.open_memmap(directory / "x.npy", "w+", np.uint8, (n,) + shape)
    for start in range(0, n, 8192):
        images[start : start + 8192] = rng.integers(
            0, 256, (min(8192, n - start),) + shape, dtype=np.uint8
        )
    images.flush()
    np.save(directory / "x_val.npy", rng.integers(0, 256, (256,) + shape, np.uint8))
    test = np.lib.format.open_memmap(directory / "x_test.npy", "w+", np.uint8, (n // 2,) + shape)
    test[:] = images[: n // 2]
    test.flush()


def test_streaming_memory_does_not_grow_with_the_split(tmp_path):
    """Peak anonymous memory of a streamed run on a 512 MB train split and a 256 MB test
    split against 60 + 30 MB with the same shapes (fresh processes): training, its test
    evaluation, the saved run's evaluation and the ex-post sampler's training codes each
    hold a few batches or chunks, never a split."""
    import subprocess
    import sys

    from tests.helpers import ROOT

    rng = np.random.default_rng(0)
    _write_npy_set(tmp_path / "small", 10 * 512, rng)  # 60 MB: 2 chunks of 5 batches
    _write_npy_set(tmp_path / "big", 85 * 512, rng)  # 512 MB: 17 chunks of 5 batches
    (tmp_path / "script.py").write_text(PEAK_MEMORY_SCRIPT)
    # Freed buffers go back to the OS at once (glibc would keep some in its arenas and
    # blur the measurement); the program's own allocations are unchanged.
    env = {
        **os.environ,
        "XLA_FLAGS": "",
        "JAX_PLATFORMS": "cpu",
        "MALLOC_MMAP_THRESHOLD_": str(2**20),
    }
    peaks = {}
    for name, n in (("small", 10 * 512), ("big", 85 * 512)):
        out = subprocess.run(
            [
                sys.executable,
                str(tmp_path / "script.py"),
                str(ROOT),
                str(tmp_path / name),
                str(tmp_path / f"run-{name}"),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        epoch, tested, codes, peaks[name] = out.stdout.split()[-4:]
        assert (int(epoch), int(tested), int(codes)) == (1, n // 2, min(n, 20000))
    growth = float(peaks["big"]) - float(peaks["small"])
    data_growth = 75 * 512 * 1.5 * 12288 / 2**20  # train and test splits: 675 MB
    # Measured: 74 MB for 675 MB more data; 2.7 GB before evaluation read batch by batch.
    assert growth < data_growth / 4, (peaks, data_growth)


@pytest.mark.parametrize(
    "arch, chunk_steps, loops", [("mlp", 2, True), ("conv", 2, False), ("conv", 1, False)]
)
def test_a_conv_models_stream_chunk_has_no_loop_on_a_cpu(arch, chunk_steps, loops):
    """XLA:CPU runs a loop body's gradient convolutions without its fast kernels (about 50×
    slower at 64×64; steps.unroll_convolutions): a conv model's chunk is unrolled there —
    in the program JAX hands to XLA too, where a scan of one step would be a loop that XLA
    removes only after choosing its kernels (measured 15× slower)."""
    overrides = {
        "data.pipeline": "stream",
        "data.stream_chunk_steps": chunk_steps,
        "model.arch": arch,
        "model.conv_channels": (4, 8),
        "model.conv_dense_width": 16,
    }
    setup = training.setup(make_test_config(**overrides))
    images = np.zeros((chunk_steps, 64, 8, 8, 1), np.uint8)  # a chunk of batches of 64 digits
    labels = np.zeros((chunk_steps, 64), np.int32)
    lowered = setup.programs.train_epoch.lower(setup.state, images, labels, jax.random.key(0))
    # The loop over steps carries the float params (the random-bit generator's own small
    # loops carry only integers).
    compiled_loops = [
        line
        for line in lowered.compile().as_text().splitlines()
        if " while(" in line and "f32[" in line.partition(" while(")[0]
    ]
    handed_loops = [
        line
        for line in lowered.as_text().splitlines()
        if "stablehlo.while" in line and "f32" in line
    ]
    assert bool(compiled_loops) is (loops and chunk_steps > 1)
    assert bool(handed_loops) is loops
