"""CIFAR-10: a convolutional Gaussian VAE with a learned-scale Gaussian likelihood on
uniformly dequantized pixels, for 32×32×3 images.

    python -m experiments.train --config experiments/configs/cifar10_vae_conv.py \
        --workdir runs/cifar10_vae_conv

Needs cifar10 prepared as array_record; it was not available where cvae's results were measured, so
this config has not been run here (its architecture is exercised on 32×32×3 inputs by
tests/models/test_vae.py).
On a CPU, add `--config.data.pipeline=stream --config.data.stream_chunk_steps=1`:
XLA:CPU runs conv gradients in a scanned epoch ~50× slower (docs/performance.md, Streaming input).
"""

from experiments.configs.common import cifar10


def get_config():
    c = cifar10("gaussian")
    c.model.arch = "conv"
    c.model.conv_channels = (32, 64, 128)
    c.model.conv_dense_width = 512
    c.model.latent_dim = 64
    c.train.num_epochs = 50
    c.train.lr_warmup_steps = 500
    return c
