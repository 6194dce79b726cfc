"""MNIST: a plain deterministic autoencoder (σ₀ = 0), seed architecture.

    python -m experiments.train --config experiments/configs/mnist_ae.py \
        --workdir runs/mnist_ae
    python -m experiments.evaluate --workdir runs/mnist_ae

Needs the prepared TFDS mnist (TFDS_DATA_DIR or --config.data.data_dir).
Runtime and result on 2 CPU cores: RESULT_NOTE.
"""

from experiments.configs.common import mnist


def get_config():
    c = mnist("deterministic")
    return c
