"""Quickstart: a collapsed VAE (σ₀ = 0.01) on scikit-learn's 8×8 digits; fully offline.

    python -m experiments.train --config experiments/configs/digits_cvae.py \
        --workdir runs/digits_cvae

This is what `make run` trains. Measured on 2 CPU cores (seed 0): 13–18 s of training
(150 epochs), then evaluation with K = 1000: test ELBO −46.5 nats, importance-sampled
NLL 42.8 nats, 8/8 active units.
"""

from cvae.config import base_config


def get_config():
    c = base_config()
    c.data.name = "digits"
    c.data.validation_size = 200
    c.model.posterior = "collapsed"
    c.model.sigma0 = 0.01
    c.model.encoder_widths = (128, 64, 32)
    c.model.latent_dim = 8
    c.train.batch_size = 64
    c.train.num_epochs = 150
    c.eval.every_epochs = 10
    c.train.checkpoint_every_epochs = 10
    c.eval.num_importance_samples = 1000
    return c
