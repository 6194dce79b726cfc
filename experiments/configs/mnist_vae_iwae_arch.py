"""MNIST, Burda et al. (2015) Table 1 architecture (784-200-200 tanh → 50), trained on the
ELBO (k = 1): the "VAE, k = 1" row (paper: 86.76 nats test NLL, K = 5000).

    python -m experiments.train --config experiments/configs/mnist_vae_iwae_arch.py \
        --workdir runs/burda_vae_1800
    python -m experiments.evaluate --workdir runs/burda_vae_1800 --k 5000

Measured with this config as it stands (1,800 epochs on all 60,000 images, 5,283 s of
training on one CPU core), then `evaluate --k 5000` (44 min on one core): test NLL
86.56 nats (target ≤ 87.0, paper 86.76), ELBO −89.93, recon −64.96, KL 24.97,
18/50 active units.
"""

from experiments.configs.common import iwae_paper


def get_config():
    return iwae_paper("elbo", 1, epochs=1800)
