"""Populations against solo runs: N runs (seeds seed … seed+N−1) trained one after another
with ``train_and_evaluate``, then the same N as one population
(``cvae.training.population``, one compiled program).

    python -m benchmarks.population --members 8 --arch iwae --batch-size 20
    python -m benchmarks.population --members 8 --dataset npz:mnist.npz   # MNIST saved as npz

The device layout is the one ``experiments.sweep`` uses, and it is printed: on a CPU host
the cores are split into one device each (``experiments.cpu_cores``) and the population's
members spread over them, while each solo run takes one device, as ``experiments.train``
does. Set ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` to choose another
layout. It reports both throughputs summed over members, their ratio, each member's test
−ELBO beside its solo run's, and the memory a member costs. Results: docs/performance.md.
"""

from experiments.cpu_cores import split_host_into_cores

split_host_into_cores()  # before jax starts: the sweep's layout, one device per core

import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks.common import (  # noqa: E402
    FLAGS,
    bench_config,
    dense_flops_per_example,
    device_name,
    epoch_examples,
    peak_rss_mb,
    timed_throughput,
)
from benchmarks.peak import matmul_peak_gflops  # noqa: E402
from cvae import Workdir  # noqa: E402
from cvae import config as config_lib  # noqa: E402
from cvae.training import population, train_and_evaluate  # noqa: E402
from experiments import cli  # noqa: E402

flags.DEFINE_integer("members", 8, "Runs trained solo, then as one population.")


def members_one(arch, batch_size, epochs, init, seed, data_dir, members, peak_gflops) -> dict:
    """N solo runs one after another, then the same N as one population (see above)."""
    if epochs < 2 or members < 1:
        raise cli.UsageError("--epochs must be ≥ 2 (the first compiles) and --members ≥ 1")
    configs = [
        bench_config(arch, batch_size, epochs, init, seed + i, data_dir) for i in range(members)
    ]
    for cfg in configs:  # the population spreads over every device, (member × data) ...
        cfg.train.num_devices = 0
    solo_configs = [config_lib.from_dict(c.to_dict()) for c in configs]
    for cfg in solo_configs:  # ... a run alone takes one (what experiments.train does on CPU)
        cfg.train.num_devices = 1
    with tempfile.TemporaryDirectory(prefix="cvae_bench_") as workdir:
        solo_s, solo_elbo = 0.0, []
        for i, cfg in enumerate(solo_configs):
            result = train_and_evaluate(cfg, f"{workdir}/solo{i}")
            records = Workdir(f"{workdir}/solo{i}").read_metrics("train")
            per_epoch_examples = epoch_examples(records, batch_size)
            _, epoch_s = timed_throughput(records, per_epoch_examples)
            solo_s += sum(epoch_s[1:])
            solo_elbo.append(-result.final_metrics["elbo"])
        solo_rss = peak_rss_mb()
        pop = population.train_population(configs, [f"{workdir}/member{i}" for i in range(members)])
        pop_throughput, pop_epoch_s = timed_throughput(
            Workdir(f"{workdir}/member0").read_metrics("train"), per_epoch_examples, members
        )
    solo_throughput = members * per_epoch_examples * (epochs - 1) / solo_s
    state_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(pop.state)) / members
    flops = dense_flops_per_example(arch)
    return {
        "peer": "cvae",
        "benchmark": "population",
        "arch": arch,
        "batch_size": batch_size,
        "epochs": epochs,
        "members": members,
        "seeds": [seed, seed + members - 1],
        "solo_examples_per_s": solo_throughput,
        "population_examples_per_s": pop_throughput,
        "population_over_solo": pop_throughput / solo_throughput,
        "population_epoch_s": pop_epoch_s,
        "solo_test_neg_elbo": solo_elbo,
        "population_test_neg_elbo": [-o.final_metrics["elbo"] for o in pop.outcomes],
        "state_bytes_per_member": state_bytes,
        "peak_rss_mb_solo": solo_rss,
        "peak_rss_mb_population": peak_rss_mb(),
        "matmul_peak_gflops": peak_gflops,
        "fraction_of_peak_solo": solo_throughput * flops / (peak_gflops * 1e9),
        "fraction_of_peak_population": pop_throughput * flops / (peak_gflops * 1e9),
        "member_devices": int(pop.state["step"].sharding.mesh.shape["member"]),
        "device": device_name(),
    }


def main(argv):
    del argv
    print(
        f"device layout: {device_name()} (the population spreads over all of them; each "
        "solo run takes one)",
        file=sys.stderr,
        flush=True,
    )
    print(
        json.dumps(
            members_one(
                FLAGS.arch,
                FLAGS.batch_size,
                FLAGS.epochs,
                FLAGS.init,
                FLAGS.seed,
                FLAGS.data_dir,
                FLAGS.members,
                matmul_peak_gflops(),
            )
        )
    )


if __name__ == "__main__":
    cli.run(main)
