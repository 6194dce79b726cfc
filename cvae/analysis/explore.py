"""Computations behind the notebooks: 2-D projections of codes, traversals, manifolds,
per-dimension diagnostics, and reading several runs for comparison.

Everything takes a ``Run`` (``cvae.load_run``) or workdirs, and returns arrays or plain
records; plotting stays in the notebooks.
"""

from __future__ import annotations

import difflib
import warnings

import jax.numpy as jnp
import numpy as np

from cvae import config as config_lib
from cvae import samplers
from cvae.analysis.run import Run
from cvae.evaluation import metrics
from cvae.runs import checkpoint
from cvae.runs.workdir import as_workdir


def project_2d(codes, method: str = "pca", seed: int = 0) -> np.ndarray:
    """Codes projected to two dimensions, for scatter plots.

    Args:
      codes: (N, d).
      method: "pca" or "tsne" (scikit-learn), or "umap" (umap-learn, the ``notebooks``
        extra).
      seed: the projection's random state (t-SNE, UMAP).

    Returns:
      (N, 2); the codes themselves when d = 2.
    """
    codes = np.asarray(codes, np.float64)
    if codes.shape[-1] == 2:
        return codes
    if method == "pca":
        center, basis = pca_plane(codes)
        return (codes - center) @ basis.T
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (len(codes) - 1) / 3)
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(codes)
    if method == "umap":
        if not umap_available():
            raise ValueError("method='umap' needs umap-learn: pip install -e '.[notebooks]'")
        import umap

        neighbours = int(min(15, len(codes) - 1))
        with warnings.catch_warnings():  # "n_jobs overridden by random_state": wanted here
            warnings.simplefilter("ignore", UserWarning)
            return umap.UMAP(
                n_components=2, n_neighbors=neighbours, random_state=seed
            ).fit_transform(codes)
    raise ValueError(f"method must be 'pca', 'tsne' or 'umap', got {method!r}")


def umap_available() -> bool:
    """Whether umap-learn is installed (the ``notebooks`` extra).

    Returns:
      True when ``import umap`` works.
    """
    with warnings.catch_warnings():  # umap imports tqdm.auto, which warns outside Jupyter
        warnings.simplefilter("ignore")
        try:
            import umap  # noqa: F401
        except ImportError:
            return False
    return True


def pca_plane(codes) -> tuple[np.ndarray, np.ndarray]:
    """The plane of the first two principal components.

    ``(codes − center) @ basis.T`` is the PCA projection (up to the components' signs).

    Args:
      codes: (N, d).

    Returns:
      (center (d,), basis (2, d)).
    """
    from sklearn.decomposition import PCA

    codes = np.asarray(codes, np.float64)
    pca = PCA(2).fit(codes)
    return pca.mean_, pca.components_


def mixture_density_on_plane(mixture, center, basis, xs, ys) -> np.ndarray:
    """The ex-post mixture's marginal density on a 2-D plane, on the grid ``xs × ys``.

    A linear projection of a Gaussian mixture is a Gaussian mixture: component k projects
    to N(B(μ_k − c), B Σ_k Bᵀ), so the contours are the exact marginal density of
    p̂(z) in the plane, not a density re-fitted to projected codes.

    Args:
      mixture: the fitted ``LatentMixture``.
      center: the plane's origin c (d,).
      basis: the plane's axes B (2, d).
      xs: grid coordinates along the first axis.
      ys: grid coordinates along the second axis.

    Returns:
      (len(ys), len(xs)) densities.
    """
    basis = np.asarray(basis, np.float64)
    means = (np.asarray(mixture.means, np.float64) - center) @ basis.T  # (K, 2)
    chol = np.asarray(mixture.cholesky, np.float64)
    covs = np.einsum("ij,kjl,ml->kim", basis, chol @ np.swapaxes(chol, 1, 2), basis)
    grid = np.stack(np.meshgrid(xs, ys), -1)[..., None, :] - means  # (ny, nx, K, 2)
    inv = np.linalg.inv(covs)
    mahalanobis = np.einsum("yxki,kij,yxkj->yxk", grid, inv, grid)
    log_norm = -np.log(2 * np.pi) - 0.5 * np.log(np.linalg.det(covs))
    weights = np.exp(np.asarray(mixture.log_weights, np.float64))
    return np.sum(weights * np.exp(log_norm - 0.5 * mahalanobis), axis=-1)


def code_statistics(codes) -> dict:
    """Per code dimension j, over the data: E[μ_j], Var(μ_j) and ½E[μ_j²].

    For a collapsed posterior the KL of dimension j is ½E[μ_j²] + ½(σ₀² − 1 − log σ₀²):
    the first term is the informative part, the second a constant shared by every
    dimension (``collapsed_kl_constant``).

    Args:
      codes: posterior means (N, d).

    Returns:
      {"mean", "variance", "half_mean_square"}, each (d,).
    """
    codes = np.asarray(codes, np.float64)
    return {
        "mean": codes.mean(0),
        "variance": codes.var(0),
        "half_mean_square": 0.5 * np.mean(codes**2, axis=0),
    }


def collapsed_kl_constant(sigma0: float) -> float:
    """½(σ₀² − 1 − log σ₀²): each dimension's KL at μ_j = 0, in nats.

    Args:
      sigma0: the collapsed posterior's σ₀.

    Returns:
      The constant.
    """
    return 0.5 * (sigma0**2 - 1.0 - np.log(sigma0**2))


def nearest_training_images(samples, training_images, k: int = 1):
    """Each sample's nearest training images in pixel space (Euclidean, images in [0, 1]).

    A generated image at distance ≈ 0 is a copy.

    Args:
      samples: (N, H, W, C).
      training_images: (M, H, W, C).
      k: neighbours per sample.

    Returns:
      (indices (N, k), distances (N, k)), nearest first.
    """
    a = np.asarray(samples, np.float32).reshape(len(samples), -1)
    b = np.asarray(training_images, np.float32).reshape(len(training_images), -1)
    squared = (a**2).sum(1)[:, None] - 2 * a @ b.T + (b**2).sum(1)[None, :]
    order = np.argsort(squared, axis=1)[:, :k]
    return order, np.sqrt(np.maximum(np.take_along_axis(squared, order, 1), 0.0))


def traversal(run: Run, x, dims, values) -> np.ndarray:
    """Images along latent dimensions: x's posterior mean with dimension j set to each value.

    Args:
      run: the run.
      x: one image (H, W, C) or a batch of one, in [0, 1].
      dims: the dimensions to traverse.
      values: the values to set each to.

    Returns:
      Images (len(dims), len(values), H, W, C).
    """
    mean, _ = run.encode(np.asarray(x)[None])
    rows = []
    for j in dims:
        z = jnp.repeat(mean, len(values), axis=0).at[:, j].set(jnp.asarray(values))
        rows.append(np.asarray(run.mean_image(z)))
    return np.stack(rows)


def layer_traversal(run: Run, x, layer: int, dims, values, key=None) -> np.ndarray:
    """What one stochastic layer of a hierarchy encodes: images along its dimensions.

    x's mean-path code with dimension j of layer ``layer`` set to each value, the layers
    below regenerated from it (the model's ``descend``: their conditional means, or draws
    with ``key``), then decoded. For layer 1 — the one layer of a one-layer model — this is
    ``traversal`` of z₁'s dimensions.

    Args:
      run: a run (of any model; a hierarchy's when ``layer`` > 1).
      x: one image (H, W, C) or a batch of one, in [0, 1].
      layer: the layer, 1 (next to x) to L.
      dims: dimensions of that layer to traverse (0-based within the layer).
      values: the values to set each to.
      key: None for the lower layers' conditional means; else the PRNG key of their draws.

    Returns:
      Images (len(dims), len(values), H, W, C).
    """
    dims_of_layers = run.model.layer_dims
    if not 1 <= layer <= len(dims_of_layers):
        raise ValueError(f"layer must be 1 … {len(dims_of_layers)}, got {layer}")
    offset = sum(dims_of_layers[: layer - 1])
    mean, _ = run.encode(np.asarray(x)[None])
    rows = []
    for j in dims:
        code = jnp.repeat(mean, len(values), axis=0).at[:, offset + j].set(jnp.asarray(values))
        code = run.model.apply({"params": run.params}, code, layer, key, method=run.model.descend)
        rows.append(np.asarray(run.mean_image(code)))
    return np.stack(rows)


def manifold_grid(run: Run, n: int = 15, span: float = 2.5) -> np.ndarray:
    """For a 2-D latent: images decoded on a grid over [−span, span]².

    Args:
      run: the run (2-D codes: one layer with latent_dim = 2).
      n: points per axis.
      span: the grid's half-width.

    Returns:
      Images (n, n, H, W, C).
    """
    if run.model.code_dim != 2:
        raise ValueError(
            f"the decoded manifold needs 2-D codes (model.latent_dim = 2, one layer), this "
            f"run's are {run.model.code_dim}-D"
        )
    axis = np.linspace(-span, span, n)
    z = np.stack(np.meshgrid(axis, axis[::-1]), -1).reshape(-1, 2)
    return np.asarray(run.mean_image(z)).reshape((n, n) + tuple(run.info.shape))


def posterior_diagnostics(run: Run, images) -> dict:
    """Per-dimension mean KL (absent for point masses), variance of E_q[z_j], active units.

    Args:
      run: the run.
      images: (N, H, W, C) in [0, 1].

    Returns:
      {"kl_per_dim" (when the posterior has a density), "mean_variance", "active_units"}.
    """
    x = jnp.asarray(images, jnp.float32)
    posterior = run.model.apply({"params": run.params}, x, method=run.model.encode)
    assert not isinstance(posterior, tuple)  # apply returns (out, state) only when mutable
    count, variances = metrics.active_units(posterior.mean)
    out = {"active_units": count, "mean_variance": variances}
    if run.model.posterior_family != "deterministic":
        out["kl_per_dim"] = np.asarray(metrics.kl_per_dimension(posterior))
    return out


def run_summary(workdir) -> dict:
    """One row of a comparison of runs.

    Args:
      workdir: the run directory.

    Returns:
      The run's config essentials, eval.json (else the test record of metrics.jsonl),
      sample quality, throughput from metrics.jsonl and the parameter count from
      checkpoint metadata.
    """
    wd = as_workdir(workdir)
    config = wd.read_config_dict()
    evaluation = wd.read_eval() or {}
    train = wd.read_metrics("train")
    row = {
        "run": wd.name,
        "posterior": config["model"]["posterior"],
        # σ₀ is a parameter of the collapsed posterior only
        "sigma0": (
            config["model"]["sigma0"] if config["model"]["posterior"] == "collapsed" else None
        ),
        "objective": (
            f"iwae k={config['objective']['k']}"
            if config["objective"]["kind"] == "iwae"
            else "elbo"
        ),
        "latent_dim": config["model"]["latent_dim"],
        "epochs": train[-1]["epoch"] if train else 0,
        "examples_per_s": float(np.median([r["examples_per_s"] for r in train[1:]] or [0])),
        "wall_s": train[-1]["elapsed_s"] if train else 0.0,
    }
    # Without eval.json, the test record training wrote (the same evaluation core, K = 0).
    tested = wd.read_metrics("test")
    row.update({k: tested[-1][k] for k in ("elbo", "recon", "kl") if tested and k in tested[-1]})
    row.update(
        {
            k: evaluation[k]
            for k in ("nll_is", "elbo", "recon", "kl", "active_units", "k", *LAYER_METRICS)
            if k in evaluation
        }
    )
    quality = wd.read_sample_quality() or {}
    prefixes = tuple(f"{m}_" for m in (*SAMPLE_METRICS, "accuracy"))
    row.update({k: v for k, v in quality.items() if k.startswith(prefixes)})
    if wd.checkpoints.is_dir():
        ckpt = checkpoint.Checkpointer(wd.checkpoints)
        count = ckpt.parameter_count()
        ckpt.close()
        if count is not None:
            row["params"] = count
    return row


def run_label(row: dict) -> str:
    """A legend label for one ``run_summary`` row.

    Args:
      row: what ``run_summary`` returns.

    Returns:
      The run's name, its posterior and σ₀.
    """
    detail = row["posterior"] + (f", σ₀={row['sigma0']:g}" if row.get("sigma0") is not None else "")
    return f"{row['run']} ({detail})"


def by_sigma0(rows, metric: str) -> dict:
    """Collapsed runs grouped by σ₀.

    Args:
      rows: ``run_summary`` rows.
      metric: the metric to summarise.

    Returns:
      {σ₀: (mean, standard deviation, number of runs)} over the runs (seeds) that share it;
      the deviation is 0 for a single run.
    """
    groups: dict[float, list[float]] = {}
    for row in rows:
        if row.get("sigma0") is not None and row.get(metric) is not None:
            groups.setdefault(row["sigma0"], []).append(float(row[metric]))
    out = {}
    for sigma0, values in sorted(groups.items()):
        mean, std, _ = seed_statistics(values)
        out[sigma0] = (mean, 0.0 if np.isnan(std) else std, len(values))
    return out


def seed_statistics(values) -> tuple[float, float, float]:
    """Mean, standard deviation and 95% confidence half-width over runs that differ in seed.

    The half-width is t_{0.975, n−1} · std / √n (Student's t: a handful of seeds is far
    from the normal limit).

    Args:
      values: one value per run.

    Returns:
      (mean, sample standard deviation, half-width); the last two are NaN for one run.
    """
    from scipy import stats

    values = np.asarray(values, np.float64)
    if len(values) == 1:
        return float(values[0]), float("nan"), float("nan")
    std = float(values.std(ddof=1))
    return (
        float(values.mean()),
        std,
        float(stats.t.ppf(0.975, len(values) - 1) * std / np.sqrt(len(values))),
    )


SAMPLE_METRICS = (
    "fid",
    "precision",
    "recall",
    "density",
    "coverage",
    "memorised",
    "memorised_features",
)
# A hierarchy's per-layer scores (eval.json), layer 1 next to x; up to four layers reported.
LAYER_METRICS = tuple(
    f"{metric}_{layer}" for layer in range(1, 5) for metric in ("kl", "active_units")
)
SUMMARY_METRICS = (
    "nll_is",
    "elbo",
    "recon",
    "kl",
    "active_units",
    *LAYER_METRICS,
    *(
        f"{metric}_{sampler}"
        for metric in SAMPLE_METRICS
        for sampler in samplers.SAMPLERS + samplers.TOP_SAMPLERS
    ),
    "accuracy_prior",
    "accuracy_gmm",
    "accuracy_diffusion",
)


def aggregate(workdirs, group_by: str) -> list[dict]:
    """Runs grouped by the value of a config field, with statistics over each group.

    Args:
      workdirs: run (or sweep) directories.
      group_by: a dotted config field, e.g. "model.sigma0", or several separated by commas
        (a group per combination of their values, named "v1 / v2 / …").

    Returns:
      One dict per group: {"value", "n", "runs", metric: (mean, std, ci95), ...} with the
      statistics of ``seed_statistics`` over the group's runs.
    """
    fields = [field.strip() for field in group_by.split(",")]
    groups: dict = {}
    for workdir in workdirs:
        wd = as_workdir(workdir)
        flat = config_lib.flatten(wd.read_config_dict())
        values = []
        for field in fields:
            if field not in flat:
                close = difflib.get_close_matches(field, list(flat), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"--group_by {field!r} is not a config field{hint}")
            values.append(config_lib.as_tuples(flat[field]))
        value = values[0] if len(values) == 1 else " / ".join(map(_plain, values))
        groups.setdefault(value, []).append((wd.name, run_summary(wd)))
    out = []
    for value in sorted(groups, key=lambda v: (str(type(v)), v)):
        members = groups[value]
        out.append(
            {
                "value": value,
                "n": len(members),
                "runs": [name for name, _ in members],
                **metric_statistics([row for _, row in members]),
            }
        )
    return out


def _plain(value) -> str:
    """A config value as a group's name: ('gaussian',) → "gaussian", 0.01 → "0.01"."""
    if isinstance(value, tuple):
        return ", ".join(map(_plain, value)) or "()"
    return f"{value:g}" if isinstance(value, float) else str(value)


def metric_statistics(rows) -> dict:
    """``seed_statistics`` of every metric over ``run_summary`` rows.

    Args:
      rows: ``run_summary`` rows.

    Returns:
      {metric: (mean, std, ci95)} for every summary metric at least one row has.
    """
    out = {}
    for metric in SUMMARY_METRICS:
        values = [row[metric] for row in rows if row.get(metric) is not None]
        if values:
            out[metric] = seed_statistics(values)
    return out


def learning_curves(workdir, split: str = "train") -> dict:
    """One split's curve from metrics.jsonl.

    Args:
      workdir: the run directory.
      split: "train", "validation", "train_eval" or "test".

    Returns:
      {"step", "epoch", "elbo", "loss", "recon", "kl"}: one list each, in record order.
    """
    records = as_workdir(workdir).read_metrics(split)
    return {k: [r[k] for r in records] for k in ("step", "epoch", "elbo", "loss", "recon", "kl")}
