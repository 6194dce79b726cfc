"""cvae: variational autoencoders and collapsed VAEs in JAX/Flax.

Entry points: ``cvae.train.train_and_evaluate(config, workdir)`` trains a run,
``cvae.load_run(workdir)`` loads one, ``cvae.evaluation.evaluate(run)`` scores it.
"""

from cvae.run import Run, load_run

__all__ = ["Run", "load_run"]
