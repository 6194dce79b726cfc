"""Training-throughput benchmark on MNIST, through the same path as experiments.train.

    python -m experiments.bench --arch seed --batch-size 128 --epochs 3 --init lecun --seed 0
    python -m experiments.bench --sweep        # archs × batch sizes 20, 128, 1024

Each run calls ``cvae.train.train_and_evaluate`` (no private fast path) on a Gaussian-
posterior VAE with Bernoulli logits, one-sample ELBO, Adam at 1e-3, dynamic binarization,
all 60,000 training images per epoch (the last partial batch is dropped: ⌊60000/B⌋·B
examples per epoch, which is what the throughput counts). The last line printed is one
JSON object; ``fraction_of_peak`` relates the model's dense-layer FLOPs to an f32 matmul
measured in the same process.
"""

import json
import resource
import tempfile

import jax
from absl import flags

from cvae import config as config_lib
from cvae import nets, writers
from cvae.train import train_and_evaluate
from experiments import cli
from experiments.peak import matmul_peak_gflops

flags.DEFINE_enum("arch", "seed", sorted(nets.PRESETS), "Architecture preset.")
flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_integer("epochs", 3, "Epochs (≥ 2: the first, which compiles, is not timed).")
flags.DEFINE_enum("init", "lecun", list(nets.INITS), "Dense-layer initialisation.")
flags.DEFINE_integer("seed", 0, "PRNG seed.")
flags.DEFINE_string("data_dir", None, "TFDS directory holding mnist (else $TFDS_DATA_DIR).")
flags.DEFINE_bool("sweep", False, "Print a table over archs and batch sizes 20, 128, 1024.")
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
    c.data.name = "mnist"
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


def run_one(arch, batch_size, epochs, init, seed, data_dir, peak_gflops) -> dict:
    if epochs < 2:
        raise cli.UsageError("--epochs must be ≥ 2 (the first epoch compiles and is not timed)")
    with tempfile.TemporaryDirectory(prefix="cvae_bench_") as workdir:
        result = train_and_evaluate(bench_config(arch, batch_size, epochs, init, seed, data_dir),
                                    workdir)
        records = [r for r in writers.read_metrics(f"{workdir}/metrics.jsonl")
                   if r["split"] == "train"]
    per_epoch_examples = (60000 // batch_size) * batch_size
    epoch_s = [per_epoch_examples / r["examples_per_s"] for r in records]
    throughput = per_epoch_examples * (epochs - 1) / sum(epoch_s[1:])
    flops = dense_flops_per_example(arch)
    return {"peer": "cvae", "arch": arch, "batch_size": batch_size, "epochs": epochs,
            "seed": seed, "init": init, "train_examples_per_s": throughput,
            "first_epoch_s": epoch_s[0], "epoch_s": epoch_s,
            "test_neg_elbo": -result.final_metrics["elbo"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "matmul_peak_gflops": peak_gflops, "flops_per_example": flops,
            "fraction_of_peak": throughput * flops / (peak_gflops * 1e9),
            "device": f"{jax.device_count()} × {jax.devices()[0].device_kind}"}


def main(argv):
    del argv
    peak = matmul_peak_gflops()
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
