"""MNIST: a regularised autoencoder (RAE-L2): deterministic codes, penalty ½‖μ‖².

    python -m experiments.train --config experiments/configs/mnist_rae.py \
        --workdir runs/mnist_rae
    python -m experiments.evaluate --workdir runs/mnist_rae

Needs the prepared TFDS mnist (TFDS_DATA_DIR or --config.data.data_dir).
Runtime and result on 2 CPU cores: RESULT_NOTE.
"""

from experiments.configs.common import mnist


def get_config():
    c = mnist("deterministic")
    c.model.code_l2 = 1.0
    return c
