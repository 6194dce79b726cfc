import jax
import numpy as np
import pytest

import cvae
from cvae import data, training
from cvae.analysis import compare, explore
from tests.helpers import make_test_config

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def run_2d(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two_d")
    cfg = make_test_config(
        **{"model.latent_dim": 2, "model.posterior": "gaussian", "train.num_epochs": 3}
    )
    training.train_and_evaluate(cfg, workdir)
    return cvae.load_run(workdir)


@pytest.fixture(scope="module")
def two_layers(tmp_path_factory):
    """A 3-epoch two-layer run on digits (Gaussian z₁ of 4, z₂ of 2)."""
    workdir = tmp_path_factory.mktemp("two_layers")
    cfg = make_test_config(
        **{
            "model.upper_latent_dims": (2,),
            "model.upper_widths": ((8,),),
            "model.posterior": "gaussian",
            "train.num_epochs": 3,
        }
    )
    training.train_and_evaluate(cfg, workdir)
    return cvae.load_run(workdir)


@pytest.mark.slow
def test_a_layer_traversal_moves_the_layers_below_it(two_layers):
    """Traversing the top layer of a two-layer run changes the images through p(z₁|z₂)
    (its conditional means, or draws with a key); traversing layer 1 is ``traversal``."""
    import jax

    run = two_layers
    test = data.load("digits", "test")
    x = test.images[0].astype(np.float32) / test.info.pixel_range[1]
    values = np.linspace(-3.0, 3.0, 5)
    top = explore.layer_traversal(run, x, 2, [0, 1], values)
    assert top.shape == (2, 5, 8, 8, 1)
    assert np.abs(top[:, 0] - top[:, -1]).max() > 1e-3  # the top layer reaches the image
    np.testing.assert_array_equal(explore.layer_traversal(run, x, 2, [0], values), top[:1])
    drawn = explore.layer_traversal(run, x, 2, [0], values, key=jax.random.key(1))
    assert not np.allclose(drawn, top[:1])
    np.testing.assert_allclose(
        explore.layer_traversal(run, x, 1, [1, 3], values),
        explore.traversal(run, x, [1, 3], values),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="layer must be 1 … 2"):
        explore.layer_traversal(run, x, 3, [0], values)


@pytest.mark.slow
def test_a_top_layer_sampler_draws_the_lower_layers_from_the_model(two_layers, run_2d):
    """``gmm@top``: a mixture fitted to the top layer's codes alone (saved apart from the
    mixture of whole codes); the top layer of its codes comes from it, the layer below
    from p(z₁|z₂). A one-layer run refuses it, naming the sampler to use."""
    import jax

    run, key = two_layers, jax.random.key(3)
    codes = np.asarray(run._sample_from_the_top(key, 6, "gmm@top"))
    top = np.asarray(run.ex_post("gmm", top=True).sample(key, 6))
    assert top.shape == (6, 2) and codes.shape == (6, 6)
    np.testing.assert_array_equal(codes[:, 4:], top)
    drawn = run.model.apply(
        {"params": run.params}, codes, 2, jax.random.fold_in(key, 1), method=run.model.descend
    )
    np.testing.assert_allclose(codes, drawn, atol=1e-6)
    images = run.sample(key, 6, sampler="gmm@top")
    assert images.shape == (6, 8, 8, 1) and np.all(np.isfinite(images))
    assert (run.workdir / "samplers" / "gmm@top").is_dir()
    with pytest.raises(ValueError, match="one stochastic layer: use 'gmm'"):
        run_2d.sample(key, 2, sampler="gmm@top")


@pytest.mark.slow
def test_a_top_groups_sampler_fits_the_top_layers_and_descends_from_below_them(tmp_path):
    """``gmm@top2`` on three layers: one mixture fitted to the top two layers' codes
    (saved as samplers/gmm@top2), its draws the top two layers of the codes, z₁ drawn from
    p(z₁|z₂); a density over every layer, or a malformed count, is refused in one line."""
    import jax

    cfg = make_test_config(
        **{
            "model.upper_latent_dims": (3, 2),
            "model.upper_widths": ((8,), (8,)),
            "model.posterior": "gaussian",
            "train.num_epochs": 1,
        }
    )
    training.train_and_evaluate(cfg, tmp_path)
    run, key = cvae.load_run(tmp_path), jax.random.key(4)
    codes = np.asarray(run._sample_from_the_top(key, 6, "gmm@top2"))
    top = np.asarray(run.ex_post("gmm", top=2).sample(key, 6))
    assert top.shape == (6, 5) and codes.shape == (6, 9)
    np.testing.assert_array_equal(codes[:, 4:], top)
    drawn = run.model.apply(
        {"params": run.params}, codes, 2, jax.random.fold_in(key, 1), method=run.model.descend
    )
    np.testing.assert_allclose(codes, drawn, atol=1e-6)
    assert np.asarray(run.ex_post("gmm", top=1).sample(key, 2)).shape == (2, 2)  # another fit
    images = run.sample(key, 6, sampler="gmm@top2")
    assert images.shape == (6, 8, 8, 1) and np.all(np.isfinite(images))
    assert (run.workdir / "samplers" / "gmm@top2").is_dir()
    with pytest.raises(ValueError, match=r"fits the top 3 layers of 3: use gmm@top to gmm@top2"):
        run.sample(key, 2, sampler="gmm@top3")
    with pytest.raises(ValueError, match=r"^sampler 'gmm@topx': write gmm@top for"):
        run.sample(key, 2, sampler="gmm@topx")


@pytest.mark.slow
def test_layer_resampling_redraws_one_layer_and_temperatures_reach_the_images(two_layers, run_2d):
    """Each row redraws one layer of x's code (every other kept) and decodes it — this run's
    decoder reads z₁ alone, so a redrawn z₂ leaves the images as they were; a one-layer
    run's one row is fresh prior draws. Prior samples at τ = 0 do not depend on the key;
    temperatures that are not one per layer, or for another sampler, are one line each."""
    import jax

    test = data.load("digits", "test")
    x = test.images[0].astype(np.float32) / test.info.pixel_range[1]
    key = jax.random.key(4)
    rows = explore.layer_resampling(two_layers, x, key, num=5)
    assert rows.shape == (2, 5, 8, 8, 1) and np.all(np.isfinite(rows))
    assert np.ptp(rows[0], axis=0).max() > 1e-3 and np.ptp(rows[1], axis=0).max() == 0
    np.testing.assert_array_equal(explore.layer_resampling(two_layers, x, key, 5, [2]), rows[1:])
    one = explore.layer_resampling(run_2d, x, key, num=3)
    z = run_2d.model.apply(
        {"params": run_2d.params}, jax.random.fold_in(key, 1), 3, method=run_2d.model.sample_prior
    )
    np.testing.assert_allclose(one[0], run_2d.mean_image(z), atol=1e-6)
    with pytest.raises(ValueError, match="layers must be 1 … 2, got 3"):
        explore.layer_resampling(two_layers, x, key, 2, [3])
    cold = [two_layers.sample(k, 3, "prior", temperatures=[0.0, 0.0]) for k in (1, 2)]
    np.testing.assert_array_equal(cold[0], cold[1])
    with pytest.raises(ValueError, match="2 finite τ ≥ 0, one per stochastic layer"):
        two_layers.sample(1, 3, "prior", temperatures=[1.0])
    with pytest.raises(ValueError, match="apply to sampler='prior', not 'gmm'"):
        two_layers.sample(1, 3, "gmm", temperatures=[1.0, 1.0])
    with pytest.raises(ValueError, match="apply to sampler='prior', not 'gmm@top'"):
        two_layers.sample(1, 3, "gmm@top", temperatures=[1.0, 1.0])


@pytest.mark.slow
def test_projections_are_2d_and_pca_keeps_the_top_variance_directions():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(200, 5)) * np.array([5.0, 3.0, 0.1, 0.1, 0.1])
    pca = explore.project_2d(codes, "pca")
    assert pca.shape == (200, 2)
    np.testing.assert_allclose(np.var(pca, axis=0), np.var(codes[:, :2], axis=0), rtol=0.1)
    assert explore.project_2d(codes[:60], "tsne").shape == (60, 2)
    assert explore.project_2d(codes[:60], "umap").shape == (60, 2)
    with pytest.raises(ValueError, match="pca"):
        explore.project_2d(codes, "isomap")


@pytest.mark.slow
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
    row = compare.run_summary(run_2d.workdir)
    assert row["posterior"] == "gaussian" and row["epochs"] == 3
    assert row["params"] == run_2d.num_params  # from checkpoint metadata
    curves = compare.learning_curves(run_2d.workdir)
    assert curves["epoch"] == [1, 2, 3]
    assert run_2d.num_params > 0


def test_projected_mixture_density_is_the_exact_marginal():
    from scipy.stats import multivariate_normal

    from cvae import samplers as ex_post

    rng = np.random.default_rng(0)
    codes = rng.normal(size=(400, 3)) @ np.diag([2.0, 1.0, 0.3])
    mixture = ex_post.fit_latent_mixture(codes, num_components=2)
    center, basis = explore.pca_plane(codes)
    xs, ys = np.linspace(-8, 8, 161), np.linspace(-6, 6, 121)
    density = explore.mixture_density_on_plane(mixture, center, basis, xs, ys)
    assert density.sum() * (xs[1] - xs[0]) * (ys[1] - ys[0]) == pytest.approx(1.0, abs=1e-2)
    weights = np.exp(mixture.log_weights)
    point = np.array([0.5, -0.3])
    cov = lambda k: basis @ (mixture.cholesky[k] @ mixture.cholesky[k].T) @ basis.T
    expected = sum(
        w * multivariate_normal((mixture.means[k] - center) @ basis.T, cov(k)).pdf(point)
        for k, w in enumerate(weights)
    )
    got = explore.mixture_density_on_plane(mixture, center, basis, [point[0]], [point[1]])
    assert got[0, 0] == pytest.approx(expected, rel=1e-4)


def test_nearest_training_images_finds_a_copy_and_collapsed_constant():
    rng = np.random.default_rng(0)
    train_images = rng.random((50, 4, 4, 1))
    samples = np.stack([train_images[7], rng.random((4, 4, 1))])
    index, distance = explore.nearest_training_images(samples, train_images)
    assert index[0, 0] == 7 and distance[0, 0] == pytest.approx(0.0, abs=1e-3)
    assert distance[1, 0] > 0.1
    from cvae.models import posteriors

    kl = posteriors.CollapsedPosterior(np.zeros((1, 3)), 0.1).kl_per_dim()
    np.testing.assert_allclose(kl, explore.collapsed_kl_constant(0.1), rtol=1e-5)
    stats = explore.code_statistics(np.array([[1.0, -2.0], [3.0, 2.0]]))
    np.testing.assert_allclose(stats["half_mean_square"], [2.5, 2.0])


def _fake_run(path, seed, sigma0, nll):
    from cvae import config as config_lib
    from cvae.runs.workdir import Workdir

    config = config_lib.base_config()
    config.seed, config.model.sigma0 = seed, sigma0
    wd = Workdir(path)
    wd.write_config(config)
    wd.write_eval({"nll_is": nll, "elbo": -nll - 1.0, "k": 10})
    return path


def test_aggregate_gives_mean_std_and_a_student_t_interval_per_group(tmp_path):
    from scipy import stats

    nll = {0.01: [100.0, 102.0, 104.0], 0.1: [90.0, 91.0]}
    dirs = [
        _fake_run(tmp_path / f"s{s}_{i}", i, s, v)
        for s, values in nll.items()
        for i, v in enumerate(values)
    ]
    dirs.append(_fake_run(tmp_path / "lone", 0, 1.0, 80.0))
    groups = compare.aggregate(dirs, "model.sigma0")
    assert [g["value"] for g in groups] == [0.01, 0.1, 1.0]
    assert [g["n"] for g in groups] == [3, 2, 1]
    mean, std, half = groups[0]["nll_is"]
    low, high = stats.t.interval(0.95, 2, loc=102.0, scale=stats.sem(nll[0.01]))
    assert (mean, std) == pytest.approx((102.0, 2.0)) and half == pytest.approx((high - low) / 2)
    assert np.isnan(groups[2]["nll_is"][2])  # one run: no interval
    with pytest.raises(ValueError, match="did you mean 'model.sigma0'"):
        compare.aggregate(dirs, "model.sigma")


def test_aggregate_groups_by_several_fields_and_keeps_each_layers_scores(tmp_path):
    """A row per combination of the fields' values (tuple fields included), named
    "v1 / v2"; a hierarchy's kl_l and active_units_l from eval.json are aggregated too."""
    from cvae import config as config_lib
    from cvae.runs.workdir import Workdir

    dirs = []
    for i, (family, upper) in enumerate(
        [("gaussian", (0.01,)), ("gaussian", (0.01,)), ("gaussian", (0.1,)), ("collapsed", (0.1,))]
    ):
        config = config_lib.base_config()
        config.seed, config.model.posterior = i, family
        config.model.upper_latent_dims, config.model.upper_widths = (2,), ((8,),)
        config.model.upper_sigma0s = upper
        Workdir(tmp_path / f"r{i}").write_config(config)
        Workdir(tmp_path / f"r{i}").write_eval(
            {"nll_is": 90.0 + i, "kl_1": 3.0 + i, "kl_2": 1.0, "active_units_2": i, "k": 10}
        )
        dirs.append(tmp_path / f"r{i}")
    groups = compare.aggregate(dirs, "model.posterior, model.upper_sigma0s")
    assert [(g["value"], g["n"]) for g in groups] == [
        ("collapsed / 0.1", 1),
        ("gaussian / 0.01", 2),
        ("gaussian / 0.1", 1),
    ]
    assert groups[1]["kl_1"][0] == pytest.approx(3.5)
    assert groups[1]["active_units_2"][0] == pytest.approx(0.5)


def test_layer_grid_places_each_two_layer_run_by_its_layers_posteriors(tmp_path):
    """Rows are z₁'s posterior and columns z₂'s, Gaussian first, then collapsed by
    decreasing σ₀; a cell is its seeds' mean and 95% half-width (NaN without runs or with one
    seed); a one-layer run is refused; the figure is written."""
    from scipy import stats

    from cvae import config as config_lib
    from cvae.runs.workdir import Workdir
    from experiments import cli, report

    runs = [  # (bottom, σ₀ bottom, top, σ₀ top, nll)
        ("gaussian", 0.01, "gaussian", 0.5, 100.0),  # a Gaussian layer's σ₀ is not its family
        ("gaussian", 0.3, "gaussian", 0.3, 104.0),
        ("collapsed", 0.01, "gaussian", 0.01, 150.0),
        ("collapsed", 0.1, "collapsed", 0.1, 120.0),
        ("gaussian", 0.01, "collapsed", 0.1, 110.0),
    ]
    dirs = []
    for i, (bottom, sigma0, top, upper_sigma0, nll) in enumerate(runs):
        config = config_lib.base_config()
        config.seed, config.model.posterior, config.model.sigma0 = i, bottom, sigma0
        config.model.upper_latent_dims, config.model.upper_widths = (2,), ((8,),)
        config.model.upper_posteriors, config.model.upper_sigma0s = (top,), (upper_sigma0,)
        Workdir(tmp_path / f"r{i}").write_config(config)
        Workdir(tmp_path / f"r{i}").write_eval({"nll_is": nll, "kl_2": float(i), "k": 10})
        dirs.append(tmp_path / f"r{i}")
    Workdir(dirs[3]).write_sample_quality({"fid_gmm": 30.0})

    grid = report.layer_grid(dirs)
    assert grid["rows"] == ["gaussian", "collapsed 0.1", "collapsed 0.01"]
    assert grid["columns"] == ["gaussian", "collapsed 0.1"]
    np.testing.assert_array_equal(grid["runs"], [[2, 1], [0, 1], [1, 0]])
    means, halves = grid["nll_is"]
    np.testing.assert_array_equal(means, [[102.0, 110.0], [np.nan, 120.0], [150.0, np.nan]])
    low, high = stats.t.interval(0.95, 1, loc=102.0, scale=stats.sem([100.0, 104.0]))
    assert halves[0, 0] == pytest.approx((high - low) / 2)
    assert np.isnan(halves[0, 1])  # one seed: no interval
    assert grid["kl_2"][0][1, 1] == 3.0
    fid = grid["fid_gmm"][0]
    assert fid[1, 1] == 30.0 and np.isnan(fid[0, 0])
    assert "fid_prior" not in grid and "recon" not in grid

    report.layer_grid_plot(grid, tmp_path / "figure" / "grid.png")
    import matplotlib.image

    assert matplotlib.image.imread(tmp_path / "figure" / "grid.png").ndim == 3

    one_layer = tmp_path / "one"
    Workdir(one_layer).write_config(config_lib.base_config())
    with pytest.raises(cli.UsageError, match="has 1 stochastic layer"):
        report.layer_grid([*dirs, one_layer])


def test_report_by_sampler_has_a_row_per_group_and_scored_sampler(tmp_path):
    from cvae.runs.workdir import Workdir
    from experiments import report

    dirs = []
    for i, (sigma0, fid) in enumerate([(0.01, 10.0), (0.01, 12.0), (0.1, 20.0)]):
        path = _fake_run(tmp_path / f"r{i}", i, sigma0, 100.0)
        scores = {"fid_gmm": fid, "precision_gmm": 0.5 + i / 10, "memorised_features_gmm": 0.0}
        if sigma0 == 0.01:
            scores |= {"fid_diffusion": fid - 1.0, "recall_diffusion": 0.25}
        Workdir(path).write_sample_quality(scores)
        dirs.append(path)
    lines = report.sampler_table(compare.aggregate(dirs, "model.sigma0"), "model.sigma0")
    lines = lines.splitlines()
    assert lines[0] == (
        "| model.sigma0 | sampler | runs | fid | precision | recall | density | coverage"
        " | memorised | memorised_features |"
    )
    half = 12.706 * 2**0.5 / 2**0.5  # t(0.975, 1) · sd / √n: sd of 10 and 12 is √2
    # σ₀ = 0.01 was scored with gmm and diffusion (in ex_post.SAMPLERS order), 0.1 with gmm
    assert [line.split(" | ")[:3] for line in lines[2:]] == [
        ["| 0.01", "gmm", "2"],
        ["| 0.01", "diffusion", "2"],
        ["| 0.1", "gmm", "1"],
    ]
    assert lines[2].split(" | ")[3:6] == [f"11.00 ± {half:.2f}", "0.550 ± 0.635", "—"]
    assert lines[3].split(" | ")[3:5] == [f"10.00 ± {half:.2f}", "—"]
    assert lines[4].split(" | ")[3] == "20.00"  # one run: no interval
    assert lines[2].endswith("| 0.000 ± 0.000 |")


@pytest.mark.slow
def test_report_group_by_prints_intervals_and_plots(tmp_path):
    from tests.helpers import run_cli

    dirs = [
        str(_fake_run(tmp_path / f"r{i}", i, s, 100.0 + i))
        for i, s in enumerate([0.01, 0.01, 1.0, 1.0])
    ]
    out = run_cli(
        "experiments.report",
        *dirs,
        "--group-by",
        "model.sigma0",
        "--plot",
        str(tmp_path / "curve.png"),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("| model.sigma0 | runs | nll_is | elbo")
    # mean ± t(0.975, 1) · 0.707 / √2, and the standard deviation 0.707
    assert lines[2].startswith("| 0.01 | 2 | 100.50 ± 6.35 (sd 0.71) |")
    assert (tmp_path / "curve.png").stat().st_size > 0


def test_report_plots_against_a_metric_with_x(tmp_path):
    """``--x sigma0_relative`` draws each metric against the groups' mean σ₀ / std(μ) (a
    non-numeric grouping is then fine); ``--x`` without ``--plot``, or naming a metric no
    group has, is one line."""
    from cvae.runs.workdir import Workdir
    from tests.helpers import run_cli

    dirs = []
    for i, (sigma0, spread) in enumerate([(0.01, 0.2), (0.01, 0.25), (0.1, 0.3), (0.1, 0.35)]):
        path = _fake_run(tmp_path / f"r{i}", i, sigma0, 100.0 + i)
        Workdir(path).write_eval({"nll_is": 100.0 + i, "sigma0_relative": sigma0 / spread})
        dirs.append(str(path))
    group = ["--group_by", "model.posterior,model.sigma0"]
    plot = ["--plot", str(tmp_path / "x.png"), "--x", "sigma0_relative"]
    out = run_cli("experiments.report", *dirs, *group, *plot)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "x.png").stat().st_size > 0
    for args, message in (
        (["--x", "sigma0_relative"], "--x sets --plot's x axis"),
        (["--plot", str(tmp_path / "y.png"), "--x", "fid_gmm"], "--x fid_gmm: no group has"),
    ):
        bad = run_cli("experiments.report", *dirs, *group, *args)
        assert bad.returncode == 2 and message in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_many_samples_and_codes_are_drawn_in_chunks_with_the_documented_keys(run_2d, monkeypatch):
    """Above CHUNK items, sample draws chunk i from fold_in(key, i) and encode encodes
    chunk by chunk: the same numbers as the chunks asked for one by one."""
    from cvae.analysis import run as run_module

    monkeypatch.setattr(run_module, "CHUNK", 4)
    key = jax.random.key(3)
    images = np.asarray(run_2d.sample(key, 10, sampler="prior"))
    parts = [
        np.asarray(run_2d.sample(jax.random.fold_in(key, i), size, sampler="prior"))
        for i, size in enumerate((4, 4, 2))
    ]
    assert images.shape == (10, *run_2d.info.shape)
    np.testing.assert_array_equal(images, np.concatenate(parts))
    x, _ = run_2d.inputs("test", 10)
    mean, _ = run_2d.encode(x)
    whole = np.concatenate([np.asarray(run_2d.encode(x[i : i + 4])[0]) for i in (0, 4, 8)])
    np.testing.assert_array_equal(mean, whole)


def test_scores_of_a_top_groups_sampler_are_summarised_with_the_others():
    """A run scored with ``gmm@top3`` (sample_quality.json) has its FID averaged over
    seeds like the fixed samplers'; names that only look alike are not samplers."""
    rows = [
        {"fid_gmm": 4.0, "fid_gmm@top3": 2.0, "recall_gmm@top3": 0.5},
        {"fid_gmm": 6.0, "fid_gmm@top3": 4.0, "memorised_features_gmm@top3": 0.0},
    ]
    assert compare.deeper_top_samplers({k for row in rows for k in row}) == ("gmm@top3",)
    assert compare.deeper_top_samplers({"fid_gmm@top", "fid_prior@top2", "fid_gmm@topx"}) == ()
    stats = compare.metric_statistics(rows)
    assert stats["fid_gmm@top3"][0] == 3.0 and stats["fid_gmm"][0] == 5.0
    assert stats["recall_gmm@top3"][0] == 0.5 and stats["memorised_features_gmm@top3"][0] == 0.0
