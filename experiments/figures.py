"""The documentation's figures (docs/figures), from finished runs:
``python -m experiments.figures DIR [DIR ...] --out docs/figures/``.

Writes, for the runs given (trained by experiments.train; evaluated by experiments.evaluate
for the σ₀ figure):

* ``samples.png``: one row per run, prior samples beside ex-post-mixture samples;
* ``reconstructions.png``: one row pair per run, test images above their reconstructions;
* ``latents.png``: the PCA plane of each run's test codes, coloured by label, with the
  contours of the ex-post mixture's marginal density in that plane;
* ``learning_curves.png``: the validation ELBO of every run against the epoch;
* ``sigma0.png`` (when the runs hold two or more collapsed σ₀ values): nll_is, recon, kl and
  active units against σ₀, the other families as reference lines.

Every draw uses a fixed key (``--seed``), so the same runs give the same PNGs. The command
prints the Markdown that shows them, with each caption naming its runs.
"""

import pathlib

import jax
import matplotlib
import numpy as np
from absl import flags

from cvae import load_run
from cvae.analysis import compare, explore
from cvae.runs import writers
from experiments import cli

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

flags.DEFINE_string("out", "docs/figures", "Directory for the PNGs.")
flags.DEFINE_integer("seed", 0, "PRNG seed of the samples and reconstructions.")
flags.DEFINE_integer("n", 16, "Samples / reconstructions per run.")
FLAGS = flags.FLAGS


def _label(run) -> str:
    return compare.run_label(compare.run_summary(run.workdir))


def samples_figure(runs, n: int, key) -> plt.Figure:
    fig, axes = plt.subplots(len(runs), 2, figsize=(10, 1.6 * len(runs) + 0.6), squeeze=False)
    for row, run in zip(axes, runs):
        for ax, sampler in zip(row, ("prior", "gmm")):
            images = np.asarray(run.sample(key, n, sampler=sampler))
            ax.imshow(writers.image_grid(images, columns=n // 2))
            ax.set_title(
                f"{_label(run)}: {'ex-post mixture' if sampler == 'gmm' else 'prior'}", fontsize=8
            )
            ax.axis("off")
    fig.tight_layout()
    return fig


def reconstructions_figure(runs, n: int, key) -> plt.Figure:
    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 1.5 * len(runs) + 0.4), squeeze=False)
    for ax, run in zip(axes[:, 0], runs):
        x, _ = run.inputs("test", n)
        recon = np.asarray(run.reconstruct(x[:n], key))
        ax.imshow(writers.image_grid(np.concatenate([x[:n], recon]), columns=n))
        ax.set_title(f"{_label(run)}: test images (top), reconstructions (bottom)", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def latents_figure(runs) -> plt.Figure:
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 4), squeeze=False)
    for ax, run in zip(axes[0], runs):
        x, labels = run.inputs("test", 2000)
        codes = np.concatenate(
            [np.asarray(run.encode(x[i : i + 1000], flat=True)[0]) for i in range(0, len(x), 1000)]
        )
        center, basis = explore.pca_plane(codes)
        xy = (codes - center) @ basis.T
        colour = dict(c=labels, cmap="tab10") if labels is not None else {}
        ax.scatter(xy[:, 0], xy[:, 1], s=3, **colour)
        (x_low, x_high), (y_low, y_high) = np.percentile(xy, [0.5, 99.5], axis=0).T
        xs, ys = np.linspace(x_low, x_high, 120), np.linspace(y_low, y_high, 120)
        density = explore.mixture_density_on_plane(run.latent_mixture(), center, basis, xs, ys)
        ax.contour(xs, ys, density, levels=6, colors="k", linewidths=0.6)
        ax.set_title(_label(run), fontsize=8)
        ax.set(xlabel="PC 1", ylabel="PC 2")
    fig.tight_layout()
    return fig


def learning_curves_figure(runs) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for run in runs:
        curve = compare.learning_curves(run.workdir, "validation")
        if curve["epoch"]:
            ax.plot(curve["epoch"], curve["elbo"], marker=".", label=_label(run))
    ax.set(xlabel="epoch", ylabel="validation ELBO (nats)", title="learning curves")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def sigma0_figure(rows) -> plt.Figure | None:
    metrics = [
        m for m in ("nll_is", "recon", "kl", "active_units") if len(compare.by_sigma0(rows, m)) >= 2
    ]
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        points = compare.by_sigma0(rows, metric)
        mean, std, _ = map(np.array, zip(*points.values()))
        ax.errorbar(list(points), mean, yerr=std, marker="o", capsize=3, label="collapsed")
        for row in rows:
            if row["posterior"] != "collapsed" and row.get(metric) is not None:
                ax.axhline(
                    row[metric],
                    ls="--",
                    lw=1,
                    label=compare.run_label(row),
                    color="k" if row["posterior"] == "gaussian" else "grey",
                )
        ax.set_xscale("log")
        ax.set(title=metric, xlabel="σ₀")
    fullest = max(axes[0], key=lambda ax: len(ax.get_legend_handles_labels()[1]))
    fullest.legend(fontsize=6)
    fig.tight_layout()
    return fig


def main(argv):
    workdirs = [pathlib.Path(a) for a in argv[1:]]
    if not workdirs:
        raise cli.UsageError(
            "name one or more workdirs: python -m experiments.figures DIR ... --out docs/figures"
        )
    if FLAGS.n < 2 or FLAGS.n % 2:
        raise cli.UsageError(f"--n must be an even number ≥ 2, got {FLAGS.n}")
    runs = [load_run(w) for w in workdirs]
    out = pathlib.Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(FLAGS.seed)
    names = ", ".join(w.name for w in workdirs)
    figures = {
        "samples": (
            samples_figure(runs, FLAGS.n, key),
            f"Prior vs ex-post-mixture samples (E[x|z]) of {names}",
        ),
        "reconstructions": (
            reconstructions_figure(runs, FLAGS.n, key),
            f"Test images and reconstructions of {names}",
        ),
        "latents": (
            latents_figure(runs),
            f"PCA plane of the test codes of {names}, with the ex-post mixture's density contours",
        ),
        "learning_curves": (learning_curves_figure(runs), f"Validation ELBO per epoch of {names}"),
    }
    sigma = sigma0_figure([compare.run_summary(w) for w in workdirs])
    if sigma is not None:
        figures["sigma0"] = (sigma, f"Test metrics against σ₀ of {names}")
    for name, (fig, caption) in figures.items():
        path = out / f"{name}.png"
        fig.savefig(path, dpi=72)
        plt.close(fig)
        print(f"![{caption}]({path})")


def entry() -> None:
    """The console script (``pyproject.toml``): the same as ``python -m`` this module."""
    cli.run(main, positional=True)


if __name__ == "__main__":
    entry()
