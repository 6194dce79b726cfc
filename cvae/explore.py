"""Computations behind the notebooks: 2-D projections of codes, traversals, manifolds,
per-dimension diagnostics, and reading several runs for comparison.

Everything takes a ``Run`` (``cvae.load_run``) or workdirs, and returns arrays or plain
records; plotting stays in the notebooks.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from cvae import checkpoint, metrics
from cvae.run import Run
from cvae.workdir import as_workdir


def project_2d(codes, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(N, d) codes → (N, 2) with scikit-learn's PCA or t-SNE (identity for d = 2)."""
    codes = np.asarray(codes, np.float64)
    if codes.shape[-1] == 2:
        return codes
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(2, random_state=seed).fit_transform(codes)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (len(codes) - 1) / 3)
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(codes)
    raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")


def traversal(run: Run, x, dims, values) -> np.ndarray:
    """Images (len(dims), len(values), H, W, C): x's posterior mean with dimension j set to v."""
    mean, _ = run.encode(np.asarray(x)[None])
    rows = []
    for j in dims:
        z = jnp.repeat(mean, len(values), axis=0).at[:, j].set(jnp.asarray(values))
        rows.append(np.asarray(run.mean_image(z)))
    return np.stack(rows)


def manifold_grid(run: Run, n: int = 15, span: float = 2.5) -> np.ndarray:
    """For a 2-D latent: images (n, n, H, W, C) decoded on a grid over [−span, span]²."""
    if run.config.model.latent_dim != 2:
        raise ValueError(f"the decoded manifold needs model.latent_dim = 2, this run has "
                         f"{run.config.model.latent_dim}")
    axis = np.linspace(-span, span, n)
    z = np.stack(np.meshgrid(axis, axis[::-1]), -1).reshape(-1, 2)
    return np.asarray(run.mean_image(z)).reshape((n, n) + tuple(run.info.shape))


def posterior_diagnostics(run: Run, images) -> dict:
    """Per-dimension mean KL (absent for point masses), variance of E_q[z_j], active units."""
    x = jnp.asarray(images, jnp.float32)
    posterior = run.model.apply({"params": run.params}, x, method=run.model.encode)
    count, variances = metrics.active_units(posterior.mean)
    out = {"active_units": count, "mean_variance": variances}
    if run.model.posterior_family != "deterministic":
        out["kl_per_dim"] = np.asarray(metrics.kl_per_dimension(posterior))
    return out


def run_summary(workdir) -> dict:
    """One row of a comparison: the run's config essentials, eval.json, sample quality,
    throughput from metrics.jsonl and the parameter count from checkpoint metadata."""
    wd = as_workdir(workdir)
    config = wd.read_config_dict()
    evaluation = wd.read_eval() or {}
    train = wd.read_metrics("train")
    row = {"run": wd.name, "posterior": config["model"]["posterior"],
           # σ₀ is a parameter of the collapsed posterior only
           "sigma0": (config["model"]["sigma0"] if config["model"]["posterior"] == "collapsed"
                      else None),
           "objective": (f"iwae k={config['objective']['k']}"
                         if config["objective"]["kind"] == "iwae" else "elbo"),
           "latent_dim": config["model"]["latent_dim"],
           "epochs": train[-1]["epoch"] if train else 0,
           "examples_per_s": float(np.median([r["examples_per_s"] for r in train[1:]] or [0])),
           "wall_s": train[-1]["elapsed_s"] if train else 0.0}
    row.update({k: evaluation[k] for k in ("nll_is", "elbo", "recon", "kl", "active_units", "k")
                if k in evaluation})
    quality = wd.read_sample_quality() or {}
    row.update({k: v for k, v in quality.items() if k.startswith(("fid_", "accuracy_"))})
    if wd.checkpoints.is_dir():
        ckpt = checkpoint.Checkpointer(wd.checkpoints)
        count = ckpt.parameter_count()
        ckpt.close()
        if count is not None:
            row["params"] = count
    return row


def learning_curves(workdir, split: str = "train") -> dict:
    """{"step": [...], "elbo": [...], "loss": [...]} for one split of metrics.jsonl."""
    records = as_workdir(workdir).read_metrics(split)
    return {k: [r[k] for r in records] for k in ("step", "epoch", "elbo", "loss", "recon", "kl")}
