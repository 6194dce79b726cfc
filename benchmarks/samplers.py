"""What the ex-post samplers cost: fitting each to a run's training codes and drawing
10,000 codes from it.

    python -m benchmarks.samplers --workdir runs/mnist_cvae [--num_codes 10000]

Reads the run's training codes (posterior means, as ``Run.ex_post`` fits them), takes the
first ``--num_codes``, and for each of gmm, flow, two_stage and diffusion times the fit and
then ``--num_samples`` draws (after one draw of the same size that compiles). Prints one
JSON object: seconds per fit and per draw, and the f32 matmul peak measured in the same
process, for scale. Results: docs/performance.md.
"""

import json
import sys
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks.common import device_name
from benchmarks.peak import matmul_peak_gflops
from cvae import load_run, samplers

flags.DEFINE_string("workdir", None, "A trained run whose training codes are fitted.")
flags.DEFINE_integer("num_codes", 10000, "Training codes each sampler is fitted to.")
flags.DEFINE_integer("num_samples", 10000, "Codes drawn from each fitted sampler.")
flags.DEFINE_list("samplers", list(samplers.EX_POST), "Samplers to time.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not FLAGS.workdir:
        sys.exit("error: --workdir names a trained run (its training codes are fitted)")
    run = load_run(FLAGS.workdir)
    codes, _ = run.training_codes()
    codes = codes[: FLAGS.num_codes]
    record = {
        "workdir": FLAGS.workdir,
        "num_codes": len(codes),
        "latent_dim": int(codes.shape[1]),
        "num_samples": FLAGS.num_samples,
        "device": device_name(),
        "matmul_peak_gflops": matmul_peak_gflops(),
    }
    for kind in FLAGS.samplers:
        start = time.perf_counter()
        sampler = samplers.fit(kind, codes, jax.random.key(0), seed=0)
        record[f"fit_s_{kind}"] = round(time.perf_counter() - start, 2)
        jax.block_until_ready(sampler.sample(jax.random.key(1), FLAGS.num_samples))  # compiles
        start = time.perf_counter()
        drawn = jax.block_until_ready(sampler.sample(jax.random.key(2), FLAGS.num_samples))
        record[f"sample_s_{kind}"] = round(time.perf_counter() - start, 3)
        assert np.all(np.isfinite(np.asarray(drawn)))
        print(f"{kind}: fit {record[f'fit_s_{kind}']} s, sample {record[f'sample_s_{kind}']} s")
    print(json.dumps(record))


if __name__ == "__main__":
    app.run(main)
