"""Where a training step's time goes:
``python -m benchmarks.profile_step [--arch seed] [--batch_size 128]``.

Times the epoch program of the VAE on MNIST with parts removed (binarization, the
on-device gather, the backward pass), and a plain jitted step fed pre-binarized batches
from a Python loop, in ms per step. Every variant's step returns the loss and the batch
means of the per-example terms, as the trainer's does (a scalar-only step compiles to a
different, much slower program on XLA:CPU: docs/performance.md, finding 6). Then the
ceiling: the model's dense layers alone (the same matrix shapes, forward and backward,
nothing else) as a fraction of the f32 matmul peak measured in the same run — no
implementation of this model can beat it on this machine. Needs the prepared TFDS mnist.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags

from benchmarks.peak import matmul_peak_gflops
from cvae import config as config_lib
from cvae import data
from cvae.models import objectives
from cvae.models import vae as model_lib
from experiments import cli

flags.DEFINE_enum("arch", "seed", ["seed", "torch_example", "iwae"], "Architecture preset.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_string("data_dir", None, "TFDS directory holding mnist.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    cfg = config_lib.apply_preset(config_lib.base_config(), FLAGS.arch)
    cfg.model.posterior = "gaussian"
    model = model_lib.build_model(cfg.model, (28, 28, 1), 10, binary_data=True)
    params = model_lib.init_params(model, jax.random.key(0))
    tx = optax.adam(1e-3)
    opt = tx.init(params)
    images = data.load("mnist", "train", FLAGS.data_dir).images
    device_images = jnp.asarray(images)
    batch, steps = FLAGS.batch_size, 60000 // FLAGS.batch_size
    order = jax.random.permutation(jax.random.key(0), 60000)[: batch * steps]
    order = order.reshape(steps, batch)

    def loss(p, x, key):
        # (loss, per-example terms), and each step returns the terms' batch means — as the
        # trainer's step does. Returning the scalar loss alone lets XLA:CPU fuse the
        # likelihood's log1p into one YNNPACK full reduction, which costs ≈ 1.6 ms per
        # step at seed/128 (profiled): that program is not the one training runs.
        value, terms = objectives.elbo_loss(model, p, x, key)
        return value, {name: jnp.mean(term) for name, term in terms.items()}

    def epoch_program(binarize=True, gather=True, backward=True):
        def epoch(params, opt, key):
            def step(carry, indices):
                p, o, s = carry
                sample_key, binarize_key = jax.random.split(jax.random.fold_in(key, s))
                raw = device_images[indices] if gather else device_images[:batch]
                x = raw.astype(jnp.float32) / 255
                if binarize:
                    x = data.dynamic_binarize(binarize_key, x)
                if backward:
                    (value, means), grads = jax.value_and_grad(loss, has_aux=True)(p, x, sample_key)
                    updates, o = tx.update(grads, o, p)
                    p = optax.apply_updates(p, updates)
                else:
                    value, means = loss(p, x, sample_key)
                return (p, o, s + 1), (value, means)

            return jax.lax.scan(step, (params, opt, 0), order)[1]

        return jax.jit(epoch)

    variants = [
        ("full epoch program", {}),
        ("without binarization", {"binarize": False}),
        ("without gather", {"gather": False}),
        ("forward only", {"backward": False}),
    ]
    for name, options in variants:
        program = epoch_program(**options)
        jax.block_until_ready(program(params, opt, jax.random.key(1)))
        tick = time.perf_counter()
        jax.block_until_ready(program(params, opt, jax.random.key(2)))
        seconds = time.perf_counter() - tick
        rate = batch * steps / seconds
        print(f"{name:28s} {seconds * 1e3 / steps:6.2f} ms/step {rate:9,.0f} ex/s")

    @jax.jit
    def plain_step(p, o, x, key):
        (value, means), grads = jax.value_and_grad(loss, has_aux=True)(p, x, key)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, (value, means)

    rng = np.random.default_rng(0)
    batches = [
        (rng.random((batch, 28, 28, 1)) < images[i * batch : (i + 1) * batch] / 255).astype(
            np.float32
        )
        for i in range(steps)
    ]
    p, o, outputs = plain_step(params, opt, batches[0], jax.random.key(0))
    jax.block_until_ready(outputs)
    tick = time.perf_counter()
    for s in range(steps):
        p, o, outputs = plain_step(p, o, batches[s], jax.random.key(s))
    jax.block_until_ready(outputs)
    seconds = time.perf_counter() - tick
    print(
        f"{'plain step, host batches':28s} {seconds * 1e3 / steps:6.2f} ms/step "
        f"{batch * steps / seconds:9,.0f} ex/s"
    )
    dense_ceiling(params, batch)


def dense_ceiling(params, batch: int, repeats: int = 500) -> None:
    """The dense layers' matmuls alone, forward and backward, at the model's shapes."""
    kernels = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if jax.tree_util.keystr(path).endswith("['kernel']")
    ]
    inputs = [jnp.ones((batch, k.shape[0]), jnp.float32) for k in kernels]
    cotangents = [jnp.ones((batch, k.shape[1]), jnp.float32) for k in kernels]

    @jax.jit
    def matmuls_only(kernels, inputs, cotangents):
        # Per layer: the forward product, and the two backward products (input and weight
        # gradients) — 6·fan_in·fan_out FLOPs per example, as the benchmark counts them.
        return [(x @ w, g @ w.T, x.T @ g) for w, x, g in zip(kernels, inputs, cotangents)]

    jax.block_until_ready(matmuls_only(kernels, inputs, cotangents))
    tick = time.perf_counter()
    for _ in range(repeats):
        out = matmuls_only(kernels, inputs, cotangents)
    jax.block_until_ready(out)
    seconds = (time.perf_counter() - tick) / repeats
    flops = 6 * batch * sum(k.shape[0] * k.shape[1] for k in kernels)
    peak = matmul_peak_gflops()
    print(
        f"{'dense layers alone':28s} {seconds * 1e3:6.2f} ms/step {batch / seconds:9,.0f} ex/s"
        f"  = {flops / seconds / 1e9 / peak:.2f} of the {peak:.0f} GFLOP/s matmul peak"
    )


if __name__ == "__main__":
    cli.run(main)
