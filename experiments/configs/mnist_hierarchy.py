"""MNIST, two stochastic layers on the seed nets: z₁ (16) from 784-128-64-32 (ReLU), z₂ (8)
through 32-32 (cvae.models.hierarchy), both Gaussian unless the command line says otherwise.
The model of the study of where in a hierarchy the posterior can be collapsed
(experiments/mnist_hierarchy.sh; docs/results.md).

    python -m experiments.train --config experiments/configs/mnist_hierarchy.py \
        --workdir runs/mnist_hierarchy
    python -m experiments.train --config experiments/configs/mnist_hierarchy.py \
        --workdir runs/mnist_hierarchy_cc --config.model.posterior=collapsed   # both collapsed

Needs the prepared TFDS mnist (TFDS_DATA_DIR or --config.data.data_dir).
"""

from experiments.configs.common import mnist


def get_config():
    c = mnist("gaussian")
    c.model.upper_latent_dims = (8,)
    c.model.upper_widths = ((32, 32),)
    return c
