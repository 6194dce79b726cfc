"""What the benchmarks share: the MNIST training config they time, FLOP counts of the dense
layers, the timed throughput of a run's records, and the flags every mode takes.

Every benchmark trains through the library's own paths (``train_and_evaluate``, the
population, the evaluation core: no private fast path) on a Gaussian-posterior VAE with
Bernoulli logits, one-sample ELBO, Adam at 1e-3, dynamic binarization, every training image
per epoch (the last partial batch is dropped: ⌊N/B⌋·B examples per epoch, 58,368 of MNIST's
60,000 at B = 1024, which is what the throughput counts). Each prints one JSON object last;
fractions of peak relate the model's dense-layer FLOPs to an f32 matmul measured in the
same process (``benchmarks.peak``).
"""

import math
import resource

import jax
from absl import flags

from cvae import config as config_lib
from cvae.models import nets

flags.DEFINE_enum("arch", "seed", sorted(config_lib.PRESETS), "Architecture preset.")
flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_integer("epochs", 3, "Epochs (≥ 2: the first, which compiles, is not timed).")
flags.DEFINE_enum("init", "lecun", list(nets.INITS), "Dense-layer initialisation.")
flags.DEFINE_integer("seed", 0, "PRNG seed.")
flags.DEFINE_string("data_dir", None, "TFDS directory holding mnist (else $TFDS_DATA_DIR).")
flags.DEFINE_string(
    "dataset",
    "mnist",
    "The MNIST images: the TFDS name, or npz:PATH holding "
    "x, y, x_test, y_test (for a machine without the TFDS files).",
)
flags.DEFINE_string(
    "train_split", "train", "The training images, e.g. train[:10000] for a shorter epoch."
)
FLAGS = flags.FLAGS

IMAGE_PIXELS = 784


def dense_flops_per_example(arch: str) -> int:
    """6 · Σ fan_in·fan_out over the dense layers: 2 FLOPs per weight forward, 4 backward.

    Encoder: 784 → widths → two heads (mean, log-variance); decoder: latent → mirrored
    widths → 784. Elementwise work (activations, sampling, the loss) is not counted.
    """
    preset = config_lib.PRESETS[arch]
    widths = [int(w) for w in preset["encoder_widths"]]
    latent = preset["latent_dim"]
    encoder = list(zip([IMAGE_PIXELS] + widths[:-1], widths, strict=True))
    encoder += [(widths[-1], latent)] * 2
    dec_widths = widths[::-1]
    decoder = list(zip([latent] + dec_widths, dec_widths + [IMAGE_PIXELS], strict=True))
    return 6 * sum(i * o for i, o in encoder + decoder)


def dense_forward_flops(params) -> int:
    """2 · Σ fan_in · fan_out over the dense kernels of a params (sub)tree."""
    return 2 * sum(
        math.prod(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if path[-1].key == "kernel" and leaf.ndim == 2
    )


def bench_config(arch, batch_size, epochs, init, seed, data_dir):
    c = config_lib.apply_preset(config_lib.base_config(), arch)
    c.seed = seed
    c.data.name = FLAGS.dataset
    c.data.data_dir = data_dir
    c.data.train_split = FLAGS.train_split
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


def epoch_examples(records, batch_size: int) -> int:
    """Examples trained per epoch: the first epoch's steps (its record's step) × the batch.
    Every epoch has as many: the last partial batch is dropped."""
    return int(records[0]["step"]) * batch_size


def timed_throughput(records, per_epoch_examples, members=1) -> tuple[float, list]:
    """Examples/s over the epochs after the first (which compiles), and each epoch's time."""
    epoch_s = [per_epoch_examples / r["examples_per_s"] for r in records]
    return members * per_epoch_examples * (len(epoch_s) - 1) / sum(epoch_s[1:]), epoch_s


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_name() -> str:
    """``"2 × cpu"``: the devices the benchmark ran on."""
    return f"{jax.device_count()} × {jax.devices()[0].device_kind}"
