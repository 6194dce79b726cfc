"""Train a model: ``python -m experiments.train --config experiments/configs/NAME.py
--workdir DIR [--config.a.b=VALUE ...]``. Rerunning the same command resumes.

Several processes (hosts) train one model on JAX's multi-process runtime when given
``--coordinator_address``, ``--num_processes`` and ``--process_id`` (or ``--distributed``,
which lets JAX read them from SLURM, Open MPI or Cloud TPU, or JAX's own environment
variables such as ``JAX_COORDINATOR_ADDRESS``). Every process runs the same
command with the same workdir, which must be on a file system they all see.
"""

import logging
import os

from absl import flags
from ml_collections import config_flags

from cvae import parallel
from cvae.training import train_and_evaluate
from experiments import cli

config_flags.DEFINE_config_file(
    "config", None, "A config file from experiments/configs/.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and images.")
flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0, for a multi-process run (jax.distributed).",
)
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
flags.DEFINE_bool(
    "distributed",
    False,
    "Join a multi-process run, letting JAX detect the layout from the cluster "
    "(SLURM, Open MPI, Cloud TPU) where --coordinator_address, --num_processes and "
    "--process_id are not given.",
)
flags.DEFINE_integer(
    "heartbeat_timeout_s",
    100,
    "Seconds without a heartbeat before a process is declared dead and the "
    "others stop (multi-process runs).",
)
FLAGS = flags.FLAGS


def wants_distributed() -> bool:
    """--coordinator_address, --num_processes, --process_id, --distributed, or JAX's own
    JAX_COORDINATOR_ADDRESS."""
    given = (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    return (
        FLAGS.distributed
        or any(v is not None for v in given)
        or bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))
    )


def main(argv):
    del argv
    cli.require(FLAGS.config, "config", "e.g. --config experiments/configs/digits_cvae.py")
    workdir = cli.require(FLAGS.workdir, "workdir", "the directory the run writes into")
    if wants_distributed():  # before anything touches a device
        parallel.initialize_distributed(
            FLAGS.coordinator_address,
            FLAGS.num_processes,
            FLAGS.process_id,
            heartbeat_timeout_s=FLAGS.heartbeat_timeout_s,
        )
        if not parallel.is_primary():  # one process narrates; the others report problems
            logging.getLogger("cvae").setLevel(logging.WARNING)
    config = FLAGS.config
    try:  # a config file that failed to load raises its load error on first access
        _ = config.seed
    except AttributeError:
        pass  # not a ConfigDict at all: train_and_evaluate says so in one line
    result = train_and_evaluate(config, workdir)
    state = "interrupted (rerun to resume)" if result.interrupted else "done"
    if parallel.is_primary():
        print(f"{state}: epoch {result.epoch}, step {int(result.state['step'])}; workdir {workdir}")
    if result.interrupted:
        cli.exit_interrupted(result.stop_signal)


def entry() -> None:
    """The console script (``pyproject.toml``): the same as ``python -m`` this module."""
    cli.run(main)


if __name__ == "__main__":
    entry()
