"""MNIST: the collapsed VAE, q(z|x) = N(μ(x), σ₀² I) with σ₀ = 0.01, seed architecture.

    python -m experiments.train --config experiments/configs/mnist_cvae.py \
        --workdir runs/mnist_cvae
    python -m experiments.evaluate --workdir runs/mnist_cvae

Needs the prepared TFDS mnist (TFDS_DATA_DIR or --config.data.data_dir).
Runtime and result on 2 CPU cores: RESULT_NOTE.
"""

from experiments.configs.common import mnist


def get_config():
    c = mnist("collapsed")
    return c
