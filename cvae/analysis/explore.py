"""One run's latent space, computed for the notebooks and the explorer: 2-D projections of
codes, a code map's channels as images, traversals (of the code, or of one layer with the
layers below regenerated), manifolds, the ex-post mixture's density on a plane, nearest
training images and per-dimension diagnostics. Comparing several runs is ``cvae.analysis.compare``.

Everything takes a ``Run`` (``cvae.load_run``) or codes, and returns arrays or plain
records; plotting stays in the notebooks.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from cvae.analysis.run import Run
from cvae.evaluation import metrics


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


def code_map_channels(run: Run, x, labels=None) -> np.ndarray:
    """A code map's channels as images: each image's posterior mean, an h × w × c map, as c
    images of h × w (what each channel of the tokenizer's code holds, where).

    Args:
      run: a run whose code is a map (``model.arch = "conv_map"``).
      x: images (N, H, W, C) in [0, 1].
      labels: their labels, for a conditional model; else None.

    Returns:
      (N, c, h, w).

    Raises:
      ValueError: the run's code is a vector.
    """
    (shape, *upper) = run.model.layer_shapes
    if upper or len(shape) != 3:
        raise ValueError(
            "this run's code is a vector, not a map (model.arch='conv_map' trains a model "
            "whose code is a map); see its dimensions with traversal or project_2d"
        )
    mean, _ = run.encode(x, labels)
    return np.moveaxis(np.asarray(mean), -1, 1)


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
    mean, _ = run.encode(np.asarray(x)[None], flat=True)
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
    mean, _ = run.encode(np.asarray(x)[None], flat=True)
    rows = []
    for j in dims:
        code = jnp.repeat(mean, len(values), axis=0).at[:, offset + j].set(jnp.asarray(values))
        code = run.model.apply({"params": run.params}, code, layer, key, method=run.model.descend)
        rows.append(np.asarray(run.mean_image(code)))
    return np.stack(rows)


def layer_resampling(run: Run, x, key, num: int = 8, layers=None, label=None) -> np.ndarray:
    """What each stochastic layer (each group of a deep hierarchy) changes in an image: x's
    mean-path code with one layer redrawn ``num`` times from p(z_l | z_{>l}) and every other
    layer kept (the model's ``resample_layer``), decoded. It shows what the decoder reads
    of each layer: in a deep hierarchy (whose decoder reads the top-down state every group
    writes into) the top groups' rows vary the image's shape and the finest level's its
    strokes; a decoder of z₁ alone (``model.decoder_layers="bottom"``) reads nothing of the
    layers above, whose rows are then constant (``layer_traversal`` regenerates the layers
    below instead).

    Args:
      run: a run of any model (a one-layer model's one layer is a draw from p(z)).
      x: one image (H, W, C) or a batch of one, in [0, 1].
      key: the PRNG key of the draws (layer l's from ``fold_in(key, l)``).
      num: draws per layer.
      layers: the layers to redraw, 1 (next to x) to L; None for all.
      label: x's class, for a conditional model (kept for every draw); else None.

    Returns:
      Images (len(layers), num, H, W, C).
    """
    depth = len(run.model.layer_dims)
    layers = tuple(range(1, depth + 1)) if layers is None else tuple(layers)
    for layer in layers:
        if not 1 <= layer <= depth:
            raise ValueError(f"layers must be 1 … {depth}, got {layer}")
    image = np.asarray(x).reshape((1,) + tuple(run.model.event_shape))
    mean, _ = run.encode(image, None if label is None else [label], flat=True)
    code = jnp.repeat(jnp.asarray(mean), num, axis=0)
    rows = []
    for layer in layers:
        redrawn = run.model.apply(
            {"params": run.params},
            code,
            layer,
            jax.random.fold_in(key, layer),
            method=run.model.resample_layer,
        )
        rows.append(np.asarray(run.mean_image(redrawn, None if label is None else [label] * num)))
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
