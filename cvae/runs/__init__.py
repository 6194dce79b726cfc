"""Runs on disk: the run directory's layout, its checkpoints, its metric and image writers,
its provenance record, the lock that keeps one writer per directory, and atomic writes.

* ``workdir``: ``Workdir``, the one place that spells a file name; the lock; atomic writes;
* ``checkpoint``: the only module that talks to orbax (save, restore, quarantine);
* ``writers``: ``metrics.jsonl``, TensorBoard events, PNG grids;
* ``provenance``: the code commit, library versions and machine of a run.

This package imports, of cvae, only the bottom layers (``config``, ``faults``,
``parallel``, ``models``): training, evaluation and analysis build on it.
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
