"""What a run writes beside its checkpoints: metrics.jsonl, TensorBoard events, PNG grids.

TensorBoard files are written by tensorboardX, which needs no TensorFlow. Image grids are
plain matplotlib PNGs. Only these functions know the file names and formats.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import tempfile

import numpy as np

METRIC_KEYS = ("step", "epoch", "split", "loss", "elbo", "recon", "kl", "examples_per_s",
               "elapsed_s")


def write_json_atomic(path: str | pathlib.Path, payload: dict) -> None:
    """Writes JSON through a temporary file and a rename: never a half-written file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(f.name, path)


def read_metrics(path: str | pathlib.Path) -> list[dict]:
    path = pathlib.Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(path: str | pathlib.Path, max_step: int) -> None:
    """Drops records past ``max_step`` (written after the checkpoint a run resumes from)."""
    records = [r for r in read_metrics(path) if r["step"] <= max_step]
    path = pathlib.Path(path)
    if path.exists():
        path.write_text("".join(json.dumps(r) + "\n" for r in records))


class MetricsWriter:
    """Appends one JSON object per evaluation to metrics.jsonl and mirrors it to TensorBoard.

    ``enabled=False`` (every process but the primary one of a multi-process run) checks the
    records and writes nothing, so that one run leaves one metrics.jsonl.
    """

    def __init__(self, workdir: str | pathlib.Path, tensorboard: bool = True,
                 enabled: bool = True):
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if tensorboard and enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tb"))

    def write(self, record: dict) -> None:
        missing = [k for k in METRIC_KEYS if k not in record]
        if missing:
            raise KeyError(f"metrics record lacks {missing}")
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("step", "epoch", "split") and isinstance(value, int | float):
                    self._tb.add_scalar(f"{record['split']}/{key}", value, record["step"])

    def image(self, tag: str, grid: np.ndarray, step: int) -> None:
        if self._tb is not None:
            self._tb.add_image(tag, grid, step, dataformats="HWC")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


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
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + col * (w + 1): 1 + col * (w + 1) + w] = image
    return grid


def save_png(path: str | pathlib.Path, grid: np.ndarray, scale: int = 4) -> None:
    # matplotlib.image needs no GUI backend, and leaves a notebook's backend alone.
    from matplotlib import image

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.imsave(path, np.kron(grid, np.ones((scale, scale, 1))))
