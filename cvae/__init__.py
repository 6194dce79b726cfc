"""cvae: variational autoencoders and collapsed VAEs in JAX/Flax.

Entry points: ``cvae.train.train_and_evaluate(config, workdir)`` trains a run,
``cvae.load_run(workdir)`` loads one and ``run.evaluate(split, k)`` scores it through the
one evaluation core, ``cvae.evaluation.evaluate(model, params, eval_set, k=...)``.
``cvae.Workdir`` names every file of a run directory.
"""

from cvae.run import Run, load_run
from cvae.workdir import Workdir

__all__ = ["Run", "Workdir", "load_run"]
