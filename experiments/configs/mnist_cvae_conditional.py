"""MNIST: a conditional collapsed VAE: one-hot labels enter encoder and decoder.

    python -m experiments.train --config experiments/configs/mnist_cvae_conditional.py \
        --workdir runs/mnist_cvae_conditional
    python -m experiments.evaluate --workdir runs/mnist_cvae_conditional

Needs the prepared TFDS mnist (TFDS_DATA_DIR or --config.data.data_dir).
Not run yet on the project's machines; no result is claimed. Expected runtime on 2 CPU
cores from the benchmark's throughput: see the README's performance table.
"""

from experiments.configs.common import mnist


def get_config():
    c = mnist("collapsed")
    c.model.conditional = True
    return c
