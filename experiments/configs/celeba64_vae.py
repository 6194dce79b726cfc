"""CelebA at 64×64: the Gaussian-posterior VAE with the nets, data and schedule of
celeba64_cvae (its docstring has the preparation step and the image pipeline).

    python -m experiments.train --config experiments/configs/celeba64_vae.py \\
        --workdir runs/celeba64_vae

Not trained yet: CelebA was not available where cvae's results were measured.
"""

from experiments.configs import celeba64_cvae


def get_config():
    c = celeba64_cvae.get_config()
    c.model.posterior = "gaussian"
    return c
