"""Summarise evaluated runs as a Markdown table: ``python -m experiments.report DIR [DIR ...]``.

Reads each workdir's config.json, metrics.jsonl, eval.json (run experiments.evaluate
first), sample_quality.json (experiments.sample_quality) and checkpoint metadata, so every
number in the README's results tables can be regenerated; under the table, each run's
provenance (commit, library versions, device).
"""

import pathlib

from absl import flags

from cvae import Workdir, explore, provenance
from experiments import cli

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
    print(table(workdirs))
    print()
    print(provenance_lines(workdirs))


if __name__ == "__main__":
    cli.run(main, positional=True)
