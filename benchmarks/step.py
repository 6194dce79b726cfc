"""One training step of any config, timed: ``python -m benchmarks.step --config
experiments/configs/mnist_deep.py [--config.train.precision=bfloat16] [--steps 10]``.

Times the trainer's own step (``cvae.training.steps.make_step``: the loss, its gradient,
the optimizer, the moving average and the update skip the config asks for), jitted on one
device, on a batch of random binary images of the config's data shape — no data set is
read, so it runs anywhere. Prints one JSON line: ms per step, examples/s, the step's
FLOPs per example (XLA's cost analysis of the compiled step) and the achieved GFLOP/s as a
fraction of the f32 matmul peak measured in the same process; and the step's op roofline
(``benchmarks.roofline``: its matrix products and convolutions, gradients included, each
timed alone), with the fraction of the step's time it accounts for. Results:
docs/performance.md and docs/results.md.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

from benchmarks import roofline
from benchmarks.common import device_name
from benchmarks.peak import matmul_peak_gflops
from cvae import data
from cvae.models import vae as model_lib
from cvae.training import steps
from cvae.training.setup import initial_state
from experiments import cli

config_flags.DEFINE_config_file("config", None, "A config file from experiments/configs/.")
flags.DEFINE_integer("steps", 10, "Timed steps (after one that compiles).")
flags.DEFINE_string("shape", "28,28,1", "H,W,C of the images (MNIST by default).")
flags.DEFINE_integer("num_classes", 10, "Classes of the labels (a conditional model's).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    cfg = FLAGS.config
    cli.require(
        cfg is not None, "--config", "a config file, e.g. experiments/configs/mnist_deep.py"
    )
    cli.require(FLAGS.steps >= 1, "--steps", "at least 1")
    shape = tuple(int(s) for s in FLAGS.shape.split(","))
    batch = cfg.train.batch_size
    model = model_lib.build_model(cfg.model, shape, FLAGS.num_classes, binary_data=True)
    total = 10_000
    one_step = steps.make_step(
        model=model,
        config=cfg,
        preprocess=data.Preprocessor(255.0, binarize=True, dequantize=False),
        total_steps=total,
    )
    step = jax.jit(one_step, donate_argnums=(0,))
    state = initial_state(model, cfg, total)  # the trainer's own initial state
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch,) + shape, dtype=np.uint8)
    labels = rng.integers(0, max(FLAGS.num_classes, 1), batch).astype(np.int32)
    indices = jnp.arange(batch)
    hyper = steps.hyperparameters(cfg)
    key = jax.random.key(0)
    compiled = step.lower(state, indices, images, labels, key, hyper).compile()
    cost = compiled.cost_analysis() or {}
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", 0.0)) / batch
    state, scalars = step(state, indices, images, labels, key, hyper)  # compile and warm
    jax.block_until_ready(scalars)
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        state, scalars = step(state, indices, images, labels, key, hyper)
    jax.block_until_ready(scalars)
    seconds = (time.perf_counter() - start) / FLAGS.steps
    roof = roofline.op_roofline(one_step, state, indices, images, labels, key, hyper)
    peak = matmul_peak_gflops()
    achieved = flops * batch / seconds / 1e9
    print(
        json.dumps(
            {
                "device": device_name(),
                "precision": str(jnp.dtype(steps.compute_dtype(cfg.train))),
                "batch_size": batch,
                "ms_per_step": round(seconds * 1e3, 1),
                "examples_per_s": round(batch / seconds, 1),
                "gflop_per_example": round(flops / 1e9, 3),
                "achieved_gflops": round(achieved, 1),
                "matmul_peak_gflops": round(peak, 1),
                "fraction_of_peak": round(achieved / peak, 3),
                "op_roofline_ms": round(roof.seconds * 1e3, 1),
                "fraction_of_op_roofline": round(roof.seconds / seconds, 3),
                "slowest_ops": roof.slowest(3),
            }
        )
    )


if __name__ == "__main__":
    cli.run(main)
