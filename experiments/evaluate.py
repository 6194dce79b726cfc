"""Evaluate a run: ``python -m experiments.evaluate --workdir DIR [--k 5000] [--split test]``.

Writes DIR/eval.json (nll_is, elbo, recon, kl, active_units, k, split, num_examples) and
prints a table. Memory is bounded for any K (importance samples are chunked)."""

from absl import flags

from cvae import evaluation, load_run
from experiments import cli

flags.DEFINE_string("workdir", None, "A workdir written by experiments.train.")
flags.DEFINE_integer("k", 5000, "Importance samples per example for nll_is.")
flags.DEFINE_string("split", "test", "The split to evaluate.")
flags.DEFINE_integer("batch_size", 100, "Examples per evaluation batch.")
flags.DEFINE_integer("chunk_size", 250, "Importance samples evaluated at once.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    workdir = cli.require(FLAGS.workdir, "workdir", "the directory of a trained run")
    if FLAGS.k <= 0:
        raise cli.UsageError(f"--k must be ≥ 1 importance samples, got {FLAGS.k}")
    run = load_run(workdir)
    result = evaluation.evaluate(run, FLAGS.split, FLAGS.k, FLAGS.batch_size, FLAGS.chunk_size)
    path = evaluation.write_eval(workdir, result)
    print(evaluation.format_table(result))
    print(f"wrote {path}")


if __name__ == "__main__":
    cli.run(main)
