"""MNIST's tokenizer: a collapsed VAE whose code is a 7 × 7 × 4 map (``model.arch =
"conv_map"``: two stride-2 conv stages of 32 and 64 channels, a 1×1 head per position),
q(z|x) = N(μ(x), σ₀² I) per position and channel, dynamically binarized MNIST.

    python -m experiments.train --config experiments/configs/mnist_tokenizer.py \
        --workdir runs/mnist_tokenizer
    # the Gaussian KL-VAE of latent diffusion (a small KL weight), or the autoencoder:
    ... --config.model.posterior=gaussian --config.objective.beta=1e-6
    ... --config.model.posterior=deterministic

Streams its batches (``data.pipeline=stream``, 8 steps a call): on a CPU a conv model's
scanned epoch is an order of magnitude slower than its steps unrolled
(docs/performance.md). Needs the prepared TFDS mnist (TFDS_DATA_DIR or
--config.data.data_dir).
"""

from experiments.configs.common import mnist


def get_config():
    c = mnist("collapsed")
    c.model.arch = "conv_map"
    c.model.conv_channels = (32, 64)
    c.model.code_channels = 4
    c.model.sigma0 = 0.1
    c.train.num_epochs = 20
    c.data.pipeline = "stream"
    c.data.stream_chunk_steps = 8
    return c
