"""The main job (`make run`): train the digits quickstart, evaluate it, draw samples.

    python -m experiments.main --workdir runs/digits_cvae

All offline (scikit-learn's bundled digits). Rerunning resumes or, when training is
complete, only re-evaluates and re-samples.
"""

import time

import jax
from absl import flags

from cvae import Workdir, evaluation, load_run
from cvae.runs import writers
from cvae.training import train_and_evaluate
from experiments import cli
from experiments.configs import digits_cvae

flags.DEFINE_string("workdir", "runs/digits_cvae", "Where the run is written.")
flags.DEFINE_integer(
    "k",
    None,
    "Importance samples per test example for nll_is "
    "(default: the config's eval.num_importance_samples).",
)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    workdir = Workdir(FLAGS.workdir)
    started = time.perf_counter()
    result = train_and_evaluate(digits_cvae.get_config(), workdir)
    if result.interrupted:
        print(f"interrupted; rerun `make run` to resume from {workdir.path}")
        return
    trained = time.perf_counter()
    run = load_run(workdir.path)
    scores = run.evaluate("test", FLAGS.k, progress=True)
    workdir.write_eval(scores)
    for sampler in ("gmm", "prior"):
        samples = run.sample(jax.random.key(0), 64, sampler=sampler)
        writers.save_png(workdir.samples_path(sampler), writers.image_grid(jax.device_get(samples)))
    done = time.perf_counter()
    print(evaluation.format_table(scores, run.model.posterior_family))
    print(f"\ntraining {trained - started:.1f} s, evaluation and sampling {done - trained:.1f} s")
    print(
        f"results in {workdir.path}/: eval.json, metrics.jsonl, samples_gmm.png, "
        f"samples_prior.png, samplers/ (the fitted mixture), images/, checkpoints/, tb/ "
        f"(TensorBoard events: `.venv/bin/pip install -e '.[viewer]'`, then "
        f"`.venv/bin/tensorboard --logdir {workdir.tensorboard}`)"
    )


def entry() -> None:
    """The console script (``pyproject.toml``): the same as ``python -m`` this module."""
    cli.run(main)


if __name__ == "__main__":
    entry()
