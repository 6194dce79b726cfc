"""The one evaluation core: ELBO terms, importance-sampled NLL and active units of a split.

Training (validation and the final test score) and ``experiments.evaluate``,
``Run.evaluate`` and the notebooks all call ``evaluate(model, params, eval_set, ...)``, so
the same params score the same numbers everywhere: the in-training test ELBO *equals*
``experiments.evaluate``'s (same batch size and device count).

How it works. The split is read from its source (``cvae.data.sources``: in host memory,
memory-mapped, or decoded from TFDS files) ``batch_size`` rows at a time, one batch read
ahead by a thread while the device scores the last; host memory holds two batches and one
row of running moments, never the split. The last batch is padded (repeating its first
row) and the padding dropped before any sum. Each batch is placed on the mesh sharded
along ``data`` and run through two compiled programs, each compiled once per shape:

* ``terms``: the per-example ELBO terms (one reparameterised sample) and the posterior
  mean, used for the active units (``metrics.RunningMoments``);
* ``log_px`` (only for K ≥ 1 and a posterior with a density): the importance-sampled
  log p(x) with K samples (``metrics.importance_sampled_log_likelihood``), ``chunk_size``
  samples at a time so that memory is bounded for any K.

Every draw is a function of the batch index: batch b uses ``fold_in(key(EVAL_SEED), b)``,
split by ``fold_in`` into the ELBO's draw (0) and the importance samples (1). Inputs use
the fixed evaluation binarization (``data.fixed_binarization``, from each row's number),
so two evaluations of the same params give the same numbers.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import math
import pathlib
import time

import jax
import numpy as np

from cvae import data, faults, parallel
from cvae import progress as progress_lib
from cvae.evaluation import metrics
from cvae.evaluation.chunks import (
    MNIST_PIXELS,
    auto_chunk_size,
    evaluation_batch_size,
    sample_row_elements,
)
from cvae.evaluation.partial import Partial, PartialScores, params_digest
from cvae.models import objectives

EVAL_SEED = 0  # the key of every evaluation draw: scores are comparable across runs


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """A split to evaluate, read row range by row range from ``source`` (anything with
    ``len``, ``info`` and ``read(indices) → (images, labels)``: ``cvae.data.sources``'s sources).

    With ``binarize`` the rows come fixed-binarized ({0, 1} uint8, bit for bit what
    binarizing the whole split gives), else as raw pixels; dividing by ``scale`` brings
    them to [0, 1]. Unlabelled sources read labels 0.
    """

    source: data.Source
    binarize: bool

    @classmethod
    def from_dataset(cls, dataset: data.Dataset, binarize: bool) -> EvalSet:
        """A split in host memory as an evaluation set.

        Args:
          dataset: the split.
          binarize: whether scored inputs are fixed-binarized (``data.binarize = "dynamic"``).

        Returns:
          The evaluation set.
        """
        return cls(data.ArraySource(dataset), binarize)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def scale(self) -> float:
        return 1.0 if self.binarize else float(self.source.info.pixel_range[1])

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``start … stop − 1`` as stored for evaluation.

        Args:
          start: the first row.
          stop: one past the last row.

        Returns:
          (compact images: fixed-binarized {0, 1} uint8 or raw pixels, int32 labels).
        """
        images, labels = self.source.read(np.arange(start, stop))
        if self.binarize:
            pixels01 = images.astype(np.float32) / self.source.info.pixel_range[1]
            images = data.fixed_binarization(pixels01, first_row=start)
        return images, np.asarray(labels, np.int32)

    def head(self, count: int) -> EvalSet:
        """The first rows, binarized as they are in the whole set.

        Args:
          count: how many rows.

        Returns:
          An evaluation set over those rows.
        """
        return EvalSet(data.Subset(self.source, np.arange(min(count, len(self)))), self.binarize)

    def unit_batches(self, size: int = 1000):
        """The whole set, a batch of rows at a time, as a model sees it.

        Args:
          size: rows per batch (the last may be shorter).

        Yields:
          (float32 images in [0, 1], int32 labels).
        """
        for start in range(0, len(self), size):
            images, labels = self.rows(start, min(start + size, len(self)))
            yield images.astype(np.float32) / self.scale, labels

    def first(self, count: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """The first rows as a model sees them.

        Args:
          count: how many rows; None for all.

        Returns:
          (float32 images in [0, 1], labels or None for unlabelled data).
        """
        batches = list(self.head(len(self) if count is None else count).unit_batches(4096))
        images = np.concatenate([b[0] for b in batches])
        labelled = self.source.info.num_classes > 0
        return images, (np.concatenate([b[1] for b in batches]) if labelled else None)


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
        _, out = objectives.elbo_loss(
            model,
            params,
            x,
            jax.random.fold_in(batch_key(batch_index), 0),
            labels=y,
            code_l2=code_l2,
        )
        out["mean"] = model.apply({"params": params}, x, y, method=model.encode).mean
        return out

    def log_px(params, raw, labels, batch_index):
        x, y = inputs(raw, labels)
        return metrics.importance_sampled_log_likelihood(
            model, params, x, jax.random.fold_in(batch_key(batch_index), 1), k, chunk_size, y
        )

    # Results come back replicated, so every process of a multi-process run can read them.
    everywhere = parallel.replicated(mesh)
    return (jax.jit(terms, out_shardings=everywhere), jax.jit(log_px, out_shardings=everywhere))


def _replicated_on(params, mesh):
    """``params`` replicated over ``mesh``: as they are when training already placed them
    there, else copied (e.g. a loaded run's params, which sit on one device)."""
    target = parallel.replicated(mesh)
    if all(
        isinstance(x, jax.Array) and x.sharding.is_equivalent_to(target, x.ndim)
        for x in jax.tree_util.tree_leaves(params)
    ):
        return params
    return parallel.replicate(params, mesh)


def evaluate(
    model,
    params,
    eval_set: EvalSet,
    *,
    k: int = 0,
    chunk_size: int = 0,
    batch_size: int = 500,
    mesh=None,
    code_l2: float = 0.0,
    progress: bool = False,
    description: str = "evaluate",
    partial_path: str | pathlib.Path | None = None,
    partial_key: dict | None = None,
) -> dict:
    """Scores ``params`` on ``eval_set``: means in nats over every example.

    Two programs, compiled once per shape, compute the ELBO terms and the importance-sampled
    log-likelihood; every draw comes from ``fold_in(key(EVAL_SEED), batch)``, so the same
    model, set, batch size and device count give the same numbers wherever it is called.

    Args:
      model: the VAE.
      params: its parameters.
      eval_set: the examples.
      k: importance samples K per example for ``nll_is``; 0 skips it (what training does).
      chunk_size: importance samples evaluated at once; 0 picks ``auto_chunk_size``.
      batch_size: examples per batch.
      mesh: the devices to shard batches over; None for every local device.
      code_l2: the RAE code penalty λ: for a deterministic posterior the ``kl`` term is
        (λ/2)‖μ‖² (0 for the plain autoencoder).
      progress: show a progress bar.
      description: the progress bar's label.
      partial_path: where to keep the partial scores after each batch
        (``cvae.evaluation.partial``), and to resume from when they are this
        evaluation's; None keeps nothing. Whoever writes the finished scores removes the
        file (``Workdir.write_eval`` does).
      partial_key: what else identifies the evaluation in that file (e.g. its split);
        the examples, batch, K, chunk, devices and a digest of the params are added.

    Returns:
      ``elbo``, ``recon``, ``kl``, ``loss`` (= −elbo),
      ``active_units`` (dimensions with Cov_x E_q[z_j] > 0.01), ``num_examples``, ``k``,
      ``code_std`` = √(mean_j Var_x E_q[z_j]) (the codes' spread, every layer's together),
      for one layer of fixed scale ``sigma0_relative`` = σ₀ / code_std, and
      ``nll_is`` = −mean log p̂(x) when K ≥ 1 and the posterior has a density; for a
      hierarchy also each layer's ``kl_l`` and ``active_units_l`` (layer 1 next to x).
    """
    if k < 0:
        raise ValueError(f"the number of importance samples K must be ≥ 0, got {k}")
    if batch_size < 1:
        raise ValueError(f"the evaluation batch size must be ≥ 1, got {batch_size}")
    if chunk_size < 0:
        raise ValueError(
            f"the importance-sample chunk size must be ≥ 0 (0 = auto), got {chunk_size}"
        )
    if len(eval_set) == 0:
        raise ValueError("the evaluation split is empty")
    mesh = mesh if mesh is not None else parallel.make_mesh(jax.local_device_count())
    n = len(eval_set)
    bs = evaluation_batch_size(batch_size, n, mesh.size)
    with_density = k > 0 and model.posterior_family != "deterministic"
    row = sample_row_elements(model) if with_density and not chunk_size else MNIST_PIXELS
    chunk = chunk_size or auto_chunk_size(bs, max(k, 1), row)
    terms, log_px = _programs(
        model, mesh, float(code_l2), float(eval_set.scale), max(k, 1), min(chunk, max(k, 1))
    )
    params = _replicated_on(params, mesh)

    def read(b):
        start, stop = b * bs, min((b + 1) * bs, n)
        images, labels = eval_set.rows(start, stop)
        pad = bs - (stop - start)  # the padding repeats the batch's first row, then is dropped
        if pad:
            images = np.concatenate([images, np.repeat(images[:1], pad, axis=0)])
            labels = np.concatenate([labels, np.repeat(labels[:1], pad)])
        return images, labels, stop - start

    # Per-layer terms for a model of several layers (one layer's are its totals).
    layer_dims = model.layer_dims if len(model.layer_dims) > 1 else ()
    layer_kls = tuple(f"kl_{i + 1}" for i in range(len(layer_dims)))
    means = ("elbo", "recon", "kl", *layer_kls)
    sums = dict.fromkeys(means + (("log_px",) if with_density else ()), 0.0)
    moments = metrics.RunningMoments()
    num_batches = math.ceil(n / bs)
    # Off a terminal there is no bar: a line says what runs and, when it has ten batches or
    # more, about ten say how far it got and how long the rest should take (at K = 1000 an
    # evaluation can take hours).
    lines = progress and not progress_lib.on_terminal()
    if lines:
        logging.getLogger("cvae").info("%s: %d examples, K=%d", description, n, k)
    lines = lines and num_batches >= 10
    every, tick = progress_lib.log_every(num_batches), time.perf_counter()
    saved, start = None, 0
    if partial_path is not None:
        key = dict(partial_key or {}, num_examples=n, batch_size=bs, k=k, chunk=chunk)
        key.update(devices=mesh.size, code_l2=float(code_l2), params=params_digest(params))
        saved = PartialScores(partial_path, key)
        restored = saved.load()
        if restored is not None and restored.next_batch <= num_batches:
            start, sums, moments = restored.next_batch, restored.sums, restored.moments
            logging.getLogger("cvae").info(
                "%s: resuming at batch %d of %d (%s)", description, start, num_batches, saved.path
            )
    with concurrent.futures.ThreadPoolExecutor(1) as reader:
        pending = reader.submit(read, start) if start < num_batches else None
        for b in progress_lib.bar(
            range(start, num_batches),
            desc=f"{description} (K={k})",
            unit="batch",
            enabled=progress,
            initial=start,
            total=num_batches,
        ):
            assert pending is not None  # submitted for every batch of the loop
            images, labels, real = pending.result()
            if b + 1 < num_batches:  # read the next batch while this one is scored
                pending = reader.submit(read, b + 1)
            raw = parallel.shard_batch(images, mesh)
            y = parallel.shard_batch(labels, mesh)
            index = np.int32(b)
            out = jax.device_get(terms(params, raw, y, index))
            if with_density:
                out["log_px"] = jax.device_get(log_px(params, raw, y, index))
            for name in sums:
                sums[name] += float(np.sum(out[name][:real], dtype=np.float64))
            moments.add(out["mean"][:real])
            if saved is not None and parallel.is_primary():  # one writer of the shared file
                saved.save(Partial(b + 1, sums, moments))
            faults.fault_point("evaluate_batch")  # the crash tests' kill between batches
            done = b + 1 - start
            if lines and ((b + 1) % every == 0 or b + 1 == num_batches):
                seconds = time.perf_counter() - tick
                logging.getLogger("cvae").info(
                    "%s: batch %d/%d, %.0f examples/s, about %s left",
                    description,
                    b + 1,
                    num_batches,
                    done * bs / seconds,
                    progress_lib.duration((num_batches - b - 1) * seconds / done),
                )
    result = {name: sums[name] / n for name in means}
    result.update(loss=-result["elbo"], active_units=moments.active_units(), num_examples=n, k=k)
    # The codes' scale: σ₀ compares across models only relative to it.
    result["code_std"] = float(np.sqrt(np.mean(moments.variance)))
    (sigma0, *upper) = model.sigma0s
    if not upper and sigma0 is not None and result["code_std"] > 0:
        result["sigma0_relative"] = float(sigma0) / result["code_std"]
    if layer_dims:  # a hierarchy's code is its layers' latents, z₁ first
        starts = np.cumsum((0, *layer_dims))
        active = moments.variance > metrics.ACTIVE_THRESHOLD
        for i in range(len(layer_dims)):
            result[f"active_units_{i + 1}"] = int(np.sum(active[starts[i] : starts[i + 1]]))
    if with_density:
        result["nll_is"] = -sums["log_px"] / n
    return result


def format_table(result: dict, posterior_family: str | None = None) -> str:
    """The scores as aligned ``name  value`` lines (what experiments.evaluate prints), each
    labelled for the model it describes.

    Args:
      result: what ``evaluate`` returns.
      posterior_family: the model's (``model.posterior_family``): the ``kl`` row of a
        deterministic encoder is its code penalty, of any other the KL; None says both.

    Returns:
      The table, one line a score.
    """
    rows = []
    labels = dict(TABLE_ROWS)
    if posterior_family is not None:
        labels["kl"] = KL_LABELS[posterior_family == "deterministic"]
    for name, _ in TABLE_ROWS:
        note = labels[name]
        if name in result:
            rows.append((name, result[name], note))
        if name == "active_units":
            rows += _layer_rows(result)
    return "\n".join(
        f"{name:>14}  {value:>10.3f}  {note}"
        if isinstance(value, float)
        else f"{name:>14}  {value!s:>10}  {note}".rstrip()
        for name, value, note in rows
    )


def _layer_rows(result: dict) -> list[tuple]:
    """A hierarchy's per-layer KL terms and active units, layer 1 (next to x) first."""
    rows = []
    layer = 1
    while f"kl_{layer}" in result:
        rows.append((f"kl_{layer}", result[f"kl_{layer}"], f"nats: layer {layer}'s KL term"))
        rows.append(
            (
                f"active_units_{layer}",
                result[f"active_units_{layer}"],
                f"layer {layer}'s dimensions with Cov_x E_q[z_j] > 0.01",
            )
        )
        layer += 1
    return rows


# What experiments.evaluate prints, with each score's unit and meaning.
TABLE_ROWS = (
    ("nll_is", "nats: −log p(x), importance-sampled with K samples (lower is better)"),
    ("elbo", "nats: the evidence lower bound (higher is better)"),
    ("recon", "nats: E_q log p(x|z)"),
    ("kl", "nats: KL(q(z|x) ‖ p(z)), or a deterministic encoder's code penalty"),
    ("active_units", "latent dimensions with Cov_x E_q[z_j] > 0.01"),
    ("code_std", "the codes' spread √(mean_j Var_x E_q[z_j])"),
    ("sigma0_relative", "σ₀ / code_std: the posterior's fixed scale against the codes'"),
    ("k", "K: importance samples per example"),
    ("split", ""),
    ("num_examples", "examples scored"),
)
# The kl row's label for a model with a density (False) and a deterministic encoder (True).
KL_LABELS = {
    False: "nats: KL(q(z|x) ‖ p(z))",
    True: "nats: the code penalty (λ/2)‖μ‖² (a deterministic encoder has no KL)",
}
