"""Evaluation: the one core that scores a model on a split, the metrics it is built from,
and the quality of samples.

* ``core``: ``evaluate(model, params, EvalSet(...))`` — ELBO, reconstruction, KL, the
  importance-sampled log p(x) and active units, read batch by batch over a mesh;
* ``chunks``: batches over the devices, and chunks of importance samples sized by the
  widest array one sample adds;
* ``partial``: the scores of the batches done, kept so a killed evaluation resumes;
* ``saved_runs``: a restored run scored with its own settings (``evaluate_run``), and every
  finished member of a sweep directory (``evaluate_sweep``);
* ``metrics``: importance-sampled log-likelihood, active units, running moments, KL per
  dimension;
* ``sample_quality``: the digit classifier whose features give the classifier-feature FID
  (not the Inception FID: its weights cannot be had offline);
* ``neighbours``: precision and recall, density and coverage, and the memorisation check,
  from nearest-neighbour balls in the same feature space.

This package imports ``models``, ``data``, ``parallel`` and ``runs`` (to restore a saved
run and to store the classifier); training and analysis build on it.
"""

from cvae.evaluation.chunks import auto_chunk_size, evaluation_batch_size, sample_row_elements
from cvae.evaluation.core import EvalSet, evaluate, format_table
from cvae.evaluation.saved_runs import evaluate_run, evaluate_sweep

__all__ = [
    "EvalSet",
    "auto_chunk_size",
    "evaluate",
    "evaluate_run",
    "evaluate_sweep",
    "evaluation_batch_size",
    "format_table",
    "sample_row_elements",
]
