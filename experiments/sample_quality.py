"""Score a run's samples with the FID classifier:
``python -m experiments.sample_quality --workdir RUN --classifier runs/mnist_classifier``.

Draws ``--n`` samples E[x|z] with z from each of ``--samplers`` (default: the prior and
every ex-post density — gmm, flow, two_stage, diffusion; fitted ones are reused from
RUN/samplers/; ``latent_diffusion``, the DiT of ``experiments.train_latent``, when asked
for; RUN may also be a latent run's directory, whose samples are scored into its own
file), and writes ``RUN/sample_quality.json``: per sampler ``fid_<sampler>``
(classifier-feature FID against the real test images), ``precision_``/``recall_<sampler>``
(Kynkäänniemi et al., k = 3) and ``density_``/``coverage_<sampler>`` (Naeem et al., k = 5)
on the same features against the test images, ``memorised_<sampler>`` (the fraction of
samples nearer a training image than any test image is, in pixel space) and
``memorised_features_<sampler>`` (the same in feature space); ``fid_floor`` (real training
vs real test, from the classifier); and for conditional models ``accuracy_<sampler>`` —
how often the classifier recognises the class each sample was drawn for. Scores of other
samplers already in the file are kept when they were drawn the same way (same classifier,
``--n``, ``--seed`` and params), so samplers can be scored one at a time.
"""

import json
import pathlib

import jax
import numpy as np
from absl import flags

from cvae import Workdir, load_run, samplers
from cvae.analysis.run import LATENT_DIFFUSION
from cvae.evaluation import neighbours, sample_quality
from cvae.runs.workdir import read_json
from cvae.training import latent
from experiments import cli

flags.DEFINE_string("workdir", None, "A workdir written by experiments.train.")
flags.DEFINE_string("classifier", None, "A directory written by experiments.train_classifier.")
flags.DEFINE_integer("n", 10000, "Samples per sampler.")
flags.DEFINE_integer("seed", 0, "PRNG seed of the draws.")
flags.DEFINE_list("samplers", list(samplers.SAMPLERS), "Samplers to score (comma-separated).")
FLAGS = flags.FLAGS


def _pixels_and_features(run, classifier, split: str):
    """A split's images as flat float32 rows, and their classifier features."""
    pixels, features = [], []
    for images, _ in run.eval_set(split, binarized=False).unit_batches(1000):
        pixels.append(np.asarray(images, np.float32).reshape(len(images), -1))
        features.append(classifier.logits_and_features(images)[1])
    return np.concatenate(pixels), np.concatenate(features)


def main(argv):
    del argv
    workdir = pathlib.Path(cli.require(FLAGS.workdir, "workdir", "the directory of a run"))
    classifier_dir = pathlib.Path(
        cli.require(FLAGS.classifier, "classifier", "a directory from experiments.train_classifier")
    )
    if FLAGS.n < 2:
        raise cli.UsageError(f"--n must be ≥ 2 (a covariance needs two samples), got {FLAGS.n}")
    known = samplers.SAMPLERS + samplers.TOP_SAMPLERS + (LATENT_DIFFUSION,)
    unknown = sorted(s for s in set(FLAGS.samplers) - set(known) if not samplers.is_top_sampler(s))
    if unknown or not FLAGS.samplers:
        raise cli.UsageError(
            f"--samplers {','.join(FLAGS.samplers)}: choose from {','.join(known)} "
            "(or KIND@topN: a hierarchy's top N layers)"
        )
    try:
        classifier, summary = sample_quality.load_classifier(classifier_dir)
    except FileNotFoundError as err:
        raise cli.UsageError(str(err)) from None
    # A latent diffusion run's directory: score its samples, decoded by its tokenizer run,
    # into its own sample_quality.json.
    latent_record = read_json(pathlib.Path(workdir) / latent.RECORD)
    latent_dir = workdir if latent_record else None
    run = load_run(latent_record["tokenizer"]["workdir"] if latent_record else workdir)
    scored = [LATENT_DIFFUSION] if latent_dir else FLAGS.samplers  # a latent run has one
    if summary["dataset"] != run.config.data.name:
        raise cli.UsageError(
            f"the classifier was trained on {summary['dataset']!r} but the run "
            f"on {run.config.data.name!r}; train one for that data set"
        )
    # Each split's grey intensities, read once and featurised 1,000 images at a time: the
    # test split is the reference of every score, the training split the memorisation check's.
    test_images, real_features = _pixels_and_features(run, classifier, "test")
    train_images, train_features = _pixels_and_features(run, classifier, "train")
    result = {
        "classifier": str(classifier_dir),
        "n": FLAGS.n,
        "seed": FLAGS.seed,
        "params_sha256": run.params_sha256,
        "ex_post": samplers.fit_budget(run.config.ex_post),  # what the samplers were fitted with
        "fid_floor": summary["fid_train_vs_test"],
    }
    previous = Workdir(workdir).read_sample_quality() or {}
    previous.setdefault("ex_post", samplers.fit_budget())  # scored before budgets: defaults
    identity = ("classifier", "n", "seed", "params_sha256", "ex_post")
    if all(previous.get(k) == result[k] for k in identity):
        result = {**previous, **result}  # the other samplers' draws do not depend on these
    labels = np.arange(FLAGS.n) % run.model.num_classes if run.model.num_classes else None
    for sampler in scored:
        # The draws of sampler i come from fold_in(key(seed), i) whichever others are scored
        # (KIND@top draws with KIND's key).
        index = (
            len(samplers.SAMPLERS)  # the latent DiT: after every ex-post kind
            if sampler == LATENT_DIFFUSION
            else samplers.SAMPLERS.index(samplers.split_sampler(sampler)[0])
        )
        key = jax.random.fold_in(jax.random.key(FLAGS.seed), index)
        if latent_dir:
            drawn = run.sample_latent(key, FLAGS.n, workdir=latent_dir)
        else:
            drawn = run.sample(key, FLAGS.n, sampler, labels)
        images = np.asarray(jax.device_get(drawn))
        logits, features = classifier.logits_and_features(images)
        result[f"fid_{sampler}"] = sample_quality.frechet_distance(features, real_features)
        scores = {
            **neighbours.precision_recall(real_features, features),
            **neighbours.density_coverage(real_features, features),
            "memorised": neighbours.memorisation(images, train_images, test_images),
            "memorised_features": neighbours.memorisation(features, train_features, real_features),
        }
        result.update({f"{name}_{sampler}": value for name, value in scores.items()})
        if labels is not None:
            result[f"accuracy_{sampler}"] = float(np.mean(logits.argmax(-1) == labels))
    Workdir(workdir).write_sample_quality(result)
    print(json.dumps(result, indent=2))


def entry() -> None:
    """The console script (``pyproject.toml``): the same as ``python -m`` this module."""
    cli.run(main)


if __name__ == "__main__":
    entry()
