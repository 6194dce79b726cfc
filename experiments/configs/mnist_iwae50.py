"""MNIST, IWAE with k = 50 on the Burda et al. (2015) one-layer architecture
(paper: 84.78 nats test NLL, K = 5000).

    python -m experiments.train --config experiments/configs/mnist_iwae50.py \
        --workdir runs/mnist_iwae50
    python -m experiments.evaluate --workdir runs/mnist_iwae50 --k 5000

Measured on 2 CPU cores only as far as a short budget allows: --config.train.num_epochs=8
(342 s, ~43 s per epoch), `evaluate --k 5000` (514 s): test NLL 106.14 nats, 50/50 active
units. The full schedule (300 epochs ≈ 3.6 h here) has not been run.
"""

from experiments.configs.common import iwae_paper


def get_config():
    return iwae_paper("iwae", 50, epochs=300)
