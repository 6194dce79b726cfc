"""MNIST, Burda et al. (2015) Table 1 architecture (784-200-200 tanh → 50), trained on the
ELBO (k = 1): the "VAE, k = 1" row (paper: 86.76 nats test NLL, K = 5000).

    python -m experiments.train --config experiments/configs/mnist_vae_iwae_arch.py \
        --workdir runs/mnist_vae_iwae_arch
    python -m experiments.evaluate --workdir runs/mnist_vae_iwae_arch --k 5000

Measured on 2 CPU cores with a shortened budget, --config.train.num_epochs=100 (186 s of
training at ~31,000 examples/s), then `evaluate --k 1000` (12 min): test NLL 91.08 nats
(K = 1000), ELBO −94.86, recon −70.94, KL 23.92, 18/50 active units. The full 300-epoch
schedule and the K = 5000 evaluation have not been run yet.
"""

from experiments.configs.common import iwae_paper


def get_config():
    return iwae_paper("elbo", 1)
