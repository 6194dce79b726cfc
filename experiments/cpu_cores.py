"""One XLA:CPU device per core, for work that splits into independent pieces.

XLA runs a CPU program as one device whose small matmuls and elementwise loops use the
cores unevenly; split into one device per core, a batch sharded along ``data`` runs a
whole slice on each core with nothing to synchronise: the importance-sampled NLL runs
faster so (docs/performance.md, Evaluation). A single training run is *not* split this
way: its gradient all-reduce made two host devices slower than one. A sweep's population
is (experiments.sweep): its members spread over the devices with nothing to synchronise.

``split_host_into_cores()`` must run before jax is imported; it changes nothing when
``XLA_FLAGS`` already sets a device count, and only the CPU backend is affected (on a GPU
machine the GPUs stay the default devices).
"""

import os


def split_host_into_cores() -> None:
    """Adds ``--xla_force_host_platform_device_count=<usable cores>`` to ``XLA_FLAGS``."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cores and cores > 1:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={cores}".strip()
