"""Runs on disk: the run directory's layout, its checkpoints, its metric and image writers,
its provenance record, the lock that keeps one writer per directory, and atomic writes.

* ``workdir``: ``Workdir``, the one place that spells a file name; the lock; atomic writes;
* ``checkpoint``: the only module that talks to orbax (save, restore, quarantine);
* ``writers``: ``metrics.jsonl``, TensorBoard events, PNG grids;
* ``provenance``: the code commit, library versions and machine of a run;
* ``restore``: a trained run's config, params and model from its workdir (``restore``), and
  the finished members of a sweep directory.

This package imports, of cvae, only the layers beneath it (``errors``, ``faults``,
``parallel``, ``models``, ``config``, ``data``): evaluation, training and analysis build on it.
"""

from cvae.runs.workdir import (
    RunNotFoundError,
    Workdir,
    WorkdirLockedError,
    as_workdir,
    read_json,
    write_json_atomic,
    write_text_atomic,
)

__all__ = [
    "RunNotFoundError",
    "Workdir",
    "WorkdirLockedError",
    "as_workdir",
    "read_json",
    "write_json_atomic",
    "write_text_atomic",
]
