"""Sweep a grid × seeds: ``python -m experiments.sweep --config FILE --workdir DIR
--seeds 0:5 --grid model.sigma0=0.001,0.01,0.1,1.0 [--grid objective.beta=0.5,1]
[--config.a.b=V ...]``. Rerunning the same command resumes.

Members that differ only in hyperparameters (seed, σ₀, code penalty, β, free bits, KL
warm-up, learning rate, weight decay) train together in one compiled program; other grid
fields split the sweep into groups run one after another (``--single_program`` refuses
that instead). Each member is an ordinary run in ``DIR/<field=value>/.../seed=<s>/``;
``DIR/sweep.json`` lists members, groups and status. Summarise with
``python -m experiments.report --group_by model.sigma0 DIR``.

``--shard I/N`` trains every N-th member from I: the tasks of a cluster array job (SLURM:
``--shard $SLURM_ARRAY_TASK_ID/N``) share DIR without clobbering each other. With
``--distributed`` (or the three process flags of experiments.train) one population spans
several processes, members sharded over the ``member`` mesh axis.

Exit status: 0 when every member of this task finished, 1 when one failed (diverged:
sweep.json says which, at which step and why), 2 for a bad grid or config.
"""

import pathlib
import shlex
import sys

from experiments.cpu_cores import split_host_into_cores

# Before jax is imported: on a CPU host each core becomes a device holding its share of
# the members (measured 1.44-1.46× the solo runs' throughput on 2 cores, against
# 1.02-1.07× on one device; docs/performance.md). GPUs are unaffected.
split_host_into_cores()

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cvae import evaluation, parallel  # noqa: E402
from cvae.training import sweep  # noqa: E402
from experiments import cli  # noqa: E402

config_flags.DEFINE_config_file(
    "config", None, "A config file from experiments/configs/.", lock_config=True
)
flags.DEFINE_string("workdir", None, "The sweep's directory: one run directory per member.")
flags.DEFINE_string(
    "seeds",
    "0:1",
    "Seeds: START:STOP (0:5 for seeds 0 to 4) or a list (0,3,7); a lone number is refused.",
)
flags.DEFINE_multi_string(
    "grid",
    [],
    "FIELD=V1,V2,...: a config field and its values (repeat for a cartesian product); a "
    "tuple field's values are literals: model.upper_sigma0s=(0.01,),(0.1,).",
)
flags.DEFINE_string("shard", None, "I/N: train every N-th member from I (array jobs).")
flags.DEFINE_bool(
    "single_program",
    False,
    "Refuse a grid that needs several compiled programs (naming the field that splits it).",
)
flags.DEFINE_integer(
    "evaluate",
    None,
    "After training, evaluate every finished member on its test split with this many "
    "importance samples (0: ELBO terms and active units only) and write its eval.json, as "
    "experiments.evaluate does; the report then shows nll_is and active units.",
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (jax.distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
flags.DEFINE_bool("distributed", False, "Join a multi-process run, layout from the cluster.")
flags.DEFINE_integer(
    "heartbeat_timeout_s",
    100,
    "Seconds without a heartbeat before a process is declared dead (multi-process runs).",
)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    cli.require(FLAGS.config, "config", "e.g. --config experiments/configs/digits_cvae.py")
    directory = cli.require(FLAGS.workdir, "workdir", "the sweep's directory")
    seeds = sweep.parse_seeds(FLAGS.seeds)
    grid = sweep.parse_grid(FLAGS.grid, FLAGS.config)
    shard = sweep.parse_shard(FLAGS.shard)
    if (
        FLAGS.distributed
        or FLAGS.coordinator_address
        or FLAGS.num_processes is not None
        or FLAGS.process_id is not None
    ):
        parallel.initialize_distributed(
            FLAGS.coordinator_address,
            FLAGS.num_processes,
            FLAGS.process_id,
            heartbeat_timeout_s=FLAGS.heartbeat_timeout_s,
        )
    outcomes = sweep.run_sweep(
        FLAGS.config,
        directory,
        seeds=seeds,
        grid=grid,
        shard=shard,
        single_program=FLAGS.single_program,
        command=shlex.join(["python", "-m", "experiments.sweep", *sys.argv[1:]]),
    )
    if not parallel.is_primary():
        return
    for name, outcome in outcomes.items():
        scores = (
            f"test ELBO {outcome.final_metrics['elbo']:.2f}"
            if outcome.final_metrics
            else outcome.error or ""
        )
        print(f"{outcome.status:>13}  {name}  epoch {outcome.epoch}  {scores}")
    record = sweep.SweepFile(pathlib.Path(directory)).read()
    assert record is not None  # run_sweep has just written it
    print(f"{directory}/sweep.json: {sweep.describe(record)}")
    interrupted = [o for o in outcomes.values() if o.status == "interrupted"]
    if interrupted:
        print("interrupted: rerun the same command to resume")
        cli.exit_interrupted(interrupted[0].stop_signal)
    if FLAGS.evaluate is not None:  # the finished members: a failed one keeps its status
        results = evaluation.evaluate_sweep(directory, "test", FLAGS.evaluate)
        print(
            f"evaluated {len(results)} finished member(s) with K = {FLAGS.evaluate}: "
            "eval.json in each"
        )
    if any(o.status == "failed" for o in outcomes.values()):
        sys.exit(1)


def entry() -> None:
    """The console script (``pyproject.toml``): the same as ``python -m`` this module."""
    cli.run(main)


if __name__ == "__main__":
    entry()
