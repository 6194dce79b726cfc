"""MNIST: the collapsed VAE with a wider fixed posterior, σ₀ = 0.1.

    python -m experiments.train --config experiments/configs/mnist_cvae_sigma01.py \
        --workdir runs/mnist_cvae_sigma01
    python -m experiments.evaluate --workdir runs/mnist_cvae_sigma01

Needs the prepared TFDS mnist (TFDS_DATA_DIR or --config.data.data_dir).
Runtime and result on 2 CPU cores: RESULT_NOTE.
"""

from experiments.configs.common import mnist


def get_config():
    c = mnist("collapsed")
    c.model.sigma0 = 0.1
    return c
