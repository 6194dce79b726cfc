"""Devices and processes: the meshes, the shardings training uses, and the process layout.

One named axis, ``data``: params and data sets are replicated, batches are split along it,
and XLA inserts the gradient all-reduce. No pmap: the same jit program runs on any number
of devices — and, after ``initialize_distributed``, of processes — and gives the same
numbers for the same global batch.

A population of runs (``cvae.training.population``) adds a ``member`` axis: the mesh is
``(member, data)``, members' stacked states are split along ``member`` and each member's
batch along ``data`` (``make_population_mesh``, ``member_sharded``).

Several processes (hosts) run the same program on JAX's own multi-controller runtime: every
process executes every jitted call, the mesh spans the devices of all of them, and
``jax.devices()`` lists them process by process, so process p's devices hold the p-th
contiguous slice of each batch. Only the primary process (index 0) writes files.
"""

from __future__ import annotations

import logging
import math

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger("cvae")


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    heartbeat_timeout_s: int = 100,
) -> None:
    """Joins JAX's multi-process runtime; call it before anything touches a device.

    Arguments left as None are filled in by JAX from the cluster's environment (SLURM,
    Open MPI, Cloud TPU, Kubernetes, or ``JAX_COORDINATOR_ADDRESS``). A process that stops
    sending heartbeats for ``heartbeat_timeout_s`` seconds is declared dead and the others
    terminate instead of waiting for it forever.
    """
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"--num_processes = {num_processes} must be at least 1")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(
            f"--process_id = {process_id} must lie in [0, {num_processes}); "
            "each process of a run needs its own id"
        )
    if heartbeat_timeout_s < 1:
        raise ValueError(f"--heartbeat_timeout_s = {heartbeat_timeout_s} must be at least 1")
    try:
        jax.distributed.initialize(
            coordinator_address,
            num_processes,
            process_id,
            heartbeat_timeout_seconds=heartbeat_timeout_s,
        )
    except ValueError as err:  # JAX found no cluster and was given too little to go on
        raise ValueError(
            f"could not join a multi-process run: {str(err).rstrip('.')}. Pass "
            "--coordinator_address, --num_processes and --process_id, or run "
            "under a cluster manager JAX recognises (SLURM, Open MPI, Cloud TPU)"
        ) from None
    log.info(
        "process %d of %d; %d local and %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def is_primary() -> bool:
    """True in the one process that writes files (all of them in a single-process run)."""
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """True in every process when ``flag`` is true in any: processes take a decision together
    (a SIGTERM delivered to one host still stops them all at the same epoch)."""
    if jax.process_count() == 1:
        return bool(flag)
    flags = multihost_utils.process_allgather(np.asarray(int(bool(flag)), np.int32))
    return bool(np.any(flags))


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier ``name`` (nothing to wait for alone)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D ``data`` mesh over the first ``num_devices`` devices (0 = all of them)."""
    devices = jax.devices()
    if num_devices > len(devices):
        raise ValueError(
            f"train.num_devices = {num_devices} but only {len(devices)} devices "
            f"are visible ({devices[0].platform}); use 0 for all of them"
        )
    if jax.process_count() > 1 and num_devices not in (0, len(devices)):
        raise ValueError(
            f"train.num_devices = {num_devices}: a run of {jax.process_count()} "
            f"processes uses all {len(devices)} global devices; set it to 0"
        )
    chosen = devices[:num_devices] if num_devices else devices
    return Mesh(np.asarray(chosen), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device of ``mesh`` holds the whole array (params, data sets, keys)."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The leading (example) axis is split along ``data``: each device holds a slice."""
    return NamedSharding(mesh, P("data"))


def replicate(tree, mesh: Mesh):
    """Copies every leaf of ``tree`` (host arrays, local jax arrays, PRNG keys) to all devices
    of ``mesh``. Each process supplies the copies for its own devices, so this also works
    where the mesh spans processes (there ``jax.device_put`` refuses local arrays); every
    process must pass the same values.
    """
    return place(tree, replicated(mesh))


def make_population_mesh(num_members: int, num_devices: int = 0) -> Mesh:
    """A 2-D ``(member, data)`` mesh for a population (``cvae.training.population``).

    Of the ``num_devices`` devices (0 = all), gcd(devices, members) go to the ``member``
    axis — each holds whole members — and the rest split every member's batch along
    ``data``. Devices are listed process by process, so with at least as many members as
    processes, each process holds its members whole.
    """
    chosen = make_mesh(num_devices).devices.reshape(-1)
    members = math.gcd(len(chosen), num_members)
    return Mesh(chosen.reshape(members, len(chosen) // members), ("member", "data"))


def member_sharded(mesh: Mesh) -> NamedSharding:
    """The leading (member) axis is split along ``member``; replicated along ``data``."""
    return NamedSharding(mesh, P("member"))


def place(tree, sharding: NamedSharding):
    """Every leaf of ``tree`` (host arrays, local jax arrays, PRNG keys) as a global array
    with ``sharding``; each process supplies its own devices' pieces (every process must
    pass the same values)."""

    def place_leaf(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            raw = place_leaf(jax.random.key_data(x))
            return jax.jit(
                jax.random.wrap_key_data, static_argnames="impl", out_shardings=sharding
            )(raw, impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(place_leaf, tree)


def chunk_sharded(mesh: Mesh) -> NamedSharding:
    """A chunk of batches (steps × batch × …): the batch axis split along ``data``."""
    return NamedSharding(mesh, P(None, "data"))


def place_local_rows(local, mesh: Mesh, global_batch: int):
    """A chunk of which this process read only its own rows of every batch, as one global
    array split along ``data`` (``jax.make_array_from_process_local_data``)."""
    local = np.asarray(local)
    global_shape = (local.shape[0], global_batch) + local.shape[2:]
    return jax.make_array_from_process_local_data(chunk_sharded(mesh), local, global_shape)


def process_rows(global_batch: int) -> slice:
    """This process's rows of every global batch: the slice its devices hold along
    ``data`` (processes list their devices in order, each an equal share)."""
    share = global_batch // jax.process_count()
    return slice(jax.process_index() * share, (jax.process_index() + 1) * share)


def shard_batch(host_batch, mesh: Mesh):
    """A host batch as one global array split along ``data`` (every process passes the
    same batch and supplies the slices of its own devices, as ``replicate`` does)."""
    host = np.asarray(host_batch)
    return jax.make_array_from_callback(host.shape, batch_sharded(mesh), lambda index: host[index])
