"""MNIST: the collapsed VAE, q(z|x) = N(μ(x), σ₀² I) with σ₀ = 0.01, seed architecture.

    python -m experiments.train --config experiments/configs/mnist_cvae.py \
        --workdir runs/mnist_cvae
    python -m experiments.evaluate --workdir runs/mnist_cvae

Needs the prepared TFDS mnist (TFDS_DATA_DIR or --config.data.data_dir).
Measured on 2 CPU cores with a shortened budget, --config.train.num_epochs=10 (about
16 s of training at ~47,000 examples/s, then `evaluate --k 500` in ~58 s): test NLL 149.73
nats (K = 500), ELBO −155.53, recon −88.48, KL 67.05, 16/16 active units.
The full 50-epoch schedule, 5 seeds, mean ± 95% CI (docs/results.md):
test NLL 133.66 ± 0.39 nats (K = 1000), recon −73.30 ± 0.40, classifier-FID of
the ex-post mixture's samples 6.42 ± 0.98.
"""

from experiments.configs.common import mnist


def get_config():
    c = mnist("collapsed")
    return c
