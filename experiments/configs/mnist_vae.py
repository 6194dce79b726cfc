"""MNIST: a Gaussian VAE (learned diagonal variance), seed architecture 784-128-64-32 → 16.

    python -m experiments.train --config experiments/configs/mnist_vae.py \
        --workdir runs/mnist_vae
    python -m experiments.evaluate --workdir runs/mnist_vae

Needs the prepared TFDS mnist (TFDS_DATA_DIR or --config.data.data_dir).
Runtime and result on 2 CPU cores: RESULT_NOTE.
"""

from experiments.configs.common import mnist


def get_config():
    c = mnist("gaussian")
    return c
