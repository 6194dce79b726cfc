"""Analysis: a trained run as an object (``load_run``/``Run``) and the helpers the notebooks
use to explore and compare runs.

* ``run``: ``load_run(workdir)`` → ``Run`` (encode, decode, sample — through the ex-post
  samplers of ``cvae.samplers`` where asked — interpolate, evaluate);
* ``explore``: one run's latent space — projections, traversals, manifolds, diagnostics;
* ``compare``: many runs — summary rows, groups with statistics over seeds, learning curves.

This package sits at the top of the library: it may import everything beneath it.
"""

from cvae.analysis.run import Run, load_config, load_run
from cvae.evaluation.saved_runs import evaluate_sweep
from cvae.runs.restore import sweep_members

__all__ = ["Run", "evaluate_sweep", "load_config", "load_run", "sweep_members"]
