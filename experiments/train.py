"""Train a model: ``python -m experiments.train --config experiments/configs/NAME.py
--workdir DIR [--config.a.b=VALUE ...]``. Rerunning the same command resumes."""

from absl import flags
from ml_collections import config_flags

from cvae.train import train_and_evaluate
from experiments import cli

config_flags.DEFINE_config_file("config", None, "A config file from experiments/configs/.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and images.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    cli.require(FLAGS.config, "config", "e.g. --config experiments/configs/digits_cvae.py")
    workdir = cli.require(FLAGS.workdir, "workdir", "the directory the run writes into")
    result = train_and_evaluate(FLAGS.config, workdir)
    state = "interrupted (rerun to resume)" if result.interrupted else "done"
    print(f"{state}: epoch {result.epoch}, step {int(result.state['step'])}; workdir {workdir}")


if __name__ == "__main__":
    cli.run(main)
