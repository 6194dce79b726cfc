"""The one evaluation core: ELBO terms, importance-sampled NLL and active units of a split.

Training (validation and the final test score) and ``experiments.evaluate``,
``Run.evaluate`` and the notebooks all call ``evaluate(model, params, eval_set, ...)``, so
the same params score the same numbers everywhere: the in-training test ELBO *equals*
``experiments.evaluate``'s (same batch size and device count).

How it works. The split is cut into batches of ``batch_size`` (the last one padded; the
padding is dropped before any mean). Each batch is placed on the mesh sharded along
``data`` and run through two compiled programs, each compiled once per shape:

* ``terms``: the per-example ELBO terms (one reparameterised sample) and the posterior
  mean, used for the active units;
* ``log_px`` (only for K ≥ 1 and a posterior with a density): the importance-sampled
  log p(x) with K samples (``metrics.importance_sampled_log_likelihood``), ``chunk_size``
  samples at a time so that memory is bounded for any K.

Every draw is a function of the batch index: batch b uses ``fold_in(key(EVAL_SEED), b)``,
split by ``fold_in`` into the ELBO's draw (0) and the importance samples (1). Inputs use
the fixed evaluation binarization (``data.evaluation_images``), so two evaluations of the
same params give the same numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import numpy as np
from tqdm import tqdm

from cvae import data, metrics, objectives, parallel

EVAL_SEED = 0  # the key of every evaluation draw: scores are comparable across runs
CHUNK_ROWS = 5000  # decoder rows per importance-sampling chunk when chunk_size = 0 (auto)


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """A split ready for evaluation, compact on the host.

    ``images`` are fixed-binarized {0, 1} uint8, or the raw pixels; dividing by ``scale``
    brings them to [0, 1]. ``labels`` are int32, or None for unlabelled data.
    """

    images: np.ndarray
    labels: np.ndarray | None
    scale: float

    @classmethod
    def from_dataset(cls, dataset: data.Dataset, binarize: bool) -> EvalSet:
        """The evaluation inputs of ``dataset`` (fixed binarization when ``binarize``)."""
        return cls(data.evaluation_images(dataset, binarize), dataset.labels,
                   data.evaluation_scale(dataset, binarize))

    def __len__(self) -> int:
        return len(self.images)

    def unit_interval(self, count: int | None = None) -> np.ndarray:
        """The first ``count`` images as float32 in [0, 1] (what the model sees)."""
        return self.images[:count].astype(np.float32) / self.scale


def auto_chunk_size(batch_size: int, k: int) -> int:
    """Importance samples per chunk giving about ``CHUNK_ROWS`` decoder rows.

    Measured on XLA:CPU (seed architecture): 5,000 rows keep the decoder's output near the
    cache and amortise the loop's per-iteration cost; 25,000 rows ran at half the speed.
    """
    return max(1, min(k, CHUNK_ROWS // max(batch_size, 1)))


def evaluation_batch_size(batch_size: int, num_examples: int, num_devices: int) -> int:
    """The batch actually used: no larger than the data needs, divisible over devices."""
    size = min(batch_size, num_examples)
    return -(-size // num_devices) * num_devices


@functools.lru_cache(maxsize=32)
def _programs(model, mesh, code_l2: float, scale: float, k: int, chunk_size: int):
    """The two jitted batch programs (cached: one compilation per shape and setting)."""
    batch_sharding = parallel.batch_sharded(mesh)
    conditional = model.num_classes > 0

    def inputs(raw, labels):
        raw = jax.lax.with_sharding_constraint(raw, batch_sharding)
        return data.to_unit_interval(raw, scale), (labels if conditional else None)

    def batch_key(batch_index):
        return jax.random.fold_in(jax.random.key(EVAL_SEED), batch_index)

    def terms(params, raw, labels, batch_index):
        x, y = inputs(raw, labels)
        _, out = objectives.elbo_loss(model, params, x,
                                      jax.random.fold_in(batch_key(batch_index), 0),
                                      labels=y, code_l2=code_l2)
        out["mean"] = model.apply({"params": params}, x, y, method=model.encode).mean
        return out

    def log_px(params, raw, labels, batch_index):
        x, y = inputs(raw, labels)
        return metrics.importance_sampled_log_likelihood(
            model, params, x, jax.random.fold_in(batch_key(batch_index), 1), k, chunk_size, y)

    # Results come back replicated, so every process of a multi-process run can read them.
    everywhere = parallel.replicated(mesh)
    return (jax.jit(terms, out_shardings=everywhere),
            jax.jit(log_px, out_shardings=everywhere))


def _replicated_on(params, mesh):
    """``params`` replicated over ``mesh``: as they are when training already placed them
    there, else copied (e.g. a loaded run's params, which sit on one device)."""
    target = parallel.replicated(mesh)
    if all(isinstance(x, jax.Array) and x.sharding.is_equivalent_to(target, x.ndim)
           for x in jax.tree_util.tree_leaves(params)):
        return params
    return parallel.replicate(params, mesh)


def evaluate(model, params, eval_set: EvalSet, *, k: int = 0, chunk_size: int = 0,
             batch_size: int = 500, mesh=None, code_l2: float = 0.0,
             progress: bool = False, description: str = "evaluate") -> dict:
    """Scores ``params`` on ``eval_set``; means in nats over every example.

    Returns ``elbo``, ``recon``, ``kl``, ``loss`` (= −elbo), ``active_units`` (dimensions
    with Cov_x E_q[z_j] > 0.01), ``num_examples``, ``k``, and ``nll_is`` = −mean log p̂(x)
    when K ≥ 1 and the posterior has a density (K = 0 skips it: what training does).
    ``chunk_size`` 0 picks ``auto_chunk_size``. ``mesh`` defaults to every local device.
    """
    if k < 0:
        raise ValueError(f"the number of importance samples K must be ≥ 0, got {k}")
    if batch_size < 1:
        raise ValueError(f"the evaluation batch size must be ≥ 1, got {batch_size}")
    if chunk_size < 0:
        raise ValueError(f"the importance-sample chunk size must be ≥ 0 (0 = auto), got "
                         f"{chunk_size}")
    if len(eval_set) == 0:
        raise ValueError("the evaluation split is empty")
    mesh = mesh if mesh is not None else parallel.make_mesh(jax.local_device_count())
    n = len(eval_set)
    bs = evaluation_batch_size(batch_size, n, mesh.size)
    with_density = k > 0 and model.posterior_family != "deterministic"
    chunk = chunk_size or auto_chunk_size(bs, max(k, 1))
    terms, log_px = _programs(model, mesh, float(code_l2), float(eval_set.scale), max(k, 1),
                              min(chunk, max(k, 1)))
    params = _replicated_on(params, mesh)
    labels = (eval_set.labels if eval_set.labels is not None
              else np.zeros(n, np.int32)).astype(np.int32)
    collected = []
    num_batches = math.ceil(n / bs)
    for b in tqdm(range(num_batches), desc=f"{description} (K={k})", unit="batch",
                  disable=not progress):
        rows = np.arange(b * bs, (b + 1) * bs)
        real = rows < n
        rows = np.where(real, rows, 0)  # padding repeats example 0, then is dropped
        raw = parallel.shard_batch(eval_set.images[rows], mesh)
        y = parallel.shard_batch(labels[rows], mesh)
        index = np.int32(b)
        out = jax.device_get(terms(params, raw, y, index))
        if with_density:
            out["log_px"] = jax.device_get(log_px(params, raw, y, index))
        collected.append({name: value[real] for name, value in out.items()})
    joined = {name: np.concatenate([c[name] for c in collected]) for name in collected[0]}
    active, _ = metrics.active_units(joined["mean"])
    result = {name: float(np.mean(joined[name], dtype=np.float64))
              for name in ("elbo", "recon", "kl")}
    result.update(loss=-result["elbo"], active_units=active, num_examples=n, k=k)
    if with_density:
        result["nll_is"] = float(-np.mean(joined["log_px"], dtype=np.float64))
    return result


def format_table(result: dict) -> str:
    """The scores as aligned ``name  value`` lines (what experiments.evaluate prints)."""
    rows = [(name, result[name]) for name in ("nll_is", "elbo", "recon", "kl", "active_units",
                                              "k", "split", "num_examples") if name in result]
    return "\n".join(f"{name:>14}  {value:.3f}" if isinstance(value, float)
                     else f"{name:>14}  {value}" for name, value in rows)
