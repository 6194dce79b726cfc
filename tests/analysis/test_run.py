"""``load_run`` and ``Run`` without the run's data: loading, decoding and sampling need only
the workdir; reading inputs or evaluating needs the data and says so in one line."""

import numpy as np
import pytest

import cvae
from cvae import data, training
from tests.helpers import make_test_config

pytestmark = pytest.mark.slow


def test_a_run_loads_decodes_and_samples_without_its_data_set(tmp_path):
    digits = data.load("digits", "train")
    test = data.load("digits", "test")
    archive = tmp_path / "digits.npz"
    np.savez(archive, x=digits.images, y=digits.labels, x_test=test.images, y_test=test.labels)
    config = make_test_config(**{"data.name": f"npz:{archive}", "train.num_epochs": 1})
    training.train_and_evaluate(config, tmp_path / "run")
    mixture_samples = cvae.load_run(tmp_path / "run").sample(0, 4, "gmm")  # fitted, saved
    archive.unlink()  # the data set is gone, as on a machine that never prepared it

    run = cvae.load_run(tmp_path / "run")
    assert run.info.shape == (8, 8, 1) and run.info.num_classes == 10
    assert run.sample(0, 4, "prior").shape == (4, 8, 8, 1)
    np.testing.assert_array_equal(run.sample(0, 4, "gmm"), mixture_samples)
    assert run.encode(test.images[:2])[0].shape == (2, 4)
    # What needs the data says which set is missing, in one line.
    for needs_data in (lambda: run.inputs("test", 4), lambda: run.sample(0, 4, "flow")):
        with pytest.raises(ValueError, match=r"npz data set .*digits\.npz.*no such file"):
            needs_data()


def test_a_tokenizer_run_encodes_to_maps_decodes_them_and_reports_sigma0_relative(tmp_path):
    """A collapsed tokenizer (4×4×2 code maps of the digits): ``encode`` gives maps,
    ``decode`` takes them (or flat codes) and refuses another shape in one line, the
    evaluation reports σ₀ relative to the codes' spread, the gmm fits the flattened codes,
    and the explorer shows each channel as an image."""
    from cvae.analysis import explore

    config = make_test_config(
        **{"model.arch": "conv_map", "model.conv_channels": (8,), "model.code_channels": 2}
    )
    training.train_and_evaluate(config, tmp_path / "run")
    run = cvae.load_run(tmp_path / "run")
    x, _ = run.inputs("test", 5)
    maps, log_var = run.encode(x)
    flat, _ = run.encode(x, flat=True)
    assert maps.shape == (5, 4, 4, 2) and log_var is None and flat.shape == (5, 32)
    np.testing.assert_array_equal(np.asarray(maps).reshape(5, -1), flat)
    np.testing.assert_array_equal(run.decode(maps), run.decode(flat))
    with pytest.raises(ValueError, match=r"\(5, 4, 4, 3\).*…×4×4×2 or flat …×32"):
        run.decode(np.zeros((5, 4, 4, 3), np.float32))
    channels = explore.code_map_channels(run, x)
    assert channels.shape == (5, 2, 4, 4)
    np.testing.assert_array_equal(channels[:, 1], np.asarray(maps)[..., 1])

    scores = run.evaluate("test", k=5)
    assert scores["code_std"] > 0
    assert scores["sigma0_relative"] == pytest.approx(0.01 / scores["code_std"])
    assert run.sample(0, 4, "gmm").shape == (4, 8, 8, 1)
