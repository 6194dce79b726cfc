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
