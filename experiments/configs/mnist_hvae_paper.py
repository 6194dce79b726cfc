"""MNIST: the two-stochastic-layer HVAE of the VampPrior paper (Tomczak & Welling, 2018).

Two layers of 40 latents inferred top-down, q(z₂|x) q(z₁|x, z₂), generated as
p(z₂) p(z₁|z₂) p(x|z₁, z₂) (cvae.models.mlp_hierarchy.TopDownVAE with
``model.decoder_layers = "all"``), gated dense layers of 300 units, Bernoulli decoder,
dynamically binarized MNIST; the VampPrior with K = 500 pseudo-inputs on z₂; the protocol of
``mnist_vamp_paper``: 10,000 training images held out for validation, Adam 5e-4, batch 100,
KL warm-up over 100 epochs, early stopping after 50 epochs without a better validation ELBO.
The standard-prior baseline is the same command with `--config.model.prior=standard`.

The nets, against the authors' code: the decoder [z₁, z₂] → 300 → 300 → x and p(z₁|z₂)
z₂ → 300 → 300 → z₁ have their depth and widths; q(z₂|x) is x → 300 → 300 (the bottom-up
pass of z₁'s layer) → 300 → 300 → z₂ here, and q(z₁|x, z₂) reads [h₁(x), z₂] through one
layer of 300, where theirs embeds x and z₂ separately in 300 units each before a joint
layer of 300.

    python -m experiments.train --config experiments/configs/mnist_hvae_paper.py \\
        --workdir runs/hvae_paper
    python -m experiments.train --config experiments/configs/mnist_hvae_paper.py \\
        --workdir runs/hvae_paper_standard --config.model.prior=standard
    python -m experiments.evaluate --workdir runs/hvae_paper --k 5000

Needs the prepared TFDS mnist (TFDS_DATA_DIR or --config.data.data_dir), or MNIST saved as
npz (`--config.data.name=npz:PATH`).
"""

from experiments.configs import mnist_vamp_paper


def get_config():
    c = mnist_vamp_paper.get_config()
    c.model.encoder_widths = (300, 300)
    c.model.upper_latent_dims = (40,)
    c.model.upper_widths = ((300, 300),)
    c.model.inference = "top_down"
    c.model.decoder_layers = "all"
    return c
