"""MNIST, IWAE with k = 50 on the Burda et al. (2015) one-layer architecture
(paper: 84.78 nats test NLL, K = 5000).

    python -m experiments.train --config experiments/configs/mnist_iwae50.py \
        --workdir runs/mnist_iwae50
    python -m experiments.evaluate --workdir runs/mnist_iwae50 --k 5000

Not run yet on the project's machines; no result is claimed. Expected runtime on 2 CPU
cores from the benchmark's throughput: see the README's performance table.
"""

from experiments.configs.common import iwae_paper


def get_config():
    return iwae_paper("iwae", 50)
