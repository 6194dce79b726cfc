"""Evaluation: the one core that scores a model on a split, the metrics it is built from,
and the quality of samples.

* ``core``: ``evaluate(model, params, EvalSet(...))`` — ELBO, reconstruction, KL, the
  importance-sampled log p(x) and active units, read batch by batch over a mesh;
* ``metrics``: importance-sampled log-likelihood, active units, running moments, KL per
  dimension;
* ``sample_quality``: the digit classifier whose features give the classifier-feature FID
  (not the Inception FID: its weights cannot be had offline);
* ``neighbours``: precision and recall, density and coverage, and the memorisation check,
  from nearest-neighbour balls in the same feature space.

This package imports ``models``, ``data``, ``parallel`` and, to store the classifier,
``runs``; training and analysis build on it.
"""

from cvae.evaluation.core import (
    EvalSet,
    auto_chunk_size,
    evaluate,
    evaluation_batch_size,
    format_table,
)

__all__ = ["EvalSet", "auto_chunk_size", "evaluate", "evaluation_batch_size", "format_table"]
