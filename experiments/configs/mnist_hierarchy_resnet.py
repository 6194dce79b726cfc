"""MNIST, the hierarchy study's two layers (z₁ 16, z₂ 8) on a pyramid of residual conv blocks
(cvae.models.residual_hierarchy.ResidualTopDownVAE): the bottom-up pass and the top-down
state run at 14×14×16 (z₁'s level) and 7×7×32 (z₂'s); each latent is read from its level
through a dense layer of 64 and written back into the state; the decoder reads the state,
hence every layer. Both layers Gaussian unless the command line says otherwise.

    python -m experiments.train --config experiments/configs/mnist_hierarchy_resnet.py \
        --workdir runs/mnist_hierarchy_resnet \
        --config.data.pipeline=stream --config.data.stream_chunk_steps=8   # on a CPU
    python -m experiments.evaluate --workdir runs/mnist_hierarchy_resnet --k 1000

On a CPU, conv nets train through the stream (XLA:CPU runs gradient convolutions inside a
scanned epoch about 15–50× slower; the stream's chunks are unrolled: docs/data.md). Needs the
prepared TFDS mnist (TFDS_DATA_DIR or --config.data.data_dir).
"""

from experiments.configs import mnist_hierarchy


def get_config():
    c = mnist_hierarchy.get_config()
    c.model.arch = "resnet"
    c.model.inference = "top_down"
    c.model.decoder_layers = "all"
    c.model.conv_channels = (16, 32)
    c.model.encoder_widths = (64,)
    c.model.upper_widths = ((64,),)
    return c
