"""What a tokenizer and its latent DiT cost: training steps of each, and the DiT's sampling.

    python -m benchmarks.latent [--space latent|pixels] [--batch_size 128] [--steps 20]

On MNIST-shaped inputs (random binary images and codes: the cost of a step does not
depend on the values), times ``--steps`` optimizer steps of the tokenizer of
``experiments/configs/mnist_tokenizer.py`` (the ELBO of a collapsed 7 × 7 × 4 code map,
Adam) and of the DiT of ``experiments.train_latent`` at its default size (width 128, depth
4, 4 heads; flow matching, AdamW) over the code maps with patch 1 — or with ``--space
pixels`` over 28 × 28 images with patch 4, the same 49 tokens — each after a compiling
call; then draws ``--num_samples`` images with the DiT (``--sampling_steps`` Heun steps,
1,000 at a time, the tokenizer's decoder included in latent space). Prints one JSON
object: examples/s of each, FLOPs per example from XLA's cost analysis of the compiled
step, the fraction of the f32 matmul peak measured in the same process, and the seconds
per 10,000 sampled images. Results: docs/performance.md.
"""

import json
import time

import jax
import jax.numpy as jnp
import optax
from absl import app, flags

from benchmarks.common import device_name  # also defines --batch_size (both models)
from benchmarks.peak import matmul_peak_gflops
from cvae.models import dit, flow_matching, objectives
from cvae.models import vae as vae_lib
from cvae.training import latent
from experiments.configs import mnist_tokenizer

flags.DEFINE_enum("space", "latent", list(latent.SPACES), "What the DiT models.")
flags.DEFINE_integer("steps", 20, "Timed steps of each model (after one compiling call).")
flags.DEFINE_integer("width", 128, "The DiT's width.")
flags.DEFINE_integer("depth", 4, "The DiT's blocks.")
flags.DEFINE_integer("num_samples", 10000, "Images drawn from the DiT.")
flags.DEFINE_integer("sampling_steps", 32, "Heun steps of the DiT's ODE.")
FLAGS = flags.FLAGS
SHAPE = (28, 28, 1)


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def _time_steps(step, state, batch_key, steps: int) -> tuple[float, float]:
    """(seconds for ``steps`` steps after a compiling one, FLOPs of one step)."""
    compiled = jax.jit(step).lower(state, jax.random.fold_in(batch_key, 0)).compile()
    state = jax.block_until_ready(compiled(state, jax.random.fold_in(batch_key, 0)))
    tick = time.perf_counter()
    for i in range(steps):
        state = compiled(state, jax.random.fold_in(batch_key, i + 1))
    jax.block_until_ready(state)
    return time.perf_counter() - tick, _flops(compiled)


def _tokenizer(batch: int, steps: int):
    model = vae_lib.build_model(mnist_tokenizer.get_config().model, SHAPE, 10, binary_data=True)
    params = vae_lib.init_params(model, jax.random.key(0))
    tx = optax.adam(1e-3)

    def step(state, key):
        params, opt_state = state
        x_key, loss_key = jax.random.split(key)
        x = jax.random.bernoulli(x_key, 0.13, (batch, *SHAPE)).astype(jnp.float32)
        grads = jax.grad(lambda p: objectives.elbo_loss(model, p, x, loss_key)[0])(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    seconds, flops = _time_steps(step, (params, tx.init(params)), jax.random.key(1), steps)
    return model, params, seconds, flops


def _dit(model, batch: int, steps: int):
    code_shape = model.layer_shapes[0]
    config = latent.latent_config()
    config.update(space=FLAGS.space, width=FLAGS.width, depth=FLAGS.depth)
    shape = code_shape if FLAGS.space == "latent" else SHAPE
    module = latent.build_dit(config, shape, code_shape[:2], 0)
    params = dit.init_dit(module, jax.random.key(2))
    tx = optax.adamw(3e-4)

    def step(state, key):
        params, opt_state = state
        x_key, loss_key = jax.random.split(key)
        x1 = jax.random.normal(x_key, (batch, *shape))
        grads = jax.grad(lambda p: flow_matching.loss(module, p, x1, loss_key))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    seconds, flops = _time_steps(step, (params, tx.init(params)), jax.random.key(3), steps)
    return module, params, seconds, flops


def _sample_seconds(module, params, model, tokenizer_params) -> float:
    """Seconds to draw ``--num_samples`` images, 1,000 at a time (after a compiling chunk)."""
    chunk = min(latent.SAMPLE_CHUNK, FLAGS.num_samples)
    decode = jax.jit(
        lambda z: model.likelihood.mean(
            model.apply({"params": tokenizer_params}, z, method=model.decode)
        )
    )

    def draw(key):
        x0 = jax.random.normal(key, (chunk, *module.shape))
        x1 = flow_matching.solve(module, params, x0, None, 0.0, FLAGS.sampling_steps)
        return decode(x1) if FLAGS.space == "latent" else x1

    jax.block_until_ready(draw(jax.random.key(4)))
    tick = time.perf_counter()
    for i in range(-(-FLAGS.num_samples // chunk)):
        jax.block_until_ready(draw(jax.random.key(5 + i)))
    return time.perf_counter() - tick


def main(argv):
    del argv
    batch, steps = FLAGS.batch_size, FLAGS.steps
    peak = matmul_peak_gflops()
    model, tokenizer_params, tokenizer_s, tokenizer_flops = _tokenizer(batch, steps)
    module, params, dit_s, dit_flops = _dit(model, batch, steps)
    sample_s = _sample_seconds(module, params, model, tokenizer_params)
    record = {
        "benchmark": "latent",
        "device": device_name(),
        "space": FLAGS.space,
        "batch_size": batch,
        "tokens": module.grid[0] * module.grid[1],
        "matmul_peak_gflops": round(peak, 1),
    }
    for name, seconds, flops in (
        ("tokenizer", tokenizer_s, tokenizer_flops),
        ("dit", dit_s, dit_flops),
    ):
        record[f"{name}_examples_per_s"] = round(batch * steps / seconds, 1)
        record[f"{name}_flops_per_example"] = round(flops / batch)
        record[f"{name}_fraction_of_peak"] = round(flops * steps / seconds / (peak * 1e9), 4)
    record["dit_sample_s_per_10000"] = round(sample_s * 10000 / FLAGS.num_samples, 2)
    print(json.dumps(record))


if __name__ == "__main__":
    app.run(main)
