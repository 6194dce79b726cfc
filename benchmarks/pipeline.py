"""The streaming input pipeline (``cvae.data.stream``) against the on-device path.

    python -m benchmarks.pipeline                  # MNIST: loader, streamed, on-device training
    python -m benchmarks.pipeline --image_size 64  # generated 64×64×3 images, residual nets

Three measurements in one process: the loader alone (one epoch's batches read and
delivered, no training), training through it, and training on the on-device path; it
prints their examples/s, the loader's over the streamed training's (how far the input is
from limiting training), and the streamed training's over the on-device training's. With
``--image_size 64`` it measures the same loader on generated 64×64×3 images (8,192 in a
memory-mapped ``npy:`` set) against training celeba64_cvae's residual nets through the
stream (on a slice of the set: these nets are slow on a CPU). Results: docs/performance.md.
"""

import json
import tempfile
import time

import jax
import numpy as np
from absl import flags

from benchmarks.common import FLAGS, bench_config, device_name, peak_rss_mb, timed_throughput
from benchmarks.peak import matmul_peak_gflops
from benchmarks.training import run_one
from cvae import Workdir, data, training
from cvae.training import steps, train_and_evaluate
from experiments import cli
from experiments.configs import celeba64_cvae

flags.DEFINE_integer(
    "image_size",
    0,
    "Instead of MNIST, generated image_size² × 3 images through celeba64_cvae's residual nets.",
)


def pipeline_one(arch, batch_size, epochs, init, seed, data_dir, peak_gflops) -> dict:
    """The loader alone, training through it, and training on device (see above)."""
    cfg = bench_config(arch, batch_size, epochs, init, seed, data_dir)
    cfg.data.pipeline, cfg.data.stream_workers = "stream", FLAGS.stream_workers
    d = training.load_training_data(cfg, 1)  # builds the decoded cache on first use
    assert d.train_source is not None  # data.pipeline = "stream" keeps the source
    reader = data.Stream(d.train_source, cfg.data.stream_chunk_steps, workers=FLAGS.stream_workers)
    order = np.asarray(
        steps.make_epoch_indices(num_train=d.num_train, batch_size=batch_size, class_table=None)(
            jax.random.key(seed), 0
        )
    )
    loader = []
    for _ in range(2):  # the first pass warms the file cache and the threads
        tick, examples = time.perf_counter(), 0
        for images, _labels in reader.chunks(order):
            examples += images.shape[0] * images.shape[1]
        loader.append(examples / (time.perf_counter() - tick))
    streamed = run_one(
        arch, batch_size, epochs, init, seed, data_dir, peak_gflops, pipeline="stream"
    )
    on_device = run_one(arch, batch_size, epochs, init, seed, data_dir, peak_gflops)
    return {
        "peer": "cvae",
        "benchmark": "pipeline",
        "arch": arch,
        "batch_size": batch_size,
        "epochs": epochs,
        "dataset": cfg.data.name,
        "stream_workers": FLAGS.stream_workers,
        "chunk_steps": cfg.data.stream_chunk_steps,
        "loader_examples_per_s": loader[-1],
        "loader_first_pass_examples_per_s": loader[0],
        "stream_train_examples_per_s": streamed["train_examples_per_s"],
        "device_train_examples_per_s": on_device["train_examples_per_s"],
        "loader_over_stream_training": loader[-1] / streamed["train_examples_per_s"],
        "stream_over_device": (
            streamed["train_examples_per_s"] / on_device["train_examples_per_s"]
        ),
        "stream_fraction_of_peak": streamed["fraction_of_peak"],
        "device_fraction_of_peak": on_device["fraction_of_peak"],
        "same_test_neg_elbo": streamed["test_neg_elbo"] == on_device["test_neg_elbo"],
        "peak_rss_mb": peak_rss_mb(),
        "matmul_peak_gflops": peak_gflops,
        "device": streamed["device"],
    }


def image_pipeline_one(size, batch_size, epochs, seed) -> dict:
    """The loader on generated size×size×3 images against the residual nets' training."""
    if epochs < 2:
        raise cli.UsageError("--epochs must be ≥ 2 (the first epoch compiles and is not timed)")
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="cvae_bench_") as tmp:
        images = np.lib.format.open_memmap(f"{tmp}/x.npy", "w+", np.uint8, (8192, size, size, 3))
        for start in range(0, 8192, 1024):
            images[start : start + 1024] = rng.integers(0, 256, (1024, size, size, 3), np.uint8)
        images.flush()
        for split in ("val", "test"):
            np.save(
                f"{tmp}/x_{split}.npy", rng.integers(0, 256, (batch_size, size, size, 3), np.uint8)
            )
        source = data.ArraySource(data.load(f"npy:{tmp}", "train"))
        reader = data.Stream(source, 32, workers=FLAGS.stream_workers)
        order = np.random.default_rng(seed).permutation(8192)[: 8192 // batch_size * batch_size]
        loader = []
        for _ in range(2):  # the first pass warms the file cache and the threads
            tick = time.perf_counter()
            examples = sum(
                im.shape[0] * im.shape[1] for im, _ in reader.chunks(order.reshape(-1, batch_size))
            )
            loader.append(examples / (time.perf_counter() - tick))
        cfg = celeba64_cvae.get_config()
        cfg.data.name, cfg.data.center_crop, cfg.data.resize = f"npy:{tmp}", 0, 0
        cfg.data.validation_split, cfg.data.pipeline = "val", "stream"
        cfg.data.train_split = f"train[:{4 * batch_size}]"
        cfg.data.stream_workers = FLAGS.stream_workers
        cfg.train.batch_size, cfg.train.num_epochs, cfg.seed = batch_size, epochs, seed
        cfg.train.num_devices, cfg.train.image_grid_size = 1, 0
        cfg.eval.num_importance_samples, cfg.eval.batch_size = 0, batch_size
        train_and_evaluate(cfg, f"{tmp}/run")
        records = Workdir(f"{tmp}/run").read_metrics("train")
    training, epoch_s = timed_throughput(records, 4 * batch_size)
    return {
        "peer": "cvae",
        "benchmark": "pipeline",
        "arch": "celeba64_cvae resnet",
        "image_shape": [size, size, 3],
        "batch_size": batch_size,
        "epochs": epochs,
        "stream_workers": FLAGS.stream_workers,
        "loader_examples_per_s": loader[-1],
        "loader_first_pass_examples_per_s": loader[0],
        "stream_train_examples_per_s": training,
        "epoch_s": epoch_s,
        "loader_over_stream_training": loader[-1] / training,
        "peak_rss_mb": peak_rss_mb(),
        "device": device_name(),
    }


def main(argv):
    del argv
    if FLAGS.image_size:
        record = image_pipeline_one(FLAGS.image_size, FLAGS.batch_size, FLAGS.epochs, FLAGS.seed)
    else:
        record = pipeline_one(
            FLAGS.arch,
            FLAGS.batch_size,
            FLAGS.epochs,
            FLAGS.init,
            FLAGS.seed,
            FLAGS.data_dir,
            matmul_peak_gflops(),
        )
    print(json.dumps(record))


if __name__ == "__main__":
    cli.run(main)
