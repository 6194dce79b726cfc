"""MNIST, a deep top-down hierarchy of latent maps (VDVAE's design in cvae's terms,
cvae.models.residual_hierarchy with model.groups_per_level): 4 groups of 14×14×4 maps and
8 groups of 7×7×4 maps on a pyramid of residual conv blocks (32 and 64 channels), every
group Gaussian, the decoder reading the finest top-down state. Trained with the stabilisers
deep hierarchies rely on: gradient clipping, skipping of updates whose gradient norm is
far above the usual, an EMA of the weights (what is evaluated, selected and sampled), KL
warm-up, and a warm-up + cosine learning rate.

    python -m experiments.train --config experiments/configs/mnist_deep.py \
        --workdir runs/mnist_deep \
        --config.data.pipeline=stream --config.data.stream_chunk_steps=2   # on a CPU
    python -m experiments.evaluate --workdir runs/mnist_deep --k 1000

The run resumes exactly where it stopped: rerun the first command to train another stretch
(docs/results.md keeps the stretches of the reference run). Needs the prepared TFDS mnist
(TFDS_DATA_DIR or --config.data.data_dir).
"""

from experiments.configs.common import MNIST_TRAIN_IMAGES, mnist


def get_config():
    c = mnist("gaussian")
    c.model.arch = "resnet"
    c.model.inference = "top_down"
    c.model.decoder_layers = "all"
    c.model.conv_channels = (32, 64)
    c.model.groups_per_level = (4, 8)
    c.model.code_channels = 4
    c.train.batch_size = 64
    c.train.num_epochs = 400
    c.train.learning_rate = 1e-3
    c.train.lr_warmup_steps = 1000
    # Gradient norms are of the loss in nats per image (about 5e3 at the start on MNIST;
    # VDVAE's thresholds are of nats per dimension): clip the rare large ones, skip only
    # the spikes an order of magnitude above.
    c.train.grad_clip_norm = 2e4
    c.train.skip_grad_norm = 1e5
    c.train.ema_decay = 0.999
    c.objective.kl_warmup_steps = 5 * (MNIST_TRAIN_IMAGES - c.data.validation_size) // 64
    c.eval.every_epochs = 5
    c.train.checkpoint_every_epochs = 1
    return c
