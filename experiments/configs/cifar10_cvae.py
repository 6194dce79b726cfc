"""CIFAR-10: the collapsed VAE (σ₀ = 0.01) on residual conv nets, 32×32×3.

Encoder: a stem convolution and three stages (64, 128, 256 channels), each a
pre-activation residual block with GroupNorm and a stride-2 convolution; decoder mirrored
(nearest ×2 upsampling); 128 latents; Gaussian likelihood with a learned scale on
uniformly dequantized pixels; the ex-post samplers (gmm, flow, two_stage) draw from it.

    python -m experiments.train --config experiments/configs/cifar10_cvae.py \\
        --workdir runs/cifar10_cvae
    python -m experiments.sample --workdir runs/cifar10_cvae --sampler flow --out flow.png

Preparation (on a machine with internet; docs/data.md): `tfds build cifar10 --data_dir DIR
--file_format array_record` (about 160 MB of disk, a few minutes), then point
TFDS_DATA_DIR or data.data_dir at DIR. CIFAR-10 was not available where cvae's results
were measured: this config has not been trained; its nets are exercised on 32×32×3 and
64×64×3 inputs by tests/models/test_vae.py and tests/data/test_stream.py.
On a CPU, add `--config.data.pipeline=stream --config.data.stream_chunk_steps=1`:
XLA:CPU runs conv gradients in a scanned epoch ~50× slower (docs/performance.md, Streaming input).
"""

from experiments.configs.common import cifar10


def get_config():
    c = cifar10("collapsed")
    c.model.arch = "resnet"
    c.model.conv_channels = (64, 128, 256)
    c.model.latent_dim = 128
    c.model.sigma0 = 0.01
    c.train.num_epochs = 100
    c.train.learning_rate = 1e-3
    c.train.lr_warmup_steps = 1000
    c.eval.num_importance_samples = 100
    return c
