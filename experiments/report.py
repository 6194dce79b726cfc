"""Summarise evaluated runs as a Markdown table: ``python -m experiments.report DIR [DIR ...]``.

A DIR holding a ``sweep.json`` (``experiments.sweep``) stands for its members; members that
failed or have not finished are left out, and the report says so.

With ``--group_by FIELD`` (a dotted config field, e.g. ``model.sigma0``), one row per value
of that field instead: the number of runs (seeds) and, for every metric the runs have, the
mean ± the half-width of its 95% confidence interval (Student's t over the seeds);
``--plot FILE.png`` draws each metric against the field with those error bars (a log axis
when the values span two decades or more), with ``--reference DIR`` (a run or a sweep:
one line per grid point) drawn as horizontal lines with their 95% CI bands — the σ₀
figure's VAE and AE. ``--by_sampler`` adds a second table with one row per group and
ex-post sampler and the sample metrics as columns (FID, precision, recall, density,
coverage, memorised fractions), the family table's layout. ``--layer_grid FILE.png``
draws two-layer runs as a grid, the bottom layer's posterior (rows) against the top
layer's (columns), one heatmap per metric with each cell's mean ± 95% CI over its seeds:
where in a hierarchy the posterior can be collapsed, at a glance.

Reads each workdir's config.json, metrics.jsonl, eval.json (run experiments.evaluate
first), sample_quality.json (experiments.sample_quality) and checkpoint metadata, so every
number in the results tables (docs/results.md) can be regenerated; under the table, each run's
provenance (commit, library versions, device).
"""

import itertools
import pathlib

import numpy as np
from absl import flags

from cvae import Workdir, analysis, samplers
from cvae.analysis import compare
from cvae.models import hierarchy
from cvae.runs import provenance, restore
from cvae.training import sweep
from experiments import cli

flags.DEFINE_string(
    "group_by",
    None,
    "Aggregate runs over seeds by this config field (or several, comma-separated: a row per "
    "combination).",
)
flags.DEFINE_string("plot", None, "With --group_by: a PNG of each metric against the field.")
flags.DEFINE_string(
    "x",
    None,
    "With --plot: the x axis is this metric's mean over each group (e.g. sigma0_relative, "
    "with its 95% CI) instead of the field's value.",
)
flags.DEFINE_multi_string(
    "reference",
    [],
    "With --plot: a run or sweep directory drawn as "
    "horizontal reference lines (mean and 95% CI band over seeds).",
)
flags.DEFINE_bool(
    "by_sampler",
    False,
    "With --group_by: one row per group and ex-post sampler, the sample metrics as columns "
    "(FID, precision, recall, density, coverage, memorised fractions).",
)
flags.DEFINE_string(
    "layer_grid",
    None,
    "Two-layer runs: a PNG of heatmaps, the bottom layer's posterior (rows) against the top "
    "layer's (columns), each cell the mean ± 95% CI over its seeds.",
)
FLAGS = flags.FLAGS
COLUMNS = [
    ("run", "{}"),
    ("posterior", "{}"),
    ("objective", "{}"),
    ("sigma0", "{:g}"),
    ("latent_dim", "{}"),
    ("epochs", "{}"),
    ("wall_s", "{:.0f}"),
    ("examples_per_s", "{:,.0f}"),
    ("nll_is", "{:.2f}"),
    ("elbo", "{:.2f}"),
    ("recon", "{:.2f}"),
    ("kl", "{:.2f}"),
    ("active_units", "{}"),
    ("code_std", "{:.3f}"),
    ("sigma0_relative", "{:.3f}"),
    ("k", "{}"),
    ("params", "{:,}"),
    *(
        (f"{metric}_{sampler}", "{:.2f}" if metric == "fid" else "{:.3f}")
        for metric in compare.SAMPLE_METRICS
        for sampler in samplers.SAMPLERS + compare.LATENT_RUNS
    ),
    ("accuracy_prior", "{:.3f}"),
    ("accuracy_gmm", "{:.3f}"),
    ("accuracy_diffusion", "{:.3f}"),
]


def provenance_lines(workdirs) -> str:
    """Under a table: where each distinct provenance came from, and which runs share it."""
    groups: dict[str, list[str]] = {}
    for workdir in workdirs:
        wd = Workdir(workdir)
        groups.setdefault(provenance.describe(wd.read_provenance()), []).append(wd.name)
    return "\n".join(f"Runs {', '.join(names)}: {line}." for line, names in groups.items())


def config_history_lines(workdirs) -> list[str]:
    """One line per run whose config changed across a resume: from which step, which
    fields, from what to what (config_history.jsonl); none for runs trained by one config."""
    lines = []
    for workdir in workdirs:
        wd = Workdir(workdir)
        for record in wd.read_config_history():
            changed = ", ".join(
                f"{name} {before!r} → {after!r}"
                for name, (before, after) in record["changes"].items()
            )
            lines.append(f"Run {wd.name} resumed at step {record['step']} with {changed}.")
    return lines


def grouped_table(groups, field: str) -> str:
    """The Markdown table of ``compare.aggregate``: mean ± 95% CI half-width per metric."""
    metrics = [m for m in compare.SUMMARY_METRICS if any(m in g for g in groups)]
    lines = [
        f"| {field} | runs | " + " | ".join(metrics) + " |",
        "|" + " --- |" * (len(metrics) + 2),
    ]
    for group in groups:
        cells = []
        for metric in metrics:
            if metric not in group:
                cells.append("—")
                continue
            mean, std, half = group[metric]
            cells.append(
                f"{mean:.2f}" if np.isnan(half) else f"{mean:.2f} ± {half:.2f} (sd {std:.2f})"
            )
        lines.append(f"| {group['value']} | {group['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sampler_table(groups, field: str) -> str:
    """``grouped_table`` turned on its side for the sample metrics: one row per group and
    sampler (the samplers a group's runs were scored with), one column per metric."""
    metrics = list(compare.SAMPLE_METRICS)
    lines = [
        f"| {field} | sampler | runs | " + " | ".join(metrics) + " |",
        "|" + " --- |" * (len(metrics) + 3),
    ]
    for group in groups:
        deeper = compare.deeper_top_samplers(group)
        for sampler in samplers.SAMPLERS + samplers.TOP_SAMPLERS + deeper:
            if f"fid_{sampler}" not in group:
                continue
            cells = []
            for metric in metrics:
                stats = group.get(f"{metric}_{sampler}")
                if stats is None:
                    cells.append("—")
                    continue
                mean, _, half = stats
                digits = 2 if metric == "fid" else 3
                cells.append(
                    f"{mean:.{digits}f}"
                    if np.isnan(half)
                    else f"{mean:.{digits}f} ± {half:.{digits}f}"
                )
            lines.append(
                f"| {group['value']} | {sampler} | {group['n']} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines)


def reference_groups(paths) -> list[dict]:
    """``compare.aggregate``-style entries for reference lines: a run directory is one
    entry; a sweep directory gives one per grid point (its members pooled over seeds)."""
    entries = []
    for path in paths:
        record = sweep.SweepFile(path).read()
        if record is None:
            entries.append({**_pooled([path]), "value": Workdir(path).name})
            continue
        points: dict[str, list] = {}
        for name, entry in record["members"].items():
            if entry["status"] in restore.FINISHED:
                point = "/".join(p for p in name.split("/") if not p.startswith("seed="))
                points.setdefault(point, []).append(path / name)
        for point, workdirs in points.items():
            label = path.name + (f" {point}" if point else "")
            entries.append({**_pooled(workdirs), "value": label})
    return entries


def _pooled(workdirs) -> dict:
    rows = [compare.run_summary(w) for w in workdirs]
    return {"n": len(rows), **compare.metric_statistics(rows)}


def _panels(plt, count: int, most_across: int, panel_size: tuple[float, float]):
    """A figure of ``count`` panels, at most ``most_across`` to a row, each of
    ``panel_size`` inches; the grid's unused cells are hidden."""
    across = min(most_across, count)
    down = -(-count // across)
    width, height = panel_size
    fig, axes = plt.subplots(down, across, figsize=(width * across, height * down), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, axes


def grouped_plot(
    groups, field: str, path: pathlib.Path, references=(), x_metric: str | None = None
) -> None:
    """Each metric against ``field`` (numeric fields only) — or against the groups' mean of
    ``x_metric``, with its 95% CI as horizontal bars — with 95% CI error bars, and each
    reference entry as a horizontal line with its 95% CI as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x_metric is not None:
        if not any(x_metric in g for g in groups):
            raise cli.UsageError(f"--x {x_metric}: no group has that metric")
        groups = [
            {**g, "value": g[x_metric][0], "x_half": g[x_metric][2]}
            for g in groups
            if x_metric in g
        ]
        field = f"{x_metric} (by {field})"
    values = [g["value"] for g in groups]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise cli.UsageError(f"--plot needs a numeric --group_by field; {field} takes {values}")
    metrics = [m for m in compare.SUMMARY_METRICS if any(m in g for g in groups)]
    fig, axes = _panels(plt, len(metrics), 4, (3.6, 3.3))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes.flat, metrics):
        shown = [g for g in groups if metric in g]
        mean = [g[metric][0] for g in shown]
        half = [0.0 if np.isnan(g[metric][2]) else g[metric][2] for g in shown]
        ax.errorbar(
            [g["value"] for g in shown],
            mean,
            yerr=half,
            xerr=[0.0 if np.isnan(g.get("x_half", np.nan)) else g["x_half"] for g in shown],
            marker="o",
            capsize=3,
            color="k",
            label=field,
        )
        for i, ref in enumerate(r for r in references if metric in r):
            ref_mean, _, ref_half = ref[metric]
            colour = colours[i % len(colours)]
            ax.axhline(ref_mean, ls="--", lw=1, color=colour, label=ref["value"])
            if not np.isnan(ref_half):
                ax.axhspan(ref_mean - ref_half, ref_mean + ref_half, color=colour, alpha=0.15)
        positive = [v for v in values if v > 0]
        if len(positive) == len(values) and max(positive) / min(positive) >= 100:
            ax.set_xscale("log")
        ax.set(title=metric, xlabel=field)
    fullest = max(axes.flat[: len(metrics)], key=lambda ax: len(ax.get_legend_handles_labels()[1]))
    fullest.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)


# The layer grid's panels, those some run has: likelihood, reconstruction, each layer's
# KL term and the sample quality of the prior and of the ex-post mixture.
GRID_METRICS = ("nll_is", "recon", "kl_1", "kl_2", "fid_prior", "fid_gmm")


def layer_family(posterior: tuple[str, float]) -> tuple:
    """A stochastic layer's (posterior family, σ₀) as a sortable grid entry: Gaussian first,
    then collapsed by decreasing σ₀, then deterministic (σ₀ → 0); the last element is its
    label, e.g. "gaussian", "collapsed 0.1"."""
    family, sigma0 = posterior
    if family == "collapsed":
        return (1, -sigma0, f"collapsed {sigma0:g}")
    return (0 if family == "gaussian" else 2, 0.0, family)


def layer_grid(workdirs) -> dict:
    """Two-layer runs as a grid: rows the bottom layer's (z₁) posterior, columns the top's
    (z₂), in ``layer_family`` order.

    Args:
      workdirs: run directories of two-layer models (sweeps already expanded).

    Returns:
      {"rows", "columns": the labels, "runs": (R, C) seed counts, metric: (means, halves)}
      for each of ``GRID_METRICS`` some run has; a cell without runs, or without an interval
      (one seed), holds NaN.
    """
    cells: dict[tuple, list] = {}
    for workdir in workdirs:
        layers = hierarchy.layer_posteriors(Workdir(workdir).read_config().model)
        if len(layers) != 2:
            raise cli.UsageError(
                f"{workdir} has {len(layers)} stochastic layer(s); --layer_grid compares "
                "two-layer runs (give only those)"
            )
        key = (layer_family(layers[0]), layer_family(layers[1]))
        cells.setdefault(key, []).append(compare.run_summary(workdir))
    bottoms = sorted({key[0] for key in cells})
    tops = sorted({key[1] for key in cells})
    grid: dict = {
        "rows": [family[-1] for family in bottoms],
        "columns": [family[-1] for family in tops],
        "runs": np.array([[len(cells.get((b, t), [])) for t in tops] for b in bottoms]),
    }
    stats = {key: compare.metric_statistics(rows) for key, rows in cells.items()}
    for metric in GRID_METRICS:
        if not any(metric in s for s in stats.values()):
            continue
        means, halves = np.full((2, len(bottoms), len(tops)), np.nan)
        for (i, b), (j, t) in itertools.product(enumerate(bottoms), enumerate(tops)):
            if metric in stats.get((b, t), {}):
                means[i, j], _, halves[i, j] = stats[(b, t)][metric]
        grid[metric] = (means, halves)
    return grid


def layer_grid_plot(grid: dict, path: pathlib.Path) -> None:
    """One heatmap per metric of ``layer_grid``, each cell annotated "mean ± half-width"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in GRID_METRICS if m in grid]
    rows, columns = grid["rows"], grid["columns"]
    fig, axes = _panels(plt, len(metrics), 3, (1.5 / 3 + 1.3 * len(columns), 0.9 + 0.8 * len(rows)))
    for ax, metric in zip(axes.flat, metrics):
        means, halves = grid[metric]
        image = ax.imshow(np.ma.masked_invalid(means), cmap="viridis")
        for i, j in itertools.product(range(len(rows)), range(len(columns))):
            if np.isnan(means[i, j]):
                continue
            interval = "" if np.isnan(halves[i, j]) else f"\n± {halves[i, j]:.1f}"
            bright = image.norm(means[i, j]) > 0.6  # viridis turns yellow: dark text there
            ax.text(
                j,
                i,
                f"{means[i, j]:.1f}{interval}",
                ha="center",
                va="center",
                fontsize=7,
                color="k" if bright else "w",
            )
        ax.set_xticks(range(len(columns)), columns, fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set(title=metric, xlabel="top layer (z₂)", ylabel="bottom layer (z₁)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def table(rows) -> str:
    """The Markdown table of ``run_summary`` rows; a column no run has is left out."""
    columns = [(name, fmt) for name, fmt in COLUMNS if any(r.get(name) is not None for r in rows)]
    lines = ["| " + " | ".join(name for name, _ in columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        cells = [
            fmt.format(row[name]) if row.get(name) is not None else "—" for name, fmt in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Metrics a training run does not write, the command that adds them, and whether every
# run is expected to have them (a FID is optional until some run has one).
EVALUATE = "python -m experiments.evaluate --workdir {}"
SCORE_SAMPLES = (
    "python -m experiments.sample_quality --workdir {} --classifier CLASSIFIER_DIR "
    "(a digit classifier: python -m experiments.train_classifier)"
)
ADDED_BY = {
    "nll_is": (EVALUATE, True),
    "active_units": (EVALUATE, True),
    "fid_prior": (SCORE_SAMPLES, False),
    "fid_gmm": (SCORE_SAMPLES, False),
}


def missing_notes(rows, workdirs, sweeps=()) -> list[str]:
    """One line per metric some runs lack, naming those runs and the command that adds it
    with the directory to give it: a sweep directory holding every such run (its members are
    evaluated together), else the first such run (a deterministic model has no nll_is: it is
    not counted as lacking one).

    Args:
      rows: ``compare.run_summary`` of each run.
      workdirs: the runs' directories, in the order of ``rows``.
      sweeps: the sweep directories the runs were given as.

    Returns:
      The lines.
    """
    notes = []
    for metric, (command, expected) in ADDED_BY.items():
        owed = [
            (r, w)
            for r, w in zip(rows, workdirs, strict=True)
            if not (metric == "nll_is" and r.get("posterior") == "deterministic")
        ]
        lacking = [(r["run"], w) for r, w in owed if r.get(metric) is None]
        if not lacking or (not expected and len(lacking) == len(owed)):
            continue
        names = ", ".join(name for name, _ in lacking[:6]) + (
            f" and {len(lacking) - 6} more" if len(lacking) > 6 else ""
        )
        paths = [pathlib.Path(w) for _, w in lacking]
        holder = next((s for s in sweeps if all(p.is_relative_to(s) for p in paths)), None)
        if command is EVALUATE and holder is not None:
            hint = command.format(holder) + " (every member of the sweep)"
        else:
            hint = command.format(paths[0])
            hint += f", and the same for the other {len(paths) - 1}" if len(paths) > 1 else ""
        notes.append(f"{metric} missing for {len(lacking)} of {len(rows)} run(s) ({names}): {hint}")
    return notes


def expand_sweeps(paths) -> tuple[list[pathlib.Path], list[str]]:
    """Run directories for ``paths``: a sweep directory stands for its finished members.
    Also returns a note per sweep with members left out (failed, unfinished)."""
    workdirs, notes = [], []
    for path in paths:
        members = analysis.sweep_members(path)
        if members is None:
            workdirs.append(path)
        else:
            workdirs += members[0]
            notes += members[1]
    return workdirs, notes


def main(argv):
    workdirs, notes = expand_sweeps([pathlib.Path(a) for a in argv[1:]])
    if not workdirs:
        raise cli.UsageError(
            "name one or more workdirs or sweep directories with finished "
            "runs: python -m experiments.report DIR ..."
        )
    for workdir in workdirs:
        Workdir(workdir).require_run()
    if FLAGS.plot and not FLAGS.group_by:
        raise cli.UsageError("--plot draws metrics against a field: give --group_by FIELD too")
    if FLAGS.x and not FLAGS.plot:
        raise cli.UsageError("--x sets --plot's x axis: give --plot FILE.png too")
    if FLAGS.by_sampler and not FLAGS.group_by:
        raise cli.UsageError("--by_sampler aggregates over seeds: give --group_by FIELD too")
    rows = [compare.run_summary(w) for w in workdirs]
    if FLAGS.layer_grid:
        layer_grid_plot(layer_grid(workdirs), pathlib.Path(FLAGS.layer_grid))
        print(f"wrote {FLAGS.layer_grid}\n")
    if FLAGS.group_by:
        groups = compare.aggregate(workdirs, FLAGS.group_by)
        print(grouped_table(groups, FLAGS.group_by))
        if FLAGS.by_sampler:
            print()
            print(sampler_table(groups, FLAGS.group_by))
        if FLAGS.plot:
            grouped_plot(
                groups,
                FLAGS.group_by,
                pathlib.Path(FLAGS.plot),
                reference_groups([pathlib.Path(r) for r in FLAGS.reference]),
                FLAGS.x,
            )
            print(f"\nwrote {FLAGS.plot}")
    else:
        print(table(rows))
    print()
    print(provenance_lines(workdirs))
    for line in config_history_lines(workdirs):
        print(line)
    sweeps = [pathlib.Path(a) for a in argv[1:] if analysis.sweep_members(a) is not None]
    for note in notes + missing_notes(rows, workdirs, sweeps):
        print(note)


def entry() -> None:
    """The console script (``pyproject.toml``): the same as ``python -m`` this module."""
    cli.run(main, positional=True)


if __name__ == "__main__":
    entry()
