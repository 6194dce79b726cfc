"""Meshes and placement (cvae.parallel) on the suite's 8 simulated CPU devices; the
multi-process paths run in tests/training/test_scale_out.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cvae import parallel

pytestmark = pytest.mark.unit


def test_a_data_mesh_takes_the_first_devices_and_refuses_more_than_exist():
    assert parallel.make_mesh().size == jax.device_count() == 8
    mesh = parallel.make_mesh(2)
    assert mesh.axis_names == ("data",)
    assert list(mesh.devices) == jax.devices()[:2]
    with pytest.raises(ValueError, match="only 8 devices are visible"):
        parallel.make_mesh(9)


@pytest.mark.parametrize(
    ("members", "devices", "shape"),
    [(4, 8, (4, 2)), (8, 8, (8, 1)), (3, 8, (1, 8)), (6, 4, (2, 2)), (1, 2, (1, 2))],
)
def test_a_population_mesh_gives_whole_members_to_gcd_devices(members, devices, shape):
    mesh = parallel.make_population_mesh(members, devices)
    assert mesh.axis_names == ("member", "data")
    assert mesh.devices.shape == shape


def test_replicate_copies_every_leaf_keys_included_to_every_device():
    mesh = parallel.make_mesh(4)
    tree = {"w": np.arange(6.0).reshape(2, 3), "key": jax.random.key(3), "step": 7}
    placed = parallel.replicate(tree, mesh)
    for leaf in jax.tree_util.tree_leaves(placed):
        assert leaf.sharding.is_equivalent_to(parallel.replicated(mesh), leaf.ndim)
        assert len(leaf.addressable_shards) == 4
    np.testing.assert_array_equal(placed["w"], tree["w"])
    np.testing.assert_array_equal(
        jax.random.key_data(placed["key"]), jax.random.key_data(tree["key"])
    )
    assert jax.random.key_impl(placed["key"]) == jax.random.key_impl(tree["key"])


def test_a_sharded_batch_splits_its_rows_evenly_and_keeps_their_order():
    mesh = parallel.make_mesh(4)
    batch = np.arange(8 * 3).reshape(8, 3)
    sharded = parallel.shard_batch(batch, mesh)
    assert [s.data.shape for s in sharded.addressable_shards] == [(2, 3)] * 4
    np.testing.assert_array_equal(np.asarray(sharded), batch)
    np.testing.assert_array_equal(
        np.concatenate([np.asarray(s.data) for s in sharded.addressable_shards]), batch
    )


def test_member_sharding_places_whole_members_on_each_row_of_the_mesh():
    mesh = parallel.make_population_mesh(4, 8)  # 4 × 2
    stacked = np.arange(4 * 5).reshape(4, 5)
    placed = parallel.place(stacked, parallel.member_sharded(mesh))
    for shard in placed.addressable_shards:
        assert shard.data.shape == (1, 5)  # one member, replicated along ``data``
        np.testing.assert_array_equal(shard.data, stacked[shard.index])


def test_local_rows_of_a_chunk_become_the_global_chunk_in_one_process():
    mesh = parallel.make_mesh(8)
    chunk = np.arange(3 * 16 * 2).reshape(3, 16, 2)  # steps × batch × features
    rows = parallel.process_rows(16)
    assert rows == slice(0, 16)  # one process reads every row
    placed = parallel.place_local_rows(chunk[:, rows], mesh, 16)
    assert placed.shape == (3, 16, 2)
    assert placed.sharding.is_equivalent_to(parallel.chunk_sharded(mesh), 3)
    np.testing.assert_array_equal(placed, chunk)


def test_a_sharded_computation_equals_the_one_device_computation():
    x = np.random.default_rng(0).normal(size=(16, 5)).astype(np.float32)
    w = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
    mesh = parallel.make_mesh(8)
    f = jax.jit(lambda x, w: jnp.tanh(x @ w).sum(0))
    sharded = f(parallel.shard_batch(x, mesh), parallel.replicate(w, mesh))
    np.testing.assert_allclose(sharded, f(x, w), rtol=1e-6)


def test_one_process_is_primary_and_its_flags_are_its_own():
    assert parallel.is_primary()
    assert parallel.any_process(True) and not parallel.any_process(False)
