"""Fashion-MNIST: the collapsed VAE (σ₀ = 0.01) with the seed architecture.

    python -m experiments.train --config experiments/configs/fashion_mnist_cvae.py \
        --workdir runs/fashion_mnist_cvae

Needs fashion_mnist prepared as array_record (`tfds build fashion_mnist --file_format
array_record`); it was not available where cvae's results were measured, so this config has not been
run here: without the data it stops with a message saying how to prepare it.
"""

from experiments.configs.common import mnist


def get_config():
    c = mnist("collapsed")
    c.data.name = "fashion_mnist"
    return c
