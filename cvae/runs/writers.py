"""What a run writes beside its checkpoints: metrics.jsonl, TensorBoard events, PNG grids.

TensorBoard files are written by tensorboardX, which needs no TensorFlow. Image grids are
plain matplotlib PNGs. File names come from ``cvae.runs.workdir.Workdir``.
"""

from __future__ import annotations

import math
import pathlib

import numpy as np

from cvae import config as config_lib
from cvae.runs.workdir import Workdir

METRIC_KEYS = (
    "step",
    "epoch",
    "split",
    "loss",
    "elbo",
    "recon",
    "kl",
    "examples_per_s",
    "elapsed_s",
)
# A latent DiT's records: its flow-matching loss, no ELBO (cvae.training.latent).
LATENT_METRIC_KEYS = ("step", "split", "loss", "examples_per_s", "elapsed_s")


class MetricsWriter:
    """Appends one JSON object per evaluation to metrics.jsonl and mirrors it to TensorBoard.

    ``enabled=False`` (every process but the primary one of a multi-process run) checks the
    records and writes nothing, so that one run leaves one metrics.jsonl. ``required`` is the
    keys every record must hold: a VAE run's ``METRIC_KEYS`` unless another kind of run
    (a latent DiT's, ``LATENT_METRIC_KEYS``) says otherwise.
    """

    def __init__(
        self,
        workdir: Workdir,
        tensorboard: bool = True,
        enabled: bool = True,
        required: tuple[str, ...] = METRIC_KEYS,
    ):
        self.workdir = workdir
        self.enabled = enabled
        self.required = required
        self._tensorboard = tensorboard and enabled
        self._writer = None  # opened at the first record: a run with nothing new writes no file

    @property
    def _tb(self):
        """The TensorBoard writer, or None when disabled (opened on first use)."""
        if self._tensorboard and self._writer is None:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(self.workdir.tensorboard))
        return self._writer

    def write(self, record: dict) -> None:
        """Appends ``record`` (it must hold the ``required`` keys) and mirrors its numbers."""
        missing = [k for k in self.required if k not in record]
        if missing:
            raise KeyError(f"metrics record lacks {missing}")
        if not self.enabled:
            return
        self.workdir.append_metrics(record)
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("step", "epoch", "split") and isinstance(value, int | float):
                    self._tb.add_scalar(f"{record['split']}/{key}", value, record["step"])

    def hparams(self, config) -> None:
        """The config as TensorBoard hyperparameters (HPARAMS tab), once per run."""
        if self._tb is None:
            return
        from tensorboardX.summary import hparams

        flat = {
            name: value if isinstance(value, int | float | str | bool) else str(value)
            for name, value in config_lib.flatten(config).items()
        }
        for summary in hparams(flat, {"validation/elbo": 0.0, "test/elbo": 0.0}):
            self._tb.file_writer.add_summary(summary)

    def image(self, tag: str, grid: np.ndarray, step: int) -> None:
        """Logs an image grid to TensorBoard."""
        if self._tb is not None:
            self._tb.add_image(tag, grid, step, dataformats="HWC")

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer, if one was opened."""
        if self._writer is not None:
            self._writer.close()


def image_grid(images: np.ndarray, columns: int | None = None) -> np.ndarray:
    """Tiles N×H×W×C images in [0, 1] into one (rows·H)×(cols·W)×3 float image."""
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    n, h, w, c = images.shape
    if c == 1:
        images = np.repeat(images, 3, axis=-1)
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.ones((rows * (h + 1) + 1, columns * (w + 1) + 1, 3), np.float32)
    for i, image in enumerate(images[..., :3]):
        r, col = divmod(i, columns)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w] = (
            image
        )
    return grid


def save_png(path: str | pathlib.Path, grid: np.ndarray, scale: int = 4) -> None:
    """Writes ``grid`` (H×W×3 in [0, 1]) as a PNG, each pixel drawn ``scale``×``scale``."""
    # matplotlib.image needs no GUI backend, and leaves a notebook's backend alone.
    from matplotlib import image

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.imsave(path, np.kron(grid, np.ones((scale, scale, 1))))
