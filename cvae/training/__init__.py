"""Training: the compiled steps, the single-run loop and what it delegates to, and the
populations and sweeps that train many runs in one program.

* ``steps``: the optimizer, the objective of a config, the compiled epoch (on-device data)
  and the compiled chunk (streamed data);
* ``inputs``: the splits of a run, checked against its config;
* ``setup``: mesh, model, state and programs before the first epoch; resuming;
* ``guards``: the workdir lock, SIGINT/SIGTERM as a stop between epochs;
* ``bookkeeping``: ``RunBook`` — records, validation, model selection, checkpoints;
* ``loop``: ``train_and_evaluate(config, workdir)``, the loop, read top to bottom;
* ``population``: many runs that differ only in traced hyperparameters, vmapped;
* ``sweep``: seeds × grids expanded into populations, resumable, sharded over hosts;
* ``latent``: a second-stage run — a DiT trained by flow matching on a frozen tokenizer's
  code maps (or on pixels), with its own workdir, checkpoints and exact resume.

This package imports models, data, runs, evaluation and the top-level modules; only
analysis and the launchers are above it.
"""

from cvae.training.bookkeeping import TrainingDivergedError
from cvae.training.inputs import TrainingData, load_training_data
from cvae.training.loop import TrainResult, train_and_evaluate
from cvae.training.population import train_population
from cvae.training.setup import ConfigMismatchError, setup
from cvae.training.sweep import run_sweep

__all__ = [
    "ConfigMismatchError",
    "TrainResult",
    "TrainingData",
    "TrainingDivergedError",
    "load_training_data",
    "run_sweep",
    "setup",
    "train_and_evaluate",
    "train_population",
]
