"""MNIST, Burda et al. (2015) Table 1 architecture (784-200-200 tanh → 50), trained on the
ELBO (k = 1): the "VAE, k = 1" row (paper: 86.76 nats test NLL, K = 5000).

    python -m experiments.train --config experiments/configs/mnist_vae_iwae_arch.py \
        --workdir runs/mnist_vae_iwae_arch
    python -m experiments.evaluate --workdir runs/mnist_vae_iwae_arch --k 5000

Runtime and result on 2 CPU cores: RESULT_NOTE.
"""

from experiments.configs.common import iwae_paper


def get_config():
    return iwae_paper("elbo", 1)
