"""``Workdir``: the layout of a run directory. The only place that spells a file name.

    DIR/config.json            the resolved config (written atomically)
    DIR/metrics.jsonl          one JSON record per (split, epoch)
    DIR/eval.json              experiments.evaluate's scores (written atomically)
    DIR/sample_quality.json    experiments.sample_quality's scores
    DIR/checkpoints/           Orbax checkpoints (latest/ and best/; see cvae.checkpoint)
    DIR/tb/                    TensorBoard events
    DIR/images/                reconstruction and sample grids, one PNG per evaluation

Everything else asks a ``Workdir`` for paths and for reading and writing these files.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

import ml_collections

from cvae import config as config_lib


class RunNotFoundError(ValueError):
    """The workdir has no trained run (no directory, no config.json or no checkpoint)."""


def write_json_atomic(path: str | pathlib.Path, payload: dict) -> None:
    """Writes JSON through a temporary file and a rename: never a half-written file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(f.name, path)


def read_json(path: pathlib.Path) -> dict | None:
    """The JSON object in ``path``, or None when the file does not exist."""
    return json.loads(path.read_text()) if path.exists() else None


class Workdir:
    """A run directory: its paths, and typed access to the files in it."""

    CONFIG = "config.json"
    METRICS = "metrics.jsonl"
    EVAL = "eval.json"
    SAMPLE_QUALITY = "sample_quality.json"
    CHECKPOINTS = "checkpoints"
    TENSORBOARD = "tb"
    IMAGES = "images"
    # What a run writes while training (deleted together by train.overwrite).
    RUN_OUTPUTS = (CHECKPOINTS, TENSORBOARD, IMAGES, METRICS, EVAL, SAMPLE_QUALITY)

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)

    def __repr__(self) -> str:
        return f"Workdir({str(self.path)!r})"

    def __truediv__(self, name: str) -> pathlib.Path:
        return self.path / name

    # ------------------------------------------------------------------ paths
    @property
    def name(self) -> str:
        """The directory's own name (a run's label in tables)."""
        return self.path.name

    @property
    def config_path(self) -> pathlib.Path:
        """DIR/config.json"""
        return self.path / self.CONFIG

    @property
    def metrics_path(self) -> pathlib.Path:
        """DIR/metrics.jsonl"""
        return self.path / self.METRICS

    @property
    def eval_path(self) -> pathlib.Path:
        """DIR/eval.json"""
        return self.path / self.EVAL

    @property
    def sample_quality_path(self) -> pathlib.Path:
        """DIR/sample_quality.json"""
        return self.path / self.SAMPLE_QUALITY

    @property
    def checkpoints(self) -> pathlib.Path:
        """DIR/checkpoints/"""
        return self.path / self.CHECKPOINTS

    @property
    def tensorboard(self) -> pathlib.Path:
        """DIR/tb/"""
        return self.path / self.TENSORBOARD

    def image_path(self, tag: str, step: int) -> pathlib.Path:
        """DIR/images/<tag>_step<step>.png"""
        return self.path / self.IMAGES / f"{tag}_step{step:08d}.png"

    # ----------------------------------------------------------------- state
    def exists(self) -> bool:
        """True when the directory exists."""
        return self.path.is_dir()

    def has_run(self) -> bool:
        """True once training has written a checkpoint or a metrics record here."""
        return self.checkpoints.exists() or self.metrics_path.exists()

    def require_run(self) -> None:
        """Raises RunNotFoundError unless this directory holds a run's config."""
        if not self.exists():
            raise RunNotFoundError(f"workdir {self.path} does not exist")
        if not self.config_path.exists():
            raise RunNotFoundError(f"{self.path} holds no run (no {self.CONFIG}); train one "
                                   "with `python -m experiments.train --config ... --workdir "
                                   "DIR`")

    def clear_run(self) -> None:
        """Deletes every training output (train.overwrite), keeping the directory."""
        for name in self.RUN_OUTPUTS:
            target = self.path / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)

    # ---------------------------------------------------------------- config
    def read_config_dict(self) -> dict:
        """config.json as saved: nested dicts, tuples as lists."""
        self.require_run()
        return json.loads(self.config_path.read_text())

    def read_config(self) -> ml_collections.ConfigDict:
        """config.json as a ConfigDict with the schema's types (tuples restored)."""
        return config_lib.from_dict(self.read_config_dict())

    def write_config(self, config: ml_collections.ConfigDict) -> None:
        """Writes config.json atomically."""
        write_json_atomic(self.config_path, config.to_dict())

    # --------------------------------------------------------------- results
    def read_eval(self) -> dict | None:
        """eval.json, or None when the run has not been evaluated."""
        return read_json(self.eval_path)

    def write_eval(self, result: dict) -> pathlib.Path:
        """Writes eval.json atomically (a failed evaluation leaves the old one)."""
        write_json_atomic(self.eval_path, result)
        return self.eval_path

    def read_sample_quality(self) -> dict | None:
        """sample_quality.json, or None."""
        return read_json(self.sample_quality_path)

    def write_sample_quality(self, result: dict) -> pathlib.Path:
        """Writes sample_quality.json atomically."""
        write_json_atomic(self.sample_quality_path, result)
        return self.sample_quality_path

    # --------------------------------------------------------------- metrics
    def read_metrics(self, split: str | None = None) -> list[dict]:
        """The records of metrics.jsonl (of one split, if given), in order."""
        if not self.metrics_path.exists():
            return []
        records = [json.loads(line) for line in self.metrics_path.read_text().splitlines()
                   if line.strip()]
        return [r for r in records if split is None or r["split"] == split]

    def truncate_metrics(self, max_step: int) -> None:
        """Drops records past ``max_step`` (written after the checkpoint a run resumes from)."""
        if self.metrics_path.exists():
            kept = [r for r in self.read_metrics() if r["step"] <= max_step]
            write_lines_atomic(self.metrics_path, [json.dumps(r) for r in kept])

    def append_metrics(self, record: dict) -> None:
        """Appends one record as a line of metrics.jsonl."""
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def write_lines_atomic(path: pathlib.Path, lines: list[str]) -> None:
    """Replaces ``path`` by ``lines`` through a temporary file and a rename."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        f.write("".join(line + "\n" for line in lines))
    os.replace(f.name, path)


def as_workdir(path_or_workdir) -> Workdir:
    """Accepts a path or a Workdir."""
    return path_or_workdir if isinstance(path_or_workdir, Workdir) else Workdir(path_or_workdir)
