"""CelebA at 64×64: the collapsed VAE (σ₀ = 0.01) on residual conv nets.

Images: the 178×218 aligned faces, centre-cropped to 140×140 and resized to 64×64
(`data.center_crop`, `data.resize`; applied once, when the split is decoded into the
stream's cache). CelebA's own validation split selects the model. The 162,770 training
images take 2.0 GB as 64×64×3 uint8; `data.pipeline = "auto"` streams them when they exceed
`data.max_device_bytes`. Nets: four stages of 64, 128, 256, 512 channels (residual blocks
with GroupNorm) down to 4×4, 64 latents (the latent size of Ghosh et al. (2020) for
CelebA); Gaussian likelihood with a learned scale on dequantized pixels.

    python -m experiments.train --config experiments/configs/celeba64_cvae.py \\
        --workdir runs/celeba64_cvae
    python -m experiments.sample --workdir runs/celeba64_cvae --sampler gmm --out gmm.png

Preparation (on a machine with internet; docs/data.md): `tfds build celeb_a --data_dir DIR
--file_format array_record` (about 1.4 GB of downloads, a few GB of disk), then point
TFDS_DATA_DIR or data.data_dir at DIR. CelebA was not available where cvae's results were measured:
this config has not been trained here.
On a CPU, add `--config.data.pipeline=stream --config.data.stream_chunk_steps=1`:
XLA:CPU runs conv gradients in a scanned epoch ~50× slower (docs/performance.md, Streaming input).
"""

from cvae.config import base_config


def get_config():
    c = base_config()
    c.data.name = "celeb_a"
    c.data.validation_split = "validation"
    c.data.center_crop = 140
    c.data.resize = 64
    c.data.binarize = "none"
    c.data.dequantize = True
    c.model.arch = "resnet"
    c.model.conv_channels = (64, 128, 256, 512)
    c.model.latent_dim = 64
    c.model.posterior = "collapsed"
    c.model.sigma0 = 0.01
    c.model.likelihood = "gaussian"
    c.model.likelihood_scale = 0.0  # learned
    c.train.batch_size = 64
    c.train.num_epochs = 30
    c.train.learning_rate = 5e-4
    c.train.lr_schedule = "warmup_cosine"
    c.train.lr_warmup_steps = 2000
    c.train.image_grid_size = 64
    c.eval.every_epochs = 1
    c.eval.num_importance_samples = 100
    c.eval.batch_size = 250
    return c
