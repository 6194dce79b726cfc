"""Training- and evaluation-throughput benchmarks on MNIST, through the library's own paths.

    python -m experiments.bench --arch seed --batch-size 128 --epochs 3 --init lecun --seed 0
    python -m experiments.bench --sweep        # archs × batch sizes 20, 128, 1024
    python -m experiments.bench --eval --arch iwae --k 5000   # the importance-sampled NLL
    python -m experiments.bench --members 8 --arch iwae --batch-size 20  # population vs solo
    python -m experiments.bench --members 8 --dataset npz:mnist.npz  # MNIST saved as npz, on a
                                                                     # machine without TFDS
    python -m experiments.bench --pipeline stream  # the streaming input pipeline vs on-device

``--eval`` times ``cvae.evaluation.evaluate`` (the core behind training's scores and
experiments.evaluate) on the MNIST test images, after one batch that compiles. Its figure is
images·samples per second, and ``fraction_of_roofline``: the dense layers' forward FLOPs
(N·K decoder passes plus N encoder passes, 2 FLOPs per weight) over the time, as a fraction
of the f32 matmul peak measured in the same process. Params are the preset's random
initialisation (the speed does not depend on them), or a trained run's with ``--workdir``.

``--pipeline stream`` measures the streaming input pipeline (``cvae.stream``) three ways
in one process: the loader alone (one epoch's batches read and delivered, no training),
training through it, and training on the on-device path; it prints their examples/s, the
loader's over the streamed training's (how far the input is from limiting training), and
the streamed training's over the on-device training's. With ``--image_size 64`` it
measures the same loader on generated 64×64×3 images (8,192 in a memory-mapped ``npy:``
set) against training celeba64_cvae's residual nets through the stream (on a slice of
the set: these nets train at about 3 images/s on a 2-core CPU).

``--members N`` trains N runs (seeds seed … seed+N−1) one after another with
``train_and_evaluate`` on one device, then the same N as one population
(``cvae.population``, one compiled program, members spread over every device: on a CPU
host, set ``XLA_FLAGS=--xla_force_host_platform_device_count=<cores>`` to give each core
its members), and reports both throughputs summed over members, their ratio, each
member's test −ELBO beside its solo run's, and the memory a member costs.

Each run calls ``cvae.train.train_and_evaluate`` (no private fast path) on a Gaussian-
posterior VAE with Bernoulli logits, one-sample ELBO, Adam at 1e-3, dynamic binarization,
all 60,000 training images per epoch (the last partial batch is dropped: ⌊60000/B⌋·B
examples per epoch, which is what the throughput counts). The last line printed is one
JSON object; ``fraction_of_peak`` relates the model's dense-layer FLOPs to an f32 matmul
measured in the same process.
"""

import json
import math
import resource
import sys
import tempfile
import time

if "--eval" in sys.argv:  # the evaluation runs as experiments.evaluate does: a device per core
    from experiments.cpu_cores import split_host_into_cores

    split_host_into_cores()

import jax
import numpy as np
from absl import flags

from cvae import Workdir, data, evaluation, load_run, nets, population, steps
from cvae import config as config_lib
from cvae import model as model_lib
from cvae.train import train_and_evaluate
from experiments import cli
from experiments.peak import matmul_peak_gflops

flags.DEFINE_enum("arch", "seed", sorted(nets.PRESETS), "Architecture preset.")
flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_integer("epochs", 3, "Epochs (≥ 2: the first, which compiles, is not timed).")
flags.DEFINE_enum("init", "lecun", list(nets.INITS), "Dense-layer initialisation.")
flags.DEFINE_integer("seed", 0, "PRNG seed.")
flags.DEFINE_string("data_dir", None, "TFDS directory holding mnist (else $TFDS_DATA_DIR).")
flags.DEFINE_string("dataset", "mnist", "The MNIST images: the TFDS name, or npz:PATH holding "
                    "them (a machine without TFDS, e.g. a lent GPU).")
flags.DEFINE_bool("sweep", False, "Print a table over archs and batch sizes 20, 128, 1024.")
flags.DEFINE_bool("eval", False, "Benchmark the importance-sampled NLL instead of training.")
flags.DEFINE_integer("k", 5000, "--eval: importance samples per image.")
flags.DEFINE_integer("num_examples", 10000, "--eval: test images scored (≤ 10,000).")
flags.DEFINE_integer("eval_batch_size", 500, "--eval: images per evaluation batch.")
flags.DEFINE_integer("chunk_size", 0, "--eval: importance samples per chunk (0 = automatic).")
flags.DEFINE_string("workdir", None, "--eval: score this trained run instead of random params.")
flags.DEFINE_integer("members", 0, "Population benchmark: N runs solo, then as one population.")
flags.DEFINE_enum("pipeline", "device", ["device", "stream"],
                  "stream: the streaming input pipeline against the on-device path.")
flags.DEFINE_integer("stream_workers", 0, "--pipeline stream: reader processes.")
flags.DEFINE_integer("image_size", 0, "--pipeline stream: instead of MNIST, generated "
                     "SIZE×SIZE×3 images through celeba64_cvae's residual nets.")
FLAGS = flags.FLAGS
IMAGE_PIXELS = 784


def dense_flops_per_example(arch: str) -> int:
    """6 · Σ fan_in·fan_out over the dense layers: 2 FLOPs per weight forward, 4 backward.

    Encoder: 784 → widths → two heads (mean, log-variance); decoder: latent → mirrored
    widths → 784. Elementwise work (activations, sampling, the loss) is not counted.
    """
    preset = nets.PRESETS[arch]
    widths, latent = list(preset["encoder_widths"]), preset["latent_dim"]
    encoder = list(zip([IMAGE_PIXELS] + widths[:-1], widths, strict=True))
    encoder += [(widths[-1], latent)] * 2
    dec_widths = widths[::-1]
    decoder = list(zip([latent] + dec_widths, dec_widths + [IMAGE_PIXELS], strict=True))
    return 6 * sum(i * o for i, o in encoder + decoder)


def bench_config(arch, batch_size, epochs, init, seed, data_dir):
    c = config_lib.apply_preset(config_lib.base_config(), arch)
    c.seed = seed
    c.data.name = FLAGS.dataset
    c.data.data_dir = data_dir
    c.data.validation_size = 0
    c.model.posterior = "gaussian"
    c.model.init = init
    c.train.batch_size = batch_size
    c.train.num_epochs = epochs
    c.train.learning_rate = 1e-3
    c.train.image_grid_size = 0
    c.train.checkpoint_every_epochs = epochs
    c.eval.every_epochs = epochs
    c.eval.batch_size = 1000
    return c


def _timed_throughput(records, per_epoch_examples, members=1) -> tuple[float, list]:
    """Examples/s over the epochs after the first (which compiles), and each epoch's time."""
    epoch_s = [per_epoch_examples / r["examples_per_s"] for r in records]
    return members * per_epoch_examples * (len(epoch_s) - 1) / sum(epoch_s[1:]), epoch_s


def run_one(arch, batch_size, epochs, init, seed, data_dir, peak_gflops,
            pipeline: str = "device") -> dict:
    if epochs < 2:
        raise cli.UsageError("--epochs must be ≥ 2 (the first epoch compiles and is not timed)")
    cfg = bench_config(arch, batch_size, epochs, init, seed, data_dir)
    cfg.data.pipeline, cfg.data.stream_workers = pipeline, FLAGS.stream_workers
    with tempfile.TemporaryDirectory(prefix="cvae_bench_") as workdir:
        result = train_and_evaluate(cfg, workdir)
        records = Workdir(workdir).read_metrics("train")
    per_epoch_examples = (60000 // batch_size) * batch_size
    throughput, epoch_s = _timed_throughput(records, per_epoch_examples)
    flops = dense_flops_per_example(arch)
    return {"peer": "cvae", "arch": arch, "batch_size": batch_size, "epochs": epochs,
            "seed": seed, "init": init, "train_examples_per_s": throughput,
            "first_epoch_s": epoch_s[0], "epoch_s": epoch_s,
            "test_neg_elbo": -result.final_metrics["elbo"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "matmul_peak_gflops": peak_gflops, "flops_per_example": flops,
            "fraction_of_peak": throughput * flops / (peak_gflops * 1e9),
            "device": f"{jax.device_count()} × {jax.devices()[0].device_kind}"}


def pipeline_one(arch, batch_size, epochs, init, seed, data_dir, peak_gflops) -> dict:
    """The loader alone, training through it, and training on device (see above)."""
    from cvae import stream, train

    cfg = bench_config(arch, batch_size, epochs, init, seed, data_dir)
    cfg.data.pipeline, cfg.data.stream_workers = "stream", FLAGS.stream_workers
    d = train.load_training_data(cfg, 1)  # builds the decoded cache on first use
    reader = stream.Stream(d.train_source, cfg.data.stream_chunk_steps,
                           workers=FLAGS.stream_workers)
    order = np.asarray(steps.make_epoch_indices(num_train=d.num_train, batch_size=batch_size,
                                                class_table=None)(jax.random.key(seed), 0))
    loader = []
    for _ in range(2):  # the first pass warms the file cache and the threads
        tick, examples = time.perf_counter(), 0
        for images, _labels in reader.chunks(order):
            examples += images.shape[0] * images.shape[1]
        loader.append(examples / (time.perf_counter() - tick))
    streamed = run_one(arch, batch_size, epochs, init, seed, data_dir, peak_gflops,
                       pipeline="stream")
    on_device = run_one(arch, batch_size, epochs, init, seed, data_dir, peak_gflops)
    return {"peer": "cvae", "benchmark": "pipeline", "arch": arch, "batch_size": batch_size,
            "epochs": epochs, "dataset": cfg.data.name, "stream_workers": FLAGS.stream_workers,
            "chunk_steps": cfg.data.stream_chunk_steps,
            "loader_examples_per_s": loader[-1], "loader_first_pass_examples_per_s": loader[0],
            "stream_train_examples_per_s": streamed["train_examples_per_s"],
            "device_train_examples_per_s": on_device["train_examples_per_s"],
            "loader_over_stream_training": loader[-1] / streamed["train_examples_per_s"],
            "stream_over_device": (streamed["train_examples_per_s"]
                                   / on_device["train_examples_per_s"]),
            "stream_fraction_of_peak": streamed["fraction_of_peak"],
            "device_fraction_of_peak": on_device["fraction_of_peak"],
            "same_test_neg_elbo": streamed["test_neg_elbo"] == on_device["test_neg_elbo"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "matmul_peak_gflops": peak_gflops, "device": streamed["device"]}


def image_pipeline_one(size, batch_size, epochs, seed) -> dict:
    """The loader on generated size×size×3 images against the residual nets' training."""
    from cvae import stream
    from experiments.configs import celeba64_cvae

    if epochs < 2:
        raise cli.UsageError("--epochs must be ≥ 2 (the first epoch compiles and is not timed)")
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="cvae_bench_") as tmp:
        images = np.lib.format.open_memmap(f"{tmp}/x.npy", "w+", np.uint8,
                                           (8192, size, size, 3))
        for start in range(0, 8192, 1024):
            images[start:start + 1024] = rng.integers(0, 256, (1024, size, size, 3), np.uint8)
        images.flush()
        for split in ("val", "test"):
            np.save(f"{tmp}/x_{split}.npy", rng.integers(0, 256, (batch_size, size, size, 3),
                                                         np.uint8))
        source = stream.ArraySource(data.load(f"npy:{tmp}", "train"))
        reader = stream.Stream(source, 32, workers=FLAGS.stream_workers)
        order = np.random.default_rng(seed).permutation(8192)[: 8192 // batch_size
                                                              * batch_size]
        loader = []
        for _ in range(2):  # the first pass warms the file cache and the threads
            tick = time.perf_counter()
            examples = sum(im.shape[0] * im.shape[1]
                           for im, _ in reader.chunks(order.reshape(-1, batch_size)))
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
    training, epoch_s = _timed_throughput(records, 4 * batch_size)
    return {"peer": "cvae", "benchmark": "pipeline", "arch": "celeba64_cvae resnet",
            "image_shape": [size, size, 3], "batch_size": batch_size, "epochs": epochs,
            "stream_workers": FLAGS.stream_workers,
            "loader_examples_per_s": loader[-1], "loader_first_pass_examples_per_s": loader[0],
            "stream_train_examples_per_s": training, "epoch_s": epoch_s,
            "loader_over_stream_training": loader[-1] / training,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "device": f"{jax.device_count()} × {jax.devices()[0].device_kind}"}


def members_one(arch, batch_size, epochs, init, seed, data_dir, members, peak_gflops) -> dict:
    """N solo runs one after another, then the same N as one population (see above)."""
    if epochs < 2 or members < 1:
        raise cli.UsageError("--epochs must be ≥ 2 (the first compiles) and --members ≥ 1")
    configs = [bench_config(arch, batch_size, epochs, init, seed + i, data_dir)
               for i in range(members)]
    for cfg in configs:  # the population spreads over every device, (member × data) ...
        cfg.train.num_devices = 0
    solo_configs = [config_lib.from_dict(c.to_dict()) for c in configs]
    for cfg in solo_configs:  # ... a run alone takes one (what experiments.train does on CPU)
        cfg.train.num_devices = 1
    per_epoch_examples = (60000 // batch_size) * batch_size
    with tempfile.TemporaryDirectory(prefix="cvae_bench_") as workdir:
        solo_s, solo_elbo = 0.0, []
        for i, cfg in enumerate(solo_configs):
            result = train_and_evaluate(cfg, f"{workdir}/solo{i}")
            _, epoch_s = _timed_throughput(Workdir(f"{workdir}/solo{i}").read_metrics("train"),
                                           per_epoch_examples)
            solo_s += sum(epoch_s[1:])
            solo_elbo.append(-result.final_metrics["elbo"])
        solo_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        pop = population.train_population(configs,
                                          [f"{workdir}/member{i}" for i in range(members)])
        pop_throughput, pop_epoch_s = _timed_throughput(
            Workdir(f"{workdir}/member0").read_metrics("train"), per_epoch_examples, members)
    solo_throughput = members * per_epoch_examples * (epochs - 1) / solo_s
    state_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(pop.state)) / members
    flops = dense_flops_per_example(arch)
    return {"peer": "cvae", "benchmark": "population", "arch": arch, "batch_size": batch_size,
            "epochs": epochs, "members": members, "seeds": [seed, seed + members - 1],
            "solo_examples_per_s": solo_throughput, "population_examples_per_s": pop_throughput,
            "population_over_solo": pop_throughput / solo_throughput,
            "population_epoch_s": pop_epoch_s,
            "solo_test_neg_elbo": solo_elbo,
            "population_test_neg_elbo": [-o.final_metrics["elbo"] for o in pop.outcomes],
            "state_bytes_per_member": state_bytes,
            "peak_rss_mb_solo": solo_rss,
            "peak_rss_mb_population": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "matmul_peak_gflops": peak_gflops,
            "fraction_of_peak_solo": solo_throughput * flops / (peak_gflops * 1e9),
            "fraction_of_peak_population": pop_throughput * flops / (peak_gflops * 1e9),
            "member_devices": int(pop.state["step"].sharding.mesh.shape["member"]),
            "device": f"{jax.device_count()} × {jax.devices()[0].device_kind}"}


def dense_forward_flops(params) -> int:
    """2 · Σ fan_in · fan_out over the dense kernels of a params (sub)tree."""
    return 2 * sum(math.prod(leaf.shape)
                   for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                   if path[-1].key == "kernel" and leaf.ndim == 2)


def eval_one(arch, k, num_examples, batch_size, chunk_size, seed, data_dir, workdir,
             peak_gflops) -> dict:
    """Times the importance-sampled NLL over ``num_examples`` test images (see above)."""
    if k < 1 or num_examples < 1 or batch_size < 1 or chunk_size < 0:
        raise cli.UsageError("--k, --num_examples and --eval_batch_size must be ≥ 1, "
                             "--chunk_size ≥ 0")
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
    score = lambda subset: evaluation.evaluate(model, params, subset, k=k,
                                               batch_size=batch_size, chunk_size=chunk_size)
    warm = test_set.head(batch_size)
    tick = time.perf_counter()
    score(warm)  # compiles the two programs for this shape
    compile_s = time.perf_counter() - tick
    tick = time.perf_counter()
    result = score(eval_set)
    seconds = time.perf_counter() - tick
    n = len(eval_set)
    flops = n * k * dense_forward_flops(params["decoder"]) + n * dense_forward_flops(
        params["encoder"])
    return {"peer": "cvae", "benchmark": "nll_is", "arch": arch, "k": k, "num_examples": n,
            "batch_size": batch_size,
            "chunk_size": chunk_size or evaluation.auto_chunk_size(
                evaluation.evaluation_batch_size(batch_size, n, jax.local_device_count()), k),
            "seconds": seconds, "first_batch_s": compile_s,
            "image_samples_per_s": n * k / seconds, "nll_is": result.get("nll_is"),
            "matmul_peak_gflops": peak_gflops, "dense_flops": flops,
            "fraction_of_roofline": flops / seconds / (peak_gflops * 1e9),
            "device": f"{jax.device_count()} × {jax.devices()[0].device_kind}"}


def main(argv):
    del argv
    peak = matmul_peak_gflops()
    if FLAGS.eval:
        record = eval_one(FLAGS.arch, FLAGS.k, FLAGS.num_examples, FLAGS.eval_batch_size,
                          FLAGS.chunk_size, FLAGS.seed, FLAGS.data_dir, FLAGS.workdir, peak)
        print(json.dumps(record))
        print(f"peak {peak:.0f} GFLOP/s after: {matmul_peak_gflops():.0f} GFLOP/s",
              file=sys.stderr)
        return
    if FLAGS.pipeline == "stream" and FLAGS.image_size:
        print(json.dumps(image_pipeline_one(FLAGS.image_size, FLAGS.batch_size, FLAGS.epochs,
                                            FLAGS.seed)))
        return
    if FLAGS.pipeline == "stream":
        print(json.dumps(pipeline_one(FLAGS.arch, FLAGS.batch_size, FLAGS.epochs, FLAGS.init,
                                      FLAGS.seed, FLAGS.data_dir, peak)))
        return
    if FLAGS.members:
        print(json.dumps(members_one(FLAGS.arch, FLAGS.batch_size, FLAGS.epochs, FLAGS.init,
                                     FLAGS.seed, FLAGS.data_dir, FLAGS.members, peak)))
        return
    if not FLAGS.sweep:
        print(json.dumps(run_one(FLAGS.arch, FLAGS.batch_size, FLAGS.epochs, FLAGS.init,
                                 FLAGS.seed, FLAGS.data_dir, peak)))
        return
    rows = []
    for arch in ("seed", "torch_example", "iwae"):
        for batch_size in (20, 128, 1024):
            rows.append(run_one(arch, batch_size, FLAGS.epochs, FLAGS.init, FLAGS.seed,
                                FLAGS.data_dir, peak))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nmatmul peak {peak:.1f} GFLOP/s on {rows[0]['device']}\n")
    print("| arch | batch | examples/s | fraction of peak | first epoch s | test −ELBO |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['arch']} | {r['batch_size']} | {r['train_examples_per_s']:,.0f} | "
              f"{r['fraction_of_peak']:.2f} | {r['first_epoch_s']:.1f} | "
              f"{r['test_neg_elbo']:.1f} |")


if __name__ == "__main__":
    cli.run(main)
