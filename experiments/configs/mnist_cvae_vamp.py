"""MNIST: the collapsed VAE (σ₀ = 0.01) with a VampPrior, seed architecture.

The prior is the mixture of the collapsed posteriors N(μ(u_k), σ₀² I) at K = 500
learnable pseudo-inputs: a learned prior in place of the ex-post mixture, trained with the
model (compare `--sampler prior` here with `--sampler gmm` on mnist_cvae).

    python -m experiments.train --config experiments/configs/mnist_cvae_vamp.py \\
        --workdir runs/mnist_cvae_vamp
    python -m experiments.evaluate --workdir runs/mnist_cvae_vamp

Needs the prepared TFDS mnist (TFDS_DATA_DIR or --config.data.data_dir). Measured (3 seeds,
50 epochs; docs/results.md): it degenerates — the prior's components are spikes of width σ₀,
so codes settle on the 500 pseudo-input codes (5–9 active units, KL 3.6–5.2 nats, recon
−156, nll_is 158.6, classifier-FID ~190). A collapsed posterior needs a prior wider than σ₀.
"""

from experiments.configs.common import mnist


def get_config():
    c = mnist("collapsed")
    c.model.prior = "vamp"
    c.model.num_pseudo_inputs = 500
    return c
