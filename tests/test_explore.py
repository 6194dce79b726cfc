import numpy as np
import pytest

import cvae
from cvae import data, explore, train
from tests.conftest import make_test_config


@pytest.fixture(scope="module")
def run_2d(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two_d")
    cfg = make_test_config(**{"model.latent_dim": 2, "model.posterior": "gaussian",
                              "train.num_epochs": 3})
    train.train_and_evaluate(cfg, workdir)
    return cvae.load_run(workdir)


def test_projections_are_2d_and_pca_keeps_the_top_variance_directions():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(200, 5)) * np.array([5.0, 3.0, 0.1, 0.1, 0.1])
    pca = explore.project_2d(codes, "pca")
    assert pca.shape == (200, 2)
    np.testing.assert_allclose(np.var(pca, axis=0), np.var(codes[:, :2], axis=0), rtol=0.1)
    assert explore.project_2d(codes[:60], "tsne").shape == (60, 2)
    with pytest.raises(ValueError, match="pca"):
        explore.project_2d(codes, "umap")


def test_traversal_changes_only_with_the_traversed_dimension(run_2d):
    x = data.load("digits", "test").images[0].astype(np.float32) / 255
    grid = explore.traversal(run_2d, x, dims=[0, 1], values=[-2.0, 0.0, 2.0])
    assert grid.shape == (2, 3, 8, 8, 1)
    assert not np.allclose(grid[0, 0], grid[0, 2])


def test_manifold_grid_decodes_a_regular_grid(run_2d):
    grid = explore.manifold_grid(run_2d, n=5)
    assert grid.shape == (5, 5, 8, 8, 1)
    np.testing.assert_allclose(grid[2, 2], run_2d.mean_image(np.zeros((1, 2)))[0], atol=1e-5)


def test_diagnostics_and_summaries(run_2d):
    images = data.load("digits", "test").images[:100].astype(np.float32) / 255
    diag = explore.posterior_diagnostics(run_2d, images)
    assert diag["kl_per_dim"].shape == (2,) and np.all(diag["kl_per_dim"] >= 0)
    assert 0 <= diag["active_units"] <= 2
    row = explore.run_summary(run_2d.workdir)
    assert row["posterior"] == "gaussian" and row["epochs"] == 3
    assert row["params"] == run_2d.num_params  # from checkpoint metadata
    curves = explore.learning_curves(run_2d.workdir)
    assert curves["epoch"] == [1, 2, 3]
    assert run_2d.num_params > 0
