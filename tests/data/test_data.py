import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cvae import data
from tests.helpers import mnist_data_dir, requires_mnist

pytestmark = pytest.mark.unit


@requires_mnist
def test_mnist_from_tfds_has_the_known_shape_and_labels():
    train = data.load("mnist", "train", mnist_data_dir())
    test = data.load("mnist", "test", mnist_data_dir())
    assert train.images.shape == (60000, 28, 28, 1) and len(test) == 10000
    assert train.images.dtype == np.uint8 and train.images.max() == 255
    assert train.info.shape == (28, 28, 1) and train.info.num_classes == 10
    assert train.info.pixel_range == (0.0, 255.0)
    assert set(np.unique(test.labels)) == set(range(10))


def test_digits_loads_offline_with_a_fixed_split():
    train = data.load("digits", "train")
    test = data.load("digits", "test")
    assert train.images.shape == (1500, 8, 8, 1) and test.images.shape == (297, 8, 8, 1)
    assert train.images.dtype == np.uint8 and train.images.max() == 255
    assert train.info.num_classes == 10
    np.testing.assert_array_equal(data.load("digits", "train").images, train.images)


def test_digits_are_scikit_learns_images_in_the_documented_split():
    """The file is read without importing scikit-learn; the arrays are load_digits()'s."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(0).permutation(len(bunch.images))
    for split, rows in (("train", order[:1500]), ("test", order[1500:])):
        got = data.load("digits", split)
        want = np.round(bunch.images[rows] * 255.0 / 16.0).astype(np.uint8)[..., None]
        np.testing.assert_array_equal(got.images, want)
        np.testing.assert_array_equal(got.labels, bunch.target[rows])


def test_epoch_permutation_is_a_permutation_fixed_by_key_and_epoch():
    key = jax.random.key(3)
    p = np.asarray(data.epoch_permutation(key, 5, 1000))
    np.testing.assert_array_equal(np.sort(p), np.arange(1000))
    np.testing.assert_array_equal(p, data.epoch_permutation(key, 5, 1000))
    assert not np.array_equal(p, data.epoch_permutation(key, 6, 1000))
    assert not np.array_equal(p, data.epoch_permutation(jax.random.key(4), 5, 1000))


def test_dynamic_binarization_matches_intensity_and_changes_each_draw():
    intensities = jnp.linspace(0.0, 1.0, 11)
    x = jnp.broadcast_to(intensities, (20000, 11))
    first = data.dynamic_binarize(jax.random.key(0), x)
    second = data.dynamic_binarize(jax.random.key(1), x)
    assert set(np.unique(first)) <= {0.0, 1.0}
    np.testing.assert_allclose(first.mean(axis=0), intensities, atol=0.015)
    assert not np.array_equal(first, second)


@pytest.mark.slow
def test_dynamic_binarization_is_exact_at_the_ends_and_unbiased_at_every_grey_level():
    levels = jnp.arange(256, dtype=jnp.float32) / 255  # every 8-bit intensity
    draws = data.dynamic_binarize(jax.random.key(2), jnp.broadcast_to(levels, (40000, 256)))
    frequency = np.asarray(draws.mean(axis=0))
    assert frequency[0] == 0.0 and frequency[-1] == 1.0
    # 16-bit uniforms bias P(1) by < 2⁻¹⁶; with 40,000 draws per level, 5σ at p = ½ is
    # 0.0125 (a 1-in-10⁴ chance that any of the 256 levels strays that far by luck).
    np.testing.assert_allclose(frequency, levels, atol=0.0125)
    # Odd pixel counts and image-shaped batches draw the same way, and shapes survive.
    odd = data.dynamic_binarize(jax.random.key(0), jnp.full((3, 5, 5, 1), 0.5))
    assert odd.shape == (3, 5, 5, 1) and set(np.unique(odd)) == {0.0, 1.0}


def test_evaluation_binarization_is_fixed():
    images = np.random.default_rng(5).random((50, 4, 4, 1)).astype(np.float32)
    a = data.fixed_binarization(images)
    np.testing.assert_array_equal(a, data.fixed_binarization(images))
    expected = np.random.default_rng(0).random((50, 16)) < images.reshape(50, 16)
    np.testing.assert_array_equal(a.reshape(50, 16), expected)


def test_evaluation_binarization_of_row_ranges_equals_the_whole_split():
    """Evaluation reads a split batch by batch: rows a…b binarized from row a must be the
    whole split's binarization of those rows, bit for bit."""
    images = np.random.default_rng(5).random((50, 4, 4, 1)).astype(np.float32)
    whole = data.fixed_binarization(images)
    for start, stop in ((0, 7), (7, 8), (13, 50), (49, 50)):
        np.testing.assert_array_equal(
            data.fixed_binarization(images[start:stop], first_row=start), whole[start:stop]
        )
    assert not np.array_equal(data.fixed_binarization(images[13:20]), whole[13:20])


def test_class_balanced_sampling_equalises_an_imbalanced_set():
    labels = np.concatenate([np.zeros(900), np.ones(90), np.full(10, 2)]).astype(np.int32)
    table = data.ClassTable.from_labels(labels, 3)
    idx = np.asarray(
        data.class_balanced_indices(jax.random.key(0), table.indices, table.counts, 3000)
    )
    counts = np.bincount(labels[idx], minlength=3)
    np.testing.assert_array_equal(counts, [1000, 1000, 1000])
    # The rare class is oversampled by cycling through all of its members.
    assert set(idx[labels[idx] == 2]) == set(np.flatnonzero(labels == 2))
    other = np.asarray(
        data.class_balanced_indices(jax.random.key(1), table.indices, table.counts, 3000)
    )
    assert not np.array_equal(idx, other)


def test_validation_split_is_fixed_and_disjoint():
    full = data.load("digits", "train")
    train, val = data.split_validation(full, 200)
    assert len(train) == 1300 and len(val) == 200
    again, val_again = data.split_validation(full, 200)
    np.testing.assert_array_equal(val.images, val_again.images)
    with pytest.raises(ValueError, match="validation_size"):
        data.split_validation(full, 1500)


def test_missing_tfds_dataset_gives_one_clear_error(tmp_path):
    with pytest.raises(data.DatasetNotPreparedError) as err:
        data.load("mnist", "train", str(tmp_path))
    message = str(err.value)
    assert "'mnist'" in message and str(tmp_path) in message and "tfds build mnist" in message


@requires_mnist
def test_tfds_split_strings_slice_and_sum():
    train = data.load("mnist", "train", mnist_data_dir())
    test = data.load("mnist", "test", mnist_data_dir())
    picked = data.load("mnist", "train[:10%]+test[-100:]", mnist_data_dir())
    np.testing.assert_array_equal(
        picked.images, np.concatenate([train.images[:6000], test.images[-100:]])
    )
    np.testing.assert_array_equal(
        picked.labels, np.concatenate([train.labels[:6000], test.labels[-100:]])
    )
    with pytest.raises(data.SplitError, match="its splits are 'test', 'train'"):
        data.load("mnist", "validation", mnist_data_dir())


@pytest.mark.parametrize("name", ["digits", "npz"])
def test_every_source_takes_tfds_split_strings(name, tmp_path):
    if name == "npz":
        rng = np.random.default_rng(0)
        name = f"npz:{tmp_path / 'set.npz'}"
        np.savez(
            tmp_path / "set.npz",
            x=rng.integers(0, 256, (50, 4, 4), dtype=np.uint8),
            y=np.arange(50) % 5,
            x_test=rng.integers(0, 256, (20, 4, 4), dtype=np.uint8),
            y_test=np.arange(20) % 5,
        )
    train, test = data.load(name, "train"), data.load(name, "test")
    picked = data.load(name, "train[:10]+test[50%:]")
    np.testing.assert_array_equal(
        picked.images, np.concatenate([train.images[:10], test.images[len(test) // 2 :]])
    )
    np.testing.assert_array_equal(
        picked.labels, np.concatenate([train.labels[:10], test.labels[len(test) // 2 :]])
    )
    with pytest.raises(data.SplitError) as err:
        data.load(name, "validation")
    assert "'validation'" in str(err.value) and "its splits are 'test', 'train'" in str(err.value)
    with pytest.raises(data.SplitError, match="cannot read split 'train\\[:abc\\]'"):
        data.load(name, "train[:abc]")
    with pytest.raises(data.SplitError, match="selects no examples"):
        data.load(name, "train[5:5]")


def test_a_config_names_the_split_of_each_role(tmp_path):
    from ml_collections import config_dict

    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "set.npz",
        x=rng.integers(0, 256, (50, 4, 4), dtype=np.uint8),
        x_val=rng.integers(0, 256, (7, 4, 4), dtype=np.uint8),
        x_test=rng.integers(0, 256, (9, 4, 4), dtype=np.uint8),
    )
    cfg = config_dict.ConfigDict(
        {
            "name": f"npz:{tmp_path / 'set.npz'}",
            "data_dir": None,
            "train_split": "train[:40]",
            "validation_split": "val",
            "test_split": "test+val",
            "validation_size": 0,
        }
    )
    assert [len(data.load_role(cfg, r)) for r in ("train", "validation", "test")] == [40, 7, 16]
    assert len(data.load_role(cfg, "train[40:]")) == 10  # any other string is a split itself
    cfg.validation_split, cfg.validation_size = "", 5  # carved from the train split
    carved = data.load_role(cfg, "validation")
    expected = data.split_validation(data.load_role(cfg, "train"), 5)[1]
    np.testing.assert_array_equal(carved.images, expected.images)


def test_center_crop_and_resize():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 10, 14, 3), dtype=np.uint8)
    np.testing.assert_array_equal(data.transform_images(images, 6, 0), images[:, 2:8, 4:10])
    rows, cols = np.mgrid[0:8, 0:8]
    small = (40 + 20 * rows + 10 * cols).astype(np.uint8)[None, ..., None]  # a smooth ramp
    doubled = np.repeat(np.repeat(small, 2, axis=1), 2, axis=2)
    back = data.transform_images(doubled, 0, 8)
    assert back.shape == (1, 8, 8, 1) and back.dtype == np.uint8
    assert np.abs(back.astype(int) - small)[:, 1:-1, 1:-1].max() <= 3  # the ramp, inside
    flat = np.full((1, 20, 30, 3), 77, np.uint8)
    np.testing.assert_array_equal(data.transform_images(flat, 18, 9), np.full((1, 9, 9, 3), 77))
    with pytest.raises(ValueError, match="data.center_crop = 11 is larger than the 10×14"):
        data.transform_images(images, 11, 0)


def test_a_config_crops_and_resizes_every_split_it_reads(tmp_path):
    from ml_collections import config_dict

    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "set.npz",
        x=rng.integers(0, 256, (6, 12, 10, 3), dtype=np.uint8),
        x_test=rng.integers(0, 256, (4, 12, 10, 3), dtype=np.uint8),
    )
    cfg = config_dict.ConfigDict(
        {
            "name": f"npz:{tmp_path / 'set.npz'}",
            "data_dir": None,
            "train_split": "train",
            "validation_split": "",
            "test_split": "test",
            "validation_size": 2,
            "center_crop": 8,
            "resize": 4,
        }
    )
    for role, n in (("train", 6), ("validation", 2), ("test", 4)):
        loaded = data.load_role(cfg, role)
        assert loaded.images.shape == (n, 4, 4, 3) and loaded.info.shape == (4, 4, 3)


def test_npz_roundtrip_and_test_split(tmp_path):
    path = tmp_path / "mine.npz"
    x = np.random.default_rng(0).integers(0, 256, (20, 5, 6), dtype=np.uint8)
    np.savez(path, x=x, y=np.arange(20) % 4, x_test=x[:3])
    train = data.load(f"npz:{path}", "train")
    assert train.images.shape == (20, 5, 6, 1) and train.info.num_classes == 4
    assert data.load(f"npz:{path}", "test").labels is None


@pytest.mark.parametrize(
    "arrays,pattern",
    [
        ({"images": np.zeros((2, 4, 4))}, r"no array 'x'"),
        ({"x": np.zeros((2, 4))}, r"N×H×W"),
        ({"x": np.full((2, 4, 4), 3.0)}, r"\[0, 1\]"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.zeros(3, int)}, r"2 integer labels"),
        ({"x": np.zeros((2, 4, 4), np.complex64)}, r"uint8 or float"),
    ],
)
def test_malformed_npz_gives_a_clear_error(tmp_path, arrays, pattern):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=pattern):
        data.load(f"npz:{path}", "train")


def test_unreadable_npz_gives_a_clear_error(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="could not be read"):
        data.load(f"npz:{path}", "train")
    with pytest.raises(ValueError, match="no such file"):
        data.load(f"npz:{tmp_path / 'absent.npz'}", "train")
