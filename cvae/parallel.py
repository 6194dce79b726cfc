"""The device mesh and the two shardings training uses: replicated and batch-sharded.

One named axis, ``data``: params and data sets are replicated, batches are split along it,
and XLA inserts the gradient all-reduce. No pmap: the same jit program runs on any number
of devices and gives the same numbers for the same global batch.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D ``data`` mesh over the first ``num_devices`` devices (0 = all of them)."""
    devices = jax.devices()
    if num_devices > len(devices):
        raise ValueError(f"train.num_devices = {num_devices} but only {len(devices)} devices "
                         f"are visible ({devices[0].platform}); use 0 for all of them")
    chosen = devices[:num_devices] if num_devices else devices
    return Mesh(np.asarray(chosen), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))
