"""Evaluating a trained run on a split: ELBO terms, importance-sampled NLL, active units.

Inputs use the fixed evaluation binarization, and the importance samples come from a
fixed key, so two evaluations of the same run give the same numbers. Work proceeds in
fixed-size batches (the last one padded and masked) and, within a batch, in chunks of
importance samples: memory stays bounded for any K, and one compilation serves all.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from cvae import data, metrics, objectives
from cvae.run import Run

EVAL_SEED = 0


def evaluate(run: Run, split: str = "test", k: int = 5000, batch_size: int = 100,
             chunk_size: int = 250, progress: bool = True) -> dict:
    """Mean test metrics in nats: nll_is (= −log p̂(x), absent without a density), elbo,
    recon, kl, active_units, plus k, split and num_examples."""
    if k <= 0:
        raise ValueError(f"the number of importance samples K must be ≥ 1, got {k}")
    cfg = run.config
    dataset = data.load(cfg.data.name, split, cfg.data.data_dir)
    images = data.evaluation_images(dataset, cfg.data.binarize == "dynamic")
    scale = data.evaluation_scale(dataset, cfg.data.binarize == "dynamic")
    conditional = run.model.num_classes > 0
    has_density = run.model.posterior_family != "deterministic"
    model, n = run.model, len(images)
    batch_size = min(batch_size, n)

    @jax.jit
    def one_batch(params, raw, labels, key):
        x = raw.astype(jnp.float32) / scale
        labels = labels if conditional else None
        _, terms = objectives.elbo_loss(model, params, x, jax.random.fold_in(key, 0),
                                        labels=labels, code_l2=cfg.model.code_l2)
        terms["mean"] = model.apply({"params": params}, x, labels, method=model.encode).mean
        if has_density:
            terms["log_px"] = metrics.importance_sampled_log_likelihood(
                model, params, x, jax.random.fold_in(key, 1), k, chunk_size, labels)
        return terms

    labels = dataset.labels if dataset.labels is not None else np.zeros(n, np.int32)
    collected = []
    key = jax.random.key(EVAL_SEED)
    for b in tqdm(range(math.ceil(n / batch_size)), desc=f"evaluate {split} (K={k})",
                  disable=not progress, unit="batch"):
        idx = np.arange(b * batch_size, (b + 1) * batch_size) % n  # wrap, then drop the pad
        real = min(batch_size, n - b * batch_size)
        out = jax.device_get(one_batch(run.params, images[idx], labels[idx],
                                       jax.random.fold_in(key, b)))
        collected.append({name: value[:real] for name, value in out.items()})
    joined = {name: np.concatenate([c[name] for c in collected]) for name in collected[0]}
    active, _ = metrics.active_units(joined["mean"])
    result = {"elbo": float(joined["elbo"].mean()), "recon": float(joined["recon"].mean()),
              "kl": float(joined["kl"].mean()), "active_units": active, "k": k,
              "split": split, "num_examples": n}
    if has_density:
        result["nll_is"] = float(-joined["log_px"].mean())
    return result


def write_eval(workdir, result: dict):
    """Writes ``workdir/eval.json`` atomically (a failed evaluation leaves the old one)."""
    import pathlib

    from cvae.writers import write_json_atomic

    path = pathlib.Path(workdir) / "eval.json"
    write_json_atomic(path, result)
    return path


def format_table(result: dict) -> str:
    rows = [(name, result[name]) for name in ("nll_is", "elbo", "recon", "kl", "active_units",
                                              "k", "split", "num_examples") if name in result]
    return "\n".join(f"{name:>14}  {value:.3f}" if isinstance(value, float)
                     else f"{name:>14}  {value}" for name, value in rows)
