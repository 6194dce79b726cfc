"""An evaluation's partial scores, kept between batches, so that a long evaluation (K = 1000
over a test set on a CPU: hours) resumes where a kill or a Ctrl-C stopped it.

After each batch the evaluation core writes what it has summed so far — the next batch,
the float64 sums and the codes' running moments — to one ``.npz`` file, atomically (a
temporary file renamed over the old one: a kill leaves the previous batch's file whole).
The file names the evaluation it belongs to (its ``key``: the examples, batch, K, chunk,
device count and a digest of the parameters); a rerun of the same evaluation continues
from it, any other evaluation ignores it (with a warning) and overwrites it. Every
batch's draws come from its index alone, so the resumed evaluation adds the same numbers
in the same order as one never stopped: its scores are bitwise the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib

import jax
import numpy as np

from cvae.evaluation.metrics import RunningMoments
from cvae.faults import fault_point

log = logging.getLogger("cvae")


def params_digest(params) -> str:
    """SHA-256 of every parameter's bytes, in the tree's order: which weights were scored.

    Args:
      params: a tree of arrays.

    Returns:
      The hex digest.
    """
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(params):
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()


@dataclasses.dataclass
class Partial:
    """What the batches before ``next_batch`` added up to."""

    next_batch: int
    sums: dict[str, float]
    moments: RunningMoments


class PartialScores:
    """The partial-scores file of one evaluation (see the module docstring).

    Args:
      path: the ``.npz`` file.
      key: what identifies the evaluation (JSON-serialisable).
    """

    def __init__(self, path: str | pathlib.Path, key: dict):
        self.path = pathlib.Path(path)
        self.key = json.loads(json.dumps(key, sort_keys=True))  # as it reads back

    def load(self) -> Partial | None:
        """The saved progress of this evaluation.

        Returns:
          It, or None: no file, another evaluation's, or one that cannot be read (each of
          the last two said in a warning).
        """
        if not self.path.exists():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as saved:
                meta = json.loads(str(saved["meta"]))
                mean, squares = saved["mean"], saved["squares"]
        except Exception as err:  # noqa: BLE001 - a truncated or foreign file: start over
            log.warning("ignoring unreadable partial scores %s (%s)", self.path, err)
            return None
        if meta.get("key") != self.key:
            log.warning(
                "ignoring partial scores %s: they belong to another evaluation (%s)",
                self.path,
                ", ".join(
                    name
                    for name in sorted(self.key)
                    if meta.get("key", {}).get(name) != self.key[name]
                ),
            )
            return None
        moments = RunningMoments()
        moments.count = int(meta["count"])
        moments.mean = mean if mean.ndim else float(mean)
        moments.squares = squares if squares.ndim else float(squares)
        return Partial(int(meta["next_batch"]), dict(meta["sums"]), moments)

    def save(self, partial: Partial) -> None:
        """Writes the progress over the file, atomically.

        Args:
          partial: the batches done and what they added up to.
        """
        meta = {
            "key": self.key,
            "next_batch": partial.next_batch,
            "sums": partial.sums,  # Python floats: JSON writes them exactly (repr)
            "count": partial.moments.count,
        }
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        with open(temporary, "wb") as stream:
            np.savez(
                stream,
                meta=np.array(json.dumps(meta)),
                mean=np.asarray(partial.moments.mean, np.float64),
                squares=np.asarray(partial.moments.squares, np.float64),
            )
            stream.flush()
            os.fsync(stream.fileno())
        fault_point("partial_scores_save")  # the crash tests' kill before the rename
        os.replace(temporary, self.path)
