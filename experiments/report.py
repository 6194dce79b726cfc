"""Summarise evaluated runs as a Markdown table: ``python -m experiments.report DIR [DIR ...]``.

With ``--group_by FIELD`` (a dotted config field, e.g. ``model.sigma0``), one row per value
of that field instead: the number of runs (seeds) and, for every metric the runs have, the
mean ± the half-width of its 95% confidence interval (Student's t over the seeds);
``--plot FILE.png`` draws each metric against the field with those error bars (a log axis
when the values span two decades or more).

Reads each workdir's config.json, metrics.jsonl, eval.json (run experiments.evaluate
first), sample_quality.json (experiments.sample_quality) and checkpoint metadata, so every
number in the README's results tables can be regenerated; under the table, each run's
provenance (commit, library versions, device).
"""

import pathlib

import numpy as np
from absl import flags

from cvae import Workdir, explore, provenance
from experiments import cli

flags.DEFINE_string("group_by", None, "Aggregate runs over seeds by this config field.")
flags.DEFINE_string("plot", None, "With --group_by: a PNG of each metric against the field.")
FLAGS = flags.FLAGS
COLUMNS = [("run", "{}"), ("posterior", "{}"), ("objective", "{}"), ("sigma0", "{:g}"),
           ("latent_dim", "{}"), ("epochs", "{}"), ("wall_s", "{:.0f}"),
           ("examples_per_s", "{:,.0f}"),
           ("nll_is", "{:.2f}"), ("elbo", "{:.2f}"), ("recon", "{:.2f}"), ("kl", "{:.2f}"),
           ("active_units", "{}"), ("k", "{}"), ("params", "{:,}"), ("fid_prior", "{:.2f}"),
           ("fid_gmm", "{:.2f}"), ("accuracy_prior", "{:.3f}"), ("accuracy_gmm", "{:.3f}")]


def provenance_lines(workdirs) -> str:
    """Under a table: where each distinct provenance came from, and which runs share it."""
    groups: dict[str, list[str]] = {}
    for workdir in workdirs:
        wd = Workdir(workdir)
        groups.setdefault(provenance.describe(wd.read_provenance()), []).append(wd.name)
    return "\n".join(f"Runs {', '.join(names)}: {line}." for line, names in groups.items())


def grouped_table(groups, field: str) -> str:
    """The Markdown table of ``explore.aggregate``: mean ± 95% CI half-width per metric."""
    metrics = [m for m in explore.SUMMARY_METRICS if any(m in g for g in groups)]
    lines = [f"| {field} | runs | " + " | ".join(metrics) + " |",
             "|" + " --- |" * (len(metrics) + 2)]
    for group in groups:
        cells = []
        for metric in metrics:
            if metric not in group:
                cells.append("—")
                continue
            mean, _, half = group[metric]
            cells.append(f"{mean:.2f}" if np.isnan(half) else f"{mean:.2f} ± {half:.2f}")
        lines.append(f"| {group['value']} | {group['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grouped_plot(groups, field: str, path: pathlib.Path) -> None:
    """Each metric against ``field`` with 95% CI error bars (numeric fields only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [g["value"] for g in groups]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise cli.UsageError(f"--plot needs a numeric --group_by field; {field} takes {values}")
    metrics = [m for m in explore.SUMMARY_METRICS if any(m in g for g in groups)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        shown = [g for g in groups if metric in g]
        mean = [g[metric][0] for g in shown]
        half = [0.0 if np.isnan(g[metric][2]) else g[metric][2] for g in shown]
        ax.errorbar([g["value"] for g in shown], mean, yerr=half, marker="o", capsize=3)
        positive = [v for v in values if v > 0]
        if len(positive) == len(values) and max(positive) / min(positive) >= 100:
            ax.set_xscale("log")
        ax.set(title=metric, xlabel=field)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)


def table(workdirs) -> str:
    lines = ["| " + " | ".join(name for name, _ in COLUMNS) + " |",
             "|" + " --- |" * len(COLUMNS)]
    for workdir in workdirs:
        row = explore.run_summary(workdir)
        cells = [fmt.format(row[name]) if row.get(name) is not None else "—"
                 for name, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    workdirs = [pathlib.Path(a) for a in argv[1:]]
    if not workdirs:
        raise cli.UsageError("name one or more workdirs: python -m experiments.report DIR ...")
    for workdir in workdirs:
        Workdir(workdir).require_run()
    if FLAGS.plot and not FLAGS.group_by:
        raise cli.UsageError("--plot draws metrics against a field: give --group_by FIELD too")
    if FLAGS.group_by:
        groups = explore.aggregate(workdirs, FLAGS.group_by)
        print(grouped_table(groups, FLAGS.group_by))
        if FLAGS.plot:
            grouped_plot(groups, FLAGS.group_by, pathlib.Path(FLAGS.plot))
            print(f"\nwrote {FLAGS.plot}")
    else:
        print(table(workdirs))
    print()
    print(provenance_lines(workdirs))


if __name__ == "__main__":
    cli.run(main, positional=True)
