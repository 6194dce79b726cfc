"""``Workdir``: the layout of a run directory. The only place that spells a file name.

    DIR/config.json            the resolved config (written atomically)
    DIR/metrics.jsonl          one JSON record per (split, epoch)
    DIR/eval.json              experiments.evaluate's scores (written atomically)
    DIR/sample_quality.json    experiments.sample_quality's scores
    DIR/provenance.json        code commit, library versions and machine of the training
    DIR/data.json              the shape, classes and pixel range of the run's data, so a
                               run loads (to decode and sample) without its data set
    DIR/checkpoints/           Orbax checkpoints (latest/ and best/; see cvae.runs.checkpoint)
    DIR/tb/                    TensorBoard events
    DIR/images/                reconstruction and sample grids, one PNG per evaluation
    DIR/samples_<sampler>.png  sample grids drawn by experiments.sample / experiments.main
    DIR/samplers/<kind>/       fitted ex-post densities (cvae.samplers), reused while the
                               params they were fitted to are the run's

Everything else asks a ``Workdir`` for paths and for reading and writing these files.
(One module on purpose: every name above, the lock that keeps one writer per directory
and the atomic writes they are written with; splitting them would spell names twice.)
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import socket
import tempfile
import time

import ml_collections

from cvae import config as config_lib
from cvae.faults import fault_point

log = logging.getLogger("cvae")
_HELD_LOCKS: set[pathlib.Path] = set()  # lock files this process holds


def release_held_locks() -> None:
    """Removes every workdir lock this process holds (for an exit that skips ``finally``)."""
    for path in list(_HELD_LOCKS):
        path.unlink(missing_ok=True)
        _HELD_LOCKS.discard(path)


class RunNotFoundError(ValueError):
    """The workdir has no trained run (no directory, no config.json or no checkpoint)."""


class WorkdirLockedError(RuntimeError):
    """Another live process is training in this workdir."""


def write_text_atomic(path: str | pathlib.Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename.

    A crash leaves either the old file or the new one, never a torn one.

    Args:
      path: the file to write.
      text: its new contents.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        f.write(text)
    os.replace(f.name, path)


def write_json_atomic(path: str | pathlib.Path, payload: dict) -> None:
    """Writes indented, key-sorted JSON atomically (``write_text_atomic``).

    Args:
      path: the file to write.
      payload: a JSON-serialisable dict.
    """
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_json(path: pathlib.Path, *, damaged_as_missing: bool = False) -> dict | None:
    """The JSON object in ``path``, or None when the file does not exist.

    Args:
      path: the file.
      damaged_as_missing: also None when the file is empty, unreadable or not JSON (a lock
        file being written by another process); otherwise such a file raises.

    Returns:
      The parsed object, or None.
    """
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        if damaged_as_missing:
            return None
        raise


def _whole_records(text: str) -> list[dict]:
    """The JSON objects of a .jsonl text, one per line; a line that is not a whole object
    (torn by a kill mid-write) is skipped."""
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class Workdir:
    """A run directory: its paths, and typed access to the files in it."""

    CONFIG = "config.json"
    METRICS = "metrics.jsonl"
    EVAL = "eval.json"
    EVAL_PARTIAL = "eval_partial.npz"  # an unfinished evaluation's scores so far
    SAMPLE_QUALITY = "sample_quality.json"
    PROVENANCE = "provenance.json"
    CONFIG_HISTORY = "config_history.jsonl"  # one record per resume that changed the config
    DATA_INFO = "data.json"
    CHECKPOINTS = "checkpoints"
    TENSORBOARD = "tb"
    IMAGES = "images"
    SAMPLERS = "samplers"
    LOCK = ".lock"  # {"pid", "host", "since"} of the one process writing this run
    # What a run writes while training (deleted together by train.overwrite).
    RUN_OUTPUTS = (
        CHECKPOINTS,
        TENSORBOARD,
        IMAGES,
        METRICS,
        EVAL,
        EVAL_PARTIAL,
        SAMPLE_QUALITY,
        PROVENANCE,
        DATA_INFO,
        SAMPLERS,
    )

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)

    def __repr__(self) -> str:
        return f"Workdir({str(self.path)!r})"

    def __truediv__(self, name: str) -> pathlib.Path:
        return self.path / name

    # ------------------------------------------------------------------ paths
    @property
    def name(self) -> str:
        """A run's label in tables: the directory's name or, for a member of a sweep, the
        sweep's name and its path inside it (``cvae/sigma0=0.01/seed=3``)."""
        for parent in self.path.parents:
            if (parent / "sweep.json").is_file():
                return f"{parent.name}/{self.path.relative_to(parent)}"
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
    def partial_eval_path(self) -> pathlib.Path:
        """DIR/eval_partial.npz: an unfinished evaluation's scores so far
        (``cvae.evaluation.partial``), removed once eval.json is written."""
        return self.path / self.EVAL_PARTIAL

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

    def samples_path(self, sampler: str) -> pathlib.Path:
        """DIR/samples_<sampler>.png, where experiments.sample and experiments.main write.

        Args:
          sampler: the sampler's name (prior, gmm, flow, two_stage).

        Returns:
          The path of the PNG grid.
        """
        return self.path / f"samples_{sampler}.png"

    def sampler_dir(self, name: str) -> pathlib.Path:
        """DIR/samplers/<name>/, where a fitted ex-post density is saved.

        Args:
          name: the sampler and, per class, its label (e.g. "flow" or "gmm-label3").

        Returns:
          The directory's path (not created).
        """
        return self.path / self.SAMPLERS / name

    def image_path(self, tag: str, step: int) -> pathlib.Path:
        """DIR/images/<tag>_step<step>.png, an image grid written during training.

        Args:
          tag: "reconstructions" or "samples".
          step: the training step the grid shows.

        Returns:
          The path of the PNG.
        """
        return self.path / self.IMAGES / f"{tag}_step{step:08d}.png"

    # ----------------------------------------------------------------- state
    def exists(self) -> bool:
        """Whether the directory exists.

        Returns:
          True when it is a directory.
        """
        return self.path.is_dir()

    def has_checkpoint(self) -> bool:
        """Whether training has saved a checkpoint here: what makes a directory a run.

        A start that failed before its first save (a data set not prepared, a kill during
        the first epoch) left no run to resume, whatever else it wrote.

        Returns:
          True once ``checkpoints/`` holds a save.
        """
        return any(
            step.is_dir() and step.name.isdigit()
            for kind in ("latest", "best")
            for step in (self.checkpoints / kind).glob("*")
        )

    def has_run(self) -> bool:
        """Whether training has written anything here.

        Returns:
          True once a checkpoint or a metrics record exists.
        """
        return self.checkpoints.exists() or self.metrics_path.exists()

    def require_run(self) -> None:
        """Raises RunNotFoundError unless this directory holds a run's config."""
        if not self.exists():
            raise RunNotFoundError(f"workdir {self.path} does not exist")
        if not self.config_path.exists():
            raise RunNotFoundError(
                f"{self.path} holds no run (no {self.CONFIG}); train one "
                "with `python -m experiments.train --config ... --workdir "
                "DIR`"
            )

    def clear_run(self) -> None:
        """Deletes every training output (train.overwrite), keeping the directory."""
        for name in self.RUN_OUTPUTS:
            target = self.path / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)

    # ---------------------------------------------------------------- config
    def read_config_dict(self) -> dict:
        """config.json as saved: nested dicts, tuples as lists.

        Returns:
          The saved config.

        Raises:
          RunNotFoundError: the directory holds no run.
        """
        self.require_run()
        return json.loads(self.config_path.read_text())

    def read_config(self) -> ml_collections.ConfigDict:
        """config.json as a ConfigDict with the schema's types (tuples restored).

        Returns:
          The run's config; fields added to the schema since it was saved take their defaults.
        """
        return config_lib.from_dict(self.read_config_dict())

    def write_config(self, config: ml_collections.ConfigDict) -> None:
        """Writes config.json atomically.

        Args:
          config: the run's resolved config.
        """
        write_json_atomic(self.config_path, config.to_dict())

    def read_config_history(self) -> list[dict]:
        """config_history.jsonl: one record per resume that changed the config.

        Returns:
          [{"step", "epoch", "changes": {name: [before, after]}, "provenance"}, …], oldest
          first; empty for a run trained by one config.
        """
        path = self.path / self.CONFIG_HISTORY
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def append_config_history(self, record: dict) -> None:
        """Appends one record to config_history.jsonl and flushes it to disk.

        Args:
          record: {"step", "epoch", "changes", "provenance"}.
        """
        with open(self.path / self.CONFIG_HISTORY, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def clear_config_history(self) -> None:
        """Deletes config_history.jsonl (train.overwrite starts a new run)."""
        (self.path / self.CONFIG_HISTORY).unlink(missing_ok=True)

    # --------------------------------------------------------------- results
    def read_eval(self) -> dict | None:
        """eval.json, experiments.evaluate's scores.

        Returns:
          The scores, or None when the run has not been evaluated.
        """
        return read_json(self.eval_path)

    def write_eval(self, result: dict) -> pathlib.Path:
        """Writes eval.json atomically (a failed evaluation leaves the old one), then removes
        the partial scores of an unfinished evaluation (``partial_eval_path``): finished
        scores replace them.

        Args:
          result: the scores.

        Returns:
          The path written.
        """
        write_json_atomic(self.eval_path, result)
        self.partial_eval_path.unlink(missing_ok=True)
        return self.eval_path

    def read_sample_quality(self) -> dict | None:
        """sample_quality.json, experiments.sample_quality's scores.

        Returns:
          The scores, or None.
        """
        return read_json(self.sample_quality_path)

    def write_sample_quality(self, result: dict) -> pathlib.Path:
        """Writes sample_quality.json atomically.

        Args:
          result: the scores.

        Returns:
          The path written.
        """
        write_json_atomic(self.sample_quality_path, result)
        return self.sample_quality_path

    def read_data_info(self) -> dict | None:
        """data.json: what the model needs to know of the run's data.

        Returns:
          {"name", "shape", "num_classes", "pixel_range"}, or None for a run trained before
          it was recorded.
        """
        return read_json(self.path / self.DATA_INFO)

    def write_data_info(self, record: dict) -> None:
        """Writes data.json atomically (training does, once its data are loaded).

        Args:
          record: the fields of ``cvae.data.DatasetInfo``.
        """
        write_json_atomic(self.path / self.DATA_INFO, record)

    def read_provenance(self) -> dict | None:
        """provenance.json: code commit, library versions and machine of the training.

        Returns:
          The record, or None for a run trained before provenance was recorded.
        """
        return read_json(self.path / self.PROVENANCE)

    def write_provenance(self, record: dict) -> None:
        """Writes provenance.json atomically (rewritten by each training invocation).

        Args:
          record: what ``cvae.runs.provenance.collect`` returns.
        """
        write_json_atomic(self.path / self.PROVENANCE, record)

    # --------------------------------------------------------------- metrics
    def read_metrics(self, split: str | None = None) -> list[dict]:
        """The records of metrics.jsonl, in order.

        A line that is not a whole JSON object (torn by a kill mid-write) is skipped.

        Args:
          split: only the records of this split ("train", "validation", "train_eval", "test");
            None for all.

        Returns:
          One dict per record.
        """
        if not self.metrics_path.exists():
            return []
        records = _whole_records(self.metrics_path.read_text())
        return [r for r in records if split is None or r.get("split") == split]

    def truncate_metrics(self, max_step: int, finished: bool = False) -> None:
        """Prepares metrics.jsonl for a run resuming at ``max_step``.

        Keeps the records up to it, drops later ones and the test record (the resumed run
        writes them again) and any torn line, so the file keeps one record per (split, epoch).
        A ``finished`` run (nothing left to train) keeps its test record at ``max_step``, and
        a file with nothing to drop is not rewritten.

        Args:
          max_step: the step the run resumes from.
          finished: whether the run has nothing left to train.
        """
        if not self.metrics_path.exists():
            return
        text = self.metrics_path.read_text()
        kept = [
            r
            for r in _whole_records(text)
            if r.get("step", max_step + 1) <= max_step
            and (r.get("split") != "test" or (finished and r.get("step") == max_step))
        ]
        new_text = "".join(json.dumps(r) + "\n" for r in kept)
        if new_text != text:
            write_text_atomic(self.metrics_path, new_text)

    def append_metrics(self, record: dict) -> None:
        """Appends one record as a line of metrics.jsonl.

        Args:
          record: a JSON-serialisable dict.
        """
        line = json.dumps(record) + "\n"
        with self.metrics_path.open("a") as f:
            # Two writes of the same bytes; the fail point between them tears the line.
            f.write(line[: len(line) // 2])
            f.flush()
            fault_point("metrics_write")
            f.write(line[len(line) // 2 :])

    # ------------------------------------------------------------------ lock
    @property
    def lock_path(self) -> pathlib.Path:
        """DIR/.lock"""
        return self.path / self.LOCK

    def acquire_lock(self) -> None:
        """Makes this process the run's one writer, or raises WorkdirLockedError naming the
        holder. A lock left by a dead process on this host is taken over with a warning."""
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_json(self.lock_path, damaged_as_missing=True)
                if holder and holder.get("host") == me["host"] and holder.get("pid") == me["pid"]:
                    return  # this process holds it already
                if holder and (holder.get("host") != me["host"] or _alive(holder.get("pid"))):
                    since = time.strftime(
                        "%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0))
                    )
                    raise WorkdirLockedError(
                        f"{self.path} is in use by process {holder.get('pid')} on "
                        f"{holder.get('host')} (since {since}); wait for it to finish or use "
                        f"another --workdir (if that process is gone, delete {self.lock_path})"
                    ) from None
                log.warning(
                    "taking over the lock of %s from process %s, which is no longer running",
                    self.path,
                    holder.get("pid") if holder else "unknown",
                )
                self.lock_path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            _HELD_LOCKS.add(self.lock_path)
            return
        raise WorkdirLockedError(
            f"could not take the lock {self.lock_path}; another process keeps taking it"
        )

    def release_lock(self) -> None:
        """Removes the lock if this process holds it."""
        holder = read_json(self.lock_path, damaged_as_missing=True)
        if (
            holder
            and holder.get("pid") == os.getpid()
            and holder.get("host") == socket.gethostname()
        ):
            self.lock_path.unlink(missing_ok=True)
        _HELD_LOCKS.discard(self.lock_path)


def _alive(pid) -> bool:
    """True when a process with this pid exists on this host."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def as_workdir(path_or_workdir: str | pathlib.Path | Workdir) -> Workdir:
    """A ``Workdir`` for a path, or the given ``Workdir`` itself.

    Args:
      path_or_workdir: a path (str or pathlib.Path) or a Workdir.

    Returns:
      The Workdir.
    """
    return path_or_workdir if isinstance(path_or_workdir, Workdir) else Workdir(path_or_workdir)
