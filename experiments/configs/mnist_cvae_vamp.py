"""MNIST: the collapsed VAE (σ₀ = 0.01) with a VampPrior, seed architecture.

The prior is the mixture of the collapsed posteriors N(μ(u_k), σ₀² I) at K = 500
learnable pseudo-inputs: a learned prior in place of the ex-post mixture, trained with the
model (compare `--sampler prior` here with `--sampler gmm` on mnist_cvae).

    python -m experiments.train --config experiments/configs/mnist_cvae_vamp.py \\
        --workdir runs/mnist_cvae_vamp
    python -m experiments.evaluate --workdir runs/mnist_cvae_vamp

Needs the prepared TFDS mnist (TFDS_DATA_DIR or --config.data.data_dir). Not yet run on
MNIST (issue #17).
"""

from experiments.configs.common import mnist


def get_config():
    c = mnist("collapsed")
    c.model.prior = "vamp"
    c.model.num_pseudo_inputs = 500
    return c
