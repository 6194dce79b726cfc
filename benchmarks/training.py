"""Training throughput on MNIST through ``train_and_evaluate``, as examples/s and as a
fraction of the f32 matmul peak measured in the same process.

    python -m benchmarks.training --arch seed --batch-size 128 --epochs 3 --init lecun --seed 0
    python -m benchmarks.training --sweep        # archs × batch sizes 20, 128, 1024

Results and what they mean: docs/performance.md.
"""

import json
import tempfile

from absl import flags

from benchmarks.common import (
    FLAGS,
    bench_config,
    dense_flops_per_example,
    device_name,
    epoch_examples,
    peak_rss_mb,
    timed_throughput,
)
from benchmarks.peak import matmul_peak_gflops
from cvae import Workdir
from cvae.training import train_and_evaluate
from experiments import cli

flags.DEFINE_bool("sweep", False, "Print a table over archs and batch sizes 20, 128, 1024.")
flags.DEFINE_integer("stream_workers", 0, "Reader processes when the data are streamed.")


def run_one(
    arch, batch_size, epochs, init, seed, data_dir, peak_gflops, pipeline: str = "device"
) -> dict:
    if epochs < 2:
        raise cli.UsageError("--epochs must be ≥ 2 (the first epoch compiles and is not timed)")
    cfg = bench_config(arch, batch_size, epochs, init, seed, data_dir)
    cfg.data.pipeline, cfg.data.stream_workers = pipeline, FLAGS.stream_workers
    with tempfile.TemporaryDirectory(prefix="cvae_bench_") as workdir:
        result = train_and_evaluate(cfg, workdir)
        records = Workdir(workdir).read_metrics("train")
    throughput, epoch_s = timed_throughput(records, epoch_examples(records, batch_size))
    flops = dense_flops_per_example(arch)
    return {
        "peer": "cvae",
        "arch": arch,
        "batch_size": batch_size,
        "epochs": epochs,
        "seed": seed,
        "init": init,
        "train_examples_per_s": throughput,
        "first_epoch_s": epoch_s[0],
        "epoch_s": epoch_s,
        "test_neg_elbo": -result.final_metrics["elbo"],
        "peak_rss_mb": peak_rss_mb(),
        "matmul_peak_gflops": peak_gflops,
        "flops_per_example": flops,
        "fraction_of_peak": throughput * flops / (peak_gflops * 1e9),
        "device": device_name(),
    }


def main(argv):
    del argv
    peak = matmul_peak_gflops()
    if not FLAGS.sweep:
        print(
            json.dumps(
                run_one(
                    FLAGS.arch,
                    FLAGS.batch_size,
                    FLAGS.epochs,
                    FLAGS.init,
                    FLAGS.seed,
                    FLAGS.data_dir,
                    peak,
                )
            )
        )
        return
    rows = []
    for arch in ("seed", "torch_example", "iwae"):
        for batch_size in (20, 128, 1024):
            rows.append(
                run_one(
                    arch, batch_size, FLAGS.epochs, FLAGS.init, FLAGS.seed, FLAGS.data_dir, peak
                )
            )
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nmatmul peak {peak:.1f} GFLOP/s on {rows[0]['device']}\n")
    print("| arch | batch | examples/s | fraction of peak | first epoch s | test −ELBO |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['arch']} | {r['batch_size']} | {r['train_examples_per_s']:,.0f} | "
            f"{r['fraction_of_peak']:.2f} | {r['first_epoch_s']:.1f} | "
            f"{r['test_neg_elbo']:.1f} |"
        )


if __name__ == "__main__":
    cli.run(main)
