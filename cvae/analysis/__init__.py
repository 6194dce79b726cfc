"""Analysis: a trained run as an object (``load_run``/``Run``), the ex-post samplers that
draw from a collapsed or deterministic model's latent space, and the helpers the notebooks
use to explore and compare runs.

* ``run``: ``load_run(workdir)`` → ``Run`` (encode, decode, sample, interpolate, evaluate);
* ``ex_post``: densities fitted to training codes — ``gmm``, ``flow``, ``two_stage`` —
  with one interface (``fit(kind, codes, key)``, ``sample(key, n)``, ``log_prob(z)``),
  saved in the workdir;
* ``explore``: tables of runs, learning curves, latent statistics for notebooks.

This package sits at the top of the library: it may import everything beneath it.
"""

from cvae.analysis.run import (
    Run,
    evaluate_sweep,
    load_config,
    load_run,
    sweep_members,
)

__all__ = ["Run", "evaluate_sweep", "load_config", "load_run", "sweep_members"]
