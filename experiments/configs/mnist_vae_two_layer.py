"""MNIST, Burda et al. (2015) Table 1's two-stochastic-layer architecture (784-200-200 → 100
→ 100-100 → 50, tanh; cvae.models.hierarchy), trained on the ELBO (k = 1): the two-layer
"VAE, k = 1" row (paper: 85.33 nats test NLL, K = 5000).

    python -m experiments.train --config experiments/configs/mnist_vae_two_layer.py \
        --workdir runs/burda2_vae
    python -m experiments.evaluate --workdir runs/burda2_vae --k 5000

800 epochs on all 60,000 images, with the KL weight warmed up linearly from 0 to 1 over the
first 100 (Sønderby et al., 2016; not in Burda et al.'s recipe): without the warm-up the
top layer goes inactive from the first epochs and stays so. docs/results.md states what
was run and measured.
"""

from experiments.configs.common import iwae_paper


def get_config():
    return iwae_paper("elbo", 1, epochs=800, layers=2, warmup_epochs=100)
