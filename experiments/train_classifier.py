"""Train the classifier behind the classifier-feature FID:
``python -m experiments.train_classifier --workdir runs/mnist_classifier [--dataset mnist]``.

The recipe (cvae.evaluation.sample_quality.train_classifier): an MLP 784-512-128-10 with ReLU and
dropout 0.2, Adam 1e-3, batch 128, 10 epochs, on the training split in [0, 1]. Writes
``DIR/params`` (Orbax) and ``DIR/classifier.json`` with its test accuracy and the FID
floor: the classifier-feature FID between real training and real test images.
"""

import pathlib

import jax
from absl import flags

from cvae import data
from cvae.evaluation import sample_quality
from experiments import cli

flags.DEFINE_string("workdir", None, "Where to write the classifier.")
flags.DEFINE_string("dataset", "mnist", "Data set: mnist, digits, fashion_mnist, npz:PATH.")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: TFDS_DATA_DIR).")
flags.DEFINE_integer("epochs", 10, "Training epochs.")
flags.DEFINE_integer("seed", 0, "PRNG seed.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    workdir = pathlib.Path(cli.require(FLAGS.workdir, "workdir", "where to write it"))
    if FLAGS.epochs < 1:
        raise cli.UsageError(f"--epochs must be ≥ 1, got {FLAGS.epochs}")
    train = data.load(FLAGS.dataset, "train", FLAGS.data_dir)
    test = data.load(FLAGS.dataset, "test", FLAGS.data_dir)
    if train.labels is None:
        raise cli.UsageError(f"{FLAGS.dataset} has no labels to train a classifier on")
    # Grey intensities in [0, 1] (no binarization): what E[x|z] samples are compared with.
    x_train, x_test = data.evaluation_inputs(train, False), data.evaluation_inputs(test, False)
    classifier = sample_quality.train_classifier(
        x_train,
        train.labels,
        jax.random.key(FLAGS.seed),
        num_classes=train.info.num_classes,
        epochs=FLAGS.epochs,
    )
    accuracy = classifier.accuracy(x_test, test.labels)
    n = min(len(train), len(test), 10000)
    floor = sample_quality.classifier_fid(classifier, x_train[:n], x_test[:n])
    sample_quality.save_classifier(
        workdir,
        classifier,
        {
            "dataset": FLAGS.dataset,
            "epochs": FLAGS.epochs,
            "seed": FLAGS.seed,
            "test_accuracy": accuracy,
            "fid_train_vs_test": floor,
            "fid_examples": n,
        },
    )
    print(
        f"test accuracy {accuracy:.4f}; classifier-feature FID train vs test ({n} each) "
        f"{floor:.3f}; wrote {workdir}"
    )


def entry() -> None:
    """The console script (``pyproject.toml``): the same as ``python -m`` this module."""
    cli.run(main)


if __name__ == "__main__":
    entry()
