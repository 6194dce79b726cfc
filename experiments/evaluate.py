"""Evaluate a run: ``python -m experiments.evaluate --workdir DIR [--k K] [--split test]``.

Writes DIR/eval.json (nll_is, elbo, recon, kl, active_units, k, split, num_examples) and
prints a table. A sweep directory (``experiments.sweep``) evaluates every finished member
and writes each member's eval.json (members of one grid point share a compiled program).
K, the batch and the chunk default to the run's ``eval`` config
(``eval.num_importance_samples``, ``eval.batch_size``, ``eval.chunk_size``); the flags
override them. Memory is bounded for any K (importance samples are chunked). After each
batch the scores so far are kept in DIR/eval_partial.npz: a killed evaluation, rerun with
the same flags, resumes at the batch it had reached and ends with the same numbers.

On a CPU host the evaluation is split into one XLA device per core
(``experiments.cpu_cores``; set ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` to
choose). Its scores then equal the ones training logged to within float rounding, and
exactly when the device counts match (``train.num_devices`` or that flag)."""

from experiments.cpu_cores import split_host_into_cores

split_host_into_cores()  # before cvae imports jax

from absl import flags

from cvae import Workdir, evaluation
from cvae.runs import restore
from experiments import cli

flags.DEFINE_string(
    "workdir", None, "A workdir written by experiments.train, or a sweep directory."
)
flags.DEFINE_integer(
    "k",
    None,
    "Importance samples per example for nll_is, at least 1 (default: the run's "
    "eval.num_importance_samples, where 0 means no nll_is).",
)
flags.DEFINE_string(
    "split",
    "test",
    "The split to evaluate: train, validation or test (the "
    "run's data.*_split for that role), or a TFDS split string such as "
    "'train[:10%]'.",
)
flags.DEFINE_integer(
    "batch_size", None, "Examples per evaluation batch (default: the run's eval.batch_size)."
)
flags.DEFINE_integer(
    "chunk_size",
    None,
    "Importance samples evaluated at once (default: the run's eval.chunk_size; 0 = automatic).",
)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    workdir = cli.require(FLAGS.workdir, "workdir", "the directory of a trained run")
    if FLAGS.k is not None and FLAGS.k <= 0:
        raise cli.UsageError(f"--k must be ≥ 1 importance samples, got {FLAGS.k}")
    if FLAGS.batch_size is not None and FLAGS.batch_size <= 0:
        raise cli.UsageError(f"--batch_size must be ≥ 1, got {FLAGS.batch_size}")
    if FLAGS.chunk_size is not None and FLAGS.chunk_size < 0:
        raise cli.UsageError(f"--chunk_size must be ≥ 0 (0 = automatic), got {FLAGS.chunk_size}")
    if not Workdir(workdir).config_path.exists() and restore.sweep_members(workdir):
        return evaluate_sweep(workdir)
    run = restore.restore(workdir)
    result = evaluation.evaluate_run(
        run,
        FLAGS.split,
        FLAGS.k,
        batch_size=FLAGS.batch_size,
        chunk_size=FLAGS.chunk_size,
        progress=True,
        resumable=True,
    )
    path = Workdir(workdir).write_eval(result)  # and removes the partial scores
    print(evaluation.format_table(result, run.model.posterior_family))
    print(f"wrote {path}")


def evaluate_sweep(directory: str) -> None:
    """Every finished member of a sweep: eval.json each, one line each on the console."""
    members = restore.sweep_members(directory)
    assert members is not None  # main checked that it is a sweep
    finished, notes = members
    if not finished:
        raise cli.UsageError(f"the sweep in {directory} has no finished member to evaluate")
    results = evaluation.evaluate_sweep(
        directory, FLAGS.split, FLAGS.k, batch_size=FLAGS.batch_size, chunk_size=FLAGS.chunk_size
    )
    for name, scores in results.items():
        nll = f"nll_is {scores['nll_is']:.3f} nats, " if "nll_is" in scores else ""
        print(
            f"{name}: {nll}ELBO {scores['elbo']:.3f} nats, {scores['active_units']} active "
            f"units (K = {scores['k']}, {scores['split']})"
        )
    print(f"wrote eval.json in {len(results)} member(s) of {directory}")
    for note in notes:
        print(note)


def entry() -> None:
    """The console script (``pyproject.toml``): the same as ``python -m`` this module."""
    cli.run(main)


if __name__ == "__main__":
    entry()
