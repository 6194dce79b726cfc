"""MNIST, IWAE with k = 5 on Burda et al. (2015) Table 1's two-stochastic-layer architecture
(784-200-200 → 100 → 100-100 → 50, tanh; cvae.models.hierarchy): the two-layer "IWAE,
k = 5" row (paper: 83.89 nats test NLL, K = 5000).

    python -m experiments.train --config experiments/configs/mnist_iwae5_two_layer.py \
        --workdir runs/burda2_iwae5
    python -m experiments.evaluate --workdir runs/burda2_iwae5 --k 5000

The two-layer VAE's recipe (mnist_vae_two_layer): 800 epochs on all 60,000 images, the
importance weights' latent parts tempered by a β warmed up linearly from 0 to 1 over the
first 100 epochs (an annealed IWAE bound; not in Burda et al.'s recipe): without it the top
layer goes inactive from the first epochs. docs/results.md states what was run and measured.
"""

from experiments.configs.common import iwae_paper


def get_config():
    return iwae_paper("iwae", 5, epochs=800, layers=2, warmup_epochs=100)
