"""The importance-sampled NLL's speed: ``cvae.evaluation.evaluate`` (the core behind
training's scores and experiments.evaluate) on the MNIST test images.

    python -m benchmarks.evaluation --arch iwae --k 5000
    python -m benchmarks.evaluation --workdir runs/mnist_vae --k 5000   # a trained run's params

After one batch that compiles, it times the whole set. Its figures are images·samples per
second, and ``fraction_of_roofline``: the dense layers' forward FLOPs (N·K decoder passes
— with, for a hierarchy, its nets between layers — plus N encoder passes, 2 FLOPs per
weight) over the time, as a fraction of the f32 matmul
peak measured in the same process; and ``fraction_of_peak_xla``, the same with XLA's own
count of every operation (convolutions included: the figure for conv nets and groups of
latent maps); and ``fraction_of_op_roofline``, the time one chunk's matrix products and
convolutions take when each runs alone (``benchmarks.roofline``) over the time the
evaluation took for as much work — the ceiling for conv nets, whose small convolutions
XLA:CPU runs well below the matmul peak. Params are the preset's random initialisation (the
speed does not depend on them), or a trained run's with ``--workdir``. The host's cores
are split into one device each, as experiments.evaluate does. Results: docs/performance.md.
"""

from experiments.cpu_cores import split_host_into_cores

split_host_into_cores()  # before jax starts: the evaluation spreads over every core

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import roofline  # noqa: E402
from benchmarks.common import (  # noqa: E402
    FLAGS,
    bench_config,
    dense_forward_flops,
    device_name,
)
from benchmarks.peak import matmul_peak_gflops  # noqa: E402
from cvae import data, evaluation, load_run  # noqa: E402
from cvae.models import objectives  # noqa: E402
from cvae.models import vae as model_lib  # noqa: E402
from experiments import cli  # noqa: E402

flags.DEFINE_integer("k", 5000, "Importance samples per image.")
flags.DEFINE_integer("num_examples", 10000, "Test images scored (≤ 10,000).")
flags.DEFINE_integer("eval_batch_size", 500, "Images per evaluation batch.")
flags.DEFINE_integer("chunk_size", 0, "Importance samples per chunk (0 = automatic).")
flags.DEFINE_string("workdir", None, "Score this trained run instead of random params.")


def importance_sampling_flops(params, num_examples: int, k: int) -> int:
    """The dense layers' forward FLOPs of the importance-sampled NLL: per image and sample,
    the decoder and, in a hierarchy, the nets that read a sampled layer (bottom-up ``up_l``
    draws z_l from z_{l−1}; top-down ``posterior_l`` below the top reads z_{l+1}; ``down_l``
    scores z_{l−1}; the residual design's ``prior_l``, ``expand_l`` and ``state_l`` walk the
    state); once per image, the nets that read only x (the encoder; top-down, the trunks
    ``trunk_l`` and the top layer's ``posterior_L``). Convolutions are not counted: for
    conv nets the figure is a lower bound."""
    heads = [name for name in params if name.startswith("posterior_")]
    top_head = max(heads, key=lambda name: int(name.rpartition("_")[2]), default=None)
    per_image, per_sample = 0, 0
    for name, tree in params.items():
        if name == "encoder" or name.startswith("trunk_") or name == top_head:
            per_image += dense_forward_flops(tree)
        elif name == "decoder" or name.startswith(
            ("up_", "down_", "posterior_", "prior_", "expand_", "state_")
        ):
            per_sample += dense_forward_flops(tree)
    return num_examples * k * per_sample + num_examples * per_image


def xla_flops(model, params, num_examples: int, k: int, probe: int = 4) -> float:
    """XLA's count of the FLOPs of the importance-sampled NLL of ``num_examples`` images
    with ``k`` samples each: the cost analysis of ``log_importance_weights`` compiled for one
    image with ``probe`` and ``2·probe`` samples gives a + b·probe and a + 2b·probe, so the
    work per image a (what reads x alone) and per image·sample b, and the total N·(a + b·K).
    """
    x = jnp.zeros((1, *model.event_shape), jnp.float32)
    labels = jnp.zeros((1,), jnp.int32) if model.num_classes else None

    def counted(draws: int) -> float:
        weights = jax.jit(
            lambda p, x, key: objectives.log_importance_weights(model, p, x, key, draws, labels)
        )
        cost = weights.lower(params, x, jax.random.key(0)).compile().cost_analysis() or {}
        return float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))

    once, twice = counted(probe), counted(2 * probe)
    per_sample = (twice - once) / probe
    return num_examples * (once + per_sample * (k - probe))


def chunk_roofline(model, params, images: int, draws: int) -> roofline.Roofline:
    """The op roofline (``benchmarks.roofline``) of one chunk of the evaluation on one
    device: ``log_importance_weights`` of ``images`` images with ``draws`` samples each. Its
    rate, images·draws over its time, is the evaluation's ceiling on this machine (the work
    that reads x alone is counted per chunk, as if recomputed: a slight overestimate of
    the ceiling's time when the chunks are few)."""
    x = jnp.zeros((images, *model.event_shape), jnp.float32)
    labels = jnp.zeros((images,), jnp.int32) if model.num_classes else None
    return roofline.op_roofline(
        lambda p, x, key: objectives.log_importance_weights(model, p, x, key, draws, labels),
        params,
        x,
        jax.random.key(0),
    )


def eval_one(
    arch, k, num_examples, batch_size, chunk_size, seed, data_dir, workdir, peak_gflops
) -> dict:
    """Times the importance-sampled NLL over ``num_examples`` test images (see above)."""
    if k < 1 or num_examples < 1 or batch_size < 1 or chunk_size < 0:
        raise cli.UsageError(
            "--k, --num_examples and --eval_batch_size must be ≥ 1, --chunk_size ≥ 0"
        )
    if workdir:
        run = load_run(workdir)
        model, params, cfg = run.model, run.params, run.config
        arch = "run"
    else:
        cfg = bench_config(arch, 128, 2, FLAGS.init, seed, data_dir)
        model = model_lib.build_model(cfg.model, (28, 28, 1), 10, binary_data=True)
        params = model_lib.init_params(model, jax.random.key(seed))
    test = data.load(cfg.data.name, "test", cfg.data.data_dir)
    test_set = evaluation.EvalSet.from_dataset(test, cfg.data.binarize == "dynamic")
    eval_set = test_set.head(num_examples)
    score = lambda subset: evaluation.evaluate(
        model, params, subset, k=k, batch_size=batch_size, chunk_size=chunk_size
    )
    warm = test_set.head(batch_size)
    tick = time.perf_counter()
    score(warm)  # compiles the two programs for this shape
    compile_s = time.perf_counter() - tick
    tick = time.perf_counter()
    result = score(eval_set)
    seconds = time.perf_counter() - tick
    n = len(eval_set)
    flops = importance_sampling_flops(params, n, k)
    counted = xla_flops(model, params, n, k)
    devices = jax.local_device_count()
    batch = evaluation.evaluation_batch_size(batch_size, n, devices)
    chunk = chunk_size or evaluation.auto_chunk_size(
        batch, k, evaluation.sample_row_elements(model)
    )
    draws = min(chunk, k)  # what a chunk of the evaluation draws (evaluate clips it too)
    roof = chunk_roofline(model, params, batch // devices, draws)
    roofline_rate = batch // devices * draws / roof.seconds
    return {
        "peer": "cvae",
        "benchmark": "nll_is",
        "arch": arch,
        "k": k,
        "num_examples": n,
        "batch_size": batch_size,
        "chunk_size": chunk,
        "seconds": seconds,
        "first_batch_s": compile_s,
        "image_samples_per_s": n * k / seconds,
        "nll_is": result.get("nll_is"),
        "matmul_peak_gflops": peak_gflops,
        "dense_flops": flops,
        "fraction_of_roofline": flops / seconds / (peak_gflops * 1e9),
        "xla_flops": counted,
        "fraction_of_peak_xla": counted / seconds / (peak_gflops * 1e9),
        "op_roofline_image_samples_per_s": roofline_rate,
        "fraction_of_op_roofline": n * k / seconds / roofline_rate,
        "op_roofline_gflops": roof.flops / roof.seconds / 1e9,
        "slowest_ops": roof.slowest(3),
        "device": device_name(),
    }


def main(argv):
    del argv
    peak = matmul_peak_gflops()
    record = eval_one(
        FLAGS.arch,
        FLAGS.k,
        FLAGS.num_examples,
        FLAGS.eval_batch_size,
        FLAGS.chunk_size,
        FLAGS.seed,
        FLAGS.data_dir,
        FLAGS.workdir,
        peak,
    )
    print(json.dumps(record))
    print(f"peak {peak:.0f} GFLOP/s after: {matmul_peak_gflops():.0f} GFLOP/s", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main)
