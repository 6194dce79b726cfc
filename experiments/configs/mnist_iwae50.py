"""MNIST, IWAE with k = 50 on the Burda et al. (2015) one-layer architecture
(paper: 84.78 nats test NLL, K = 5000).

    python -m experiments.train --config experiments/configs/mnist_iwae50.py \
        --workdir runs/burda_iwae50_40 --config.train.num_epochs=40
    python -m experiments.evaluate --workdir runs/burda_iwae50_40 --k 5000

Measured only as far as a CPU budget allows: 40 epochs on all 60,000 images
(1,814 s of training on 2 CPU cores, ~46 s per epoch), then `evaluate --k 5000`
(1,854 s): test NLL 90.94 nats, ELBO −103.08, 25/50 active units.
The full 300-epoch schedule (≈ 4 h here) has not been run.
"""

from experiments.configs.common import iwae_paper


def get_config():
    return iwae_paper("iwae", 50, epochs=300)
