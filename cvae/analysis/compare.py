"""Comparing runs: one summary row per run (its config essentials, scores, sample quality,
throughput and size), runs grouped by config fields with statistics over seeds (mean,
standard deviation and the 95% interval of Student's t), and learning curves. What
``experiments.report``, ``experiments.figures`` and the comparison notebook read.
"""

from __future__ import annotations

import difflib

import numpy as np

from cvae import config as config_lib
from cvae import samplers
from cvae.runs import checkpoint
from cvae.runs.workdir import as_workdir, read_json


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
        # a code map's size follows the images: say its channels
        "latent_dim": (
            f"map ×{config['model']['code_channels']}"
            if config["model"]["arch"] == "conv_map"
            else config["model"]["latent_dim"]
        ),
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
            for k in (
                *("nll_is", "elbo", "recon", "kl", "active_units", "k"),
                *("code_std", "sigma0_relative", *LAYER_METRICS),
            )
            if k in evaluation
        }
    )
    quality = wd.read_sample_quality() or {}
    prefixes = tuple(f"{m}_" for m in (*SAMPLE_METRICS, "accuracy"))
    row.update({k: v for k, v in quality.items() if k.startswith(prefixes)})
    # Latent DiTs trained on this run's codes, each scored into its own directory.
    for name in LATENT_RUNS:
        scored = read_json(wd / name / wd.SAMPLE_QUALITY) or {}
        row.update(
            {
                k.replace("_latent_diffusion", f"_{name}"): v
                for k, v in scored.items()
                if k.startswith(prefixes) and k.endswith("_latent_diffusion")
            }
        )
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
# The directories of latent DiTs a tokenizer's row reports (experiments/latent_study.sh
# trains the pixel baseline of a seed inside that seed's σ₀ = 0.1 tokenizer).
LATENT_RUNS = ("latent_diffusion", "pixel_diffusion")
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
    "code_std",
    "sigma0_relative",
    *LAYER_METRICS,
    *(
        f"{metric}_{sampler}"
        for metric in SAMPLE_METRICS
        for sampler in samplers.SAMPLERS + samplers.TOP_SAMPLERS + LATENT_RUNS
    ),
    "accuracy_prior",
    "accuracy_gmm",
    "accuracy_diffusion",
)


def deeper_top_samplers(keys) -> tuple[str, ...]:
    """The KIND@topN samplers (N ≥ 2: fits to a deep hierarchy's top layers) that the
    sample scores among ``keys`` name, sorted; the fixed KIND@top ones are in
    ``SUMMARY_METRICS`` already.

    Args:
      keys: score names, e.g. a run summary's ("fid_gmm@top3", …).

    Returns:
      The sampler names, e.g. ("gmm@top3",).
    """
    found = set()
    for key in keys:
        for metric in SAMPLE_METRICS:
            sampler = key.removeprefix(f"{metric}_")
            if (
                sampler != key
                and samplers.is_top_sampler(sampler)
                and sampler not in samplers.TOP_SAMPLERS
            ):
                found.add(sampler)
    return tuple(sorted(found))


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
    deeper = deeper_top_samplers({key for row in rows for key in row})
    for metric in (*SUMMARY_METRICS, *(f"{m}_{s}" for m in SAMPLE_METRICS for s in deeper)):
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
