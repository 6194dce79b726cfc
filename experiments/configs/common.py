"""Shared starting points for the experiment configs (not a config itself)."""

from cvae.config import apply_preset, base_config


def mnist(posterior: str, preset: str = "seed"):
    """Dynamically binarized MNIST, 5,000 validation images, Bernoulli likelihood."""
    c = apply_preset(base_config(), preset)
    c.data.name = "mnist"
    c.data.validation_size = 5000
    c.model.posterior = posterior
    c.train.batch_size = 128
    c.train.num_epochs = 50
    c.train.learning_rate = 1e-3
    c.train.lr_schedule = "warmup_cosine"
    c.train.lr_warmup_steps = 500
    c.eval.every_epochs = 5
    c.train.checkpoint_every_epochs = 5
    return c


MNIST_TRAIN_IMAGES = 60_000


def iwae_paper(kind: str, k: int, epochs: int, layers: int = 1, warmup_epochs: int = 0):
    """Burda et al. (2015), one stochastic layer: 784-200-200 (tanh) → 50, decoder mirrored,
    trained like the paper on all 60,000 training images (no validation split: the schedule
    is fixed, nothing is selected; the periodic evaluation reports the test split).

    With ``layers=2`` their two-layer model (the widths of the authors' code,
    github.com/yburda/iwae, experiments.py): x → 200-200 → z₁ (100) → 100-100 → z₂ (50),
    tanh, each generative net the mirror of its inference net, Gaussian layers.
    ``warmup_epochs`` > 0 warms the KL weight up over that many epochs (not in the paper)."""
    c = mnist("gaussian", preset="iwae")
    if layers == 2:
        c.model.latent_dim = 100
        c.model.upper_latent_dims = (50,)
        c.model.upper_widths = ((100, 100),)
    c.data.validation_size = 0
    c.objective.kind = kind
    c.objective.k = k
    c.train.batch_size = 100
    c.train.num_epochs = epochs
    c.objective.kl_warmup_steps = warmup_epochs * (MNIST_TRAIN_IMAGES // c.train.batch_size)
    c.train.learning_rate = 1e-3
    c.eval.every_epochs = 10
    c.train.checkpoint_every_epochs = 10
    return c


def cifar10(posterior: str):
    """CIFAR-10 32×32×3: 5,000 validation images, uniformly dequantized pixels, a Gaussian
    likelihood with a learned scale; the nets are the caller's."""
    c = base_config()
    c.data.name = "cifar10"
    c.data.validation_size = 5000
    c.data.binarize = "none"
    c.data.dequantize = True
    c.model.posterior = posterior
    c.model.likelihood = "gaussian"
    c.model.likelihood_scale = 0.0  # learned
    c.train.batch_size = 128
    c.train.lr_schedule = "warmup_cosine"
    c.eval.every_epochs = 5
    return c
