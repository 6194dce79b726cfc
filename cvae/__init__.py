"""cvae: variational autoencoders and collapsed VAEs in JAX/Flax.

Entry points: ``cvae.training.train_and_evaluate(config, workdir)`` trains a run,
``cvae.load_run(workdir)`` loads one and ``run.evaluate(split, k)`` scores it through the
one evaluation core, ``cvae.evaluation.evaluate(model, params, eval_set, k=...)``.
``cvae.Workdir`` names every file of a run directory.

The package, by concept. Imports flow one way, from a layer to the layers beneath it,
never up and never in a cycle; no import hides inside a function to dodge one
(``tests/test_architecture.py`` walks the imports and checks this):

====================  ==============================================================
layer (bottom first)  holds
====================  ==============================================================
``errors``,           the config error and its one-line check; how a config field
``schema``,           is declared; fault points for tests; the device mesh and the
``faults``,           processes of a run
``parallel``
``models``            the model protocol, nets, posteriors, likelihoods, the designs, bounds
``config``            the schema: every field, its default, validation once
``data``              data sets, splits, preprocessing, sources, the Grain stream
``runs``              the workdir layout, checkpoints (orbax), writers, provenance
``evaluation``        the evaluation core, metrics, sample quality
``samplers``          ex-post densities over codes, one module a kind, and their store
``training``          compiled steps, setup and resume, the loop, populations, sweeps
``analysis``          ``load_run``/``Run``, notebook helpers
====================  ==============================================================

The launchers in ``experiments/`` and the tools in ``benchmarks/`` sit above the package.
"""

from cvae.analysis.run import Run, load_run
from cvae.runs.workdir import Workdir

__all__ = ["Run", "Workdir", "load_run"]
