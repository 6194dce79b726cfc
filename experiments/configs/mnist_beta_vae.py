"""MNIST: a β-VAE (β = 4, KL warm-up over 5,000 steps), seed architecture.

    python -m experiments.train --config experiments/configs/mnist_beta_vae.py \
        --workdir runs/mnist_beta_vae
    python -m experiments.evaluate --workdir runs/mnist_beta_vae

Needs the prepared TFDS mnist (TFDS_DATA_DIR or --config.data.data_dir).
Not run yet; no result is claimed. Expected runtime on 2 CPU
cores from the benchmark's throughput: see docs/performance.md.
"""

from experiments.configs.common import mnist


def get_config():
    c = mnist("gaussian")
    c.objective.beta = 4.0
    c.objective.kl_warmup_steps = 5000
    return c
