"""What the tests share: the repository's paths, the prepared MNIST (or a skip), a generated
TFDS set, the tiny config every training test starts from, and ``python -m`` as a user
runs it. Test modules import from here, never from each other or from conftest."""

import os
import pathlib

import pytest

from cvae import config as config_lib
from tests import launcher

ROOT = pathlib.Path(__file__).resolve().parents[1]
MNIST_DIR = ROOT.parent / "shared" / "tensorflow_datasets"

# The flags of a tiny digits run, for tests that train through the launchers.
TINY = [
    f"--config.{k}={v}"
    for k, v in {
        "model.encoder_widths": "(32,16)",
        "model.latent_dim": 4,
        "train.batch_size": 64,
        "train.num_epochs": 2,
        "data.validation_size": 100,
        "train.image_grid_size": 16,
        "train.num_devices": 1,
        # the ex-post fits of make_test_config (below): what the samplers do is tested here,
        # the quality of full-length fits in tests/analysis/test_ex_post.py
        "ex_post.flow_max_epochs": 20,
        "ex_post.two_stage_epochs": 10,
        "ex_post.diffusion_updates": 250,
    }.items()
]


def mnist_data_dir() -> str | None:
    """The prepared TFDS directory holding mnist, or None (tests using it then skip)."""
    for candidate in (os.environ.get("TFDS_DATA_DIR"), str(MNIST_DIR)):
        if candidate and (pathlib.Path(candidate) / "mnist").is_dir():
            return candidate
    return None


def requires_mnist(test):
    """Marks a test ``mnist`` and skips it, with the reason, where MNIST is not prepared."""
    skip = pytest.mark.skipif(
        mnist_data_dir() is None, reason="prepared TFDS mnist not found (set TFDS_DATA_DIR)"
    )
    return pytest.mark.mnist(skip(test))


def write_random_colour_tfds(
    data_dir, num_train: int, num_test: int, shape=(64, 64, 3), num_classes: int = 3
) -> str:
    """Prepares a TFDS data set ``random_colour`` (array_record files, as ``tfds build``
    writes them) of uniform random uint8 images under ``data_dir``; returns its name.

    The pixels are a uint8 Tensor feature: encoding an Image feature needs TensorFlow,
    which the project does not install."""
    import numpy as np
    import tensorflow_datasets as tfds

    class RandomColour(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")
        url_infos = {}  # nothing to download (TFDS would look for a checksums file)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Tensor(shape=shape, dtype=np.uint8),
                        "label": tfds.features.ClassLabel(num_classes=num_classes),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {
                "train": self._generate_examples(num_train, 0),
                "test": self._generate_examples(num_test, 1),
            }

        def _generate_examples(self, n, seed):
            rng = np.random.default_rng(seed)
            for i in range(n):
                yield (
                    i,
                    {
                        "image": rng.integers(0, 256, shape, dtype=np.uint8),
                        "label": i % num_classes,
                    },
                )

    RandomColour(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return "random_colour"


def make_test_config(**overrides):
    """A tiny, fast config on the offline digits set; overrides use dotted names."""
    c = config_lib.base_config()
    c.model.encoder_widths = (32, 16)
    c.model.latent_dim = 4
    c.train.batch_size = 64
    c.train.num_epochs = 2
    c.train.num_devices = 1
    c.train.image_grid_size = 16
    c.data.validation_size = 100
    c.eval.batch_size = 256
    c.eval.num_importance_samples = 20
    c.eval.chunk_size = 10
    # ex-post fits a tenth to a thirtieth of the defaults' length: tests check what the
    # samplers do, the quality of full-length fits is tested in tests/analysis/test_ex_post.py
    c.ex_post.flow_max_epochs = 20
    c.ex_post.two_stage_epochs = 10
    c.ex_post.diffusion_updates = 250
    for dotted, value in overrides.items():
        node = c
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def run_cli(*args, timeout=240, env=None, fresh=False):
    """``python -m ARGS`` from the repository root, as a user runs it, on one CPU device: a
    process forked from the test launcher (``tests/launcher.py``: the libraries imported
    once), or a fresh interpreter with ``fresh=True``. ``env`` adds variables (None removes
    one)."""
    return launcher.run(args[0], *args[1:], env=env, timeout=timeout, fresh=fresh)
