"""Test-wide setup: 8 simulated CPU devices (set before JAX starts) and tiny configs."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from cvae import config as config_lib  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
MNIST_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "tensorflow_datasets"


def mnist_data_dir() -> str | None:
    """The prepared TFDS directory holding mnist, or None (tests using it then skip)."""
    for candidate in (os.environ.get("TFDS_DATA_DIR"), str(MNIST_DIR)):
        if candidate and (pathlib.Path(candidate) / "mnist").is_dir():
            return candidate
    return None


requires_mnist = pytest.mark.skipif(mnist_data_dir() is None,
                                    reason="prepared TFDS mnist not found (set TFDS_DATA_DIR)")


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
    for dotted, value in overrides.items():
        node = c
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def run_cli(*args, timeout=240, env=None):
    """``python -m ARGS`` from the repository root, as a user runs it: one CPU device."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, timeout=timeout,
                          capture_output=True, text=True)
