"""Sample quality with a small classifier: a classifier-feature Fréchet distance, and the
accuracy of a conditional model's samples.

Inception-FID needs a network trained on ImageNet, which this project neither downloads
nor suits 28×28 digits. Instead a small MLP classifier is trained on the same data set
(``train_classifier``: the recipe ships with the project, so anyone can rebuild it) and its
penultimate-layer features stand in for Inception's:

    FD(a, b) = ‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2}),

with (μ, Σ) the mean and covariance of the features of each image set. It is reported as
a *classifier-feature FID* and is comparable only between runs that share the classifier.
The floor is the distance between real training and real test images.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cvae.runs import checkpoint
from cvae.runs.workdir import write_json_atomic


class Classifier(nn.Module):
    """MLP on flattened images in [0, 1]: hidden ReLU layers, then class logits.
    ``features`` are the activations of the last hidden layer."""

    widths: tuple[int, ...] = (512, 128)
    num_classes: int = 10
    dropout: float = 0.2

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = x.reshape((x.shape[0], -1))
        for width in self.widths:
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
            h = nn.relu(nn.Dense(width)(h))
        return nn.Dense(self.num_classes)(h), h


@functools.partial(jax.jit, static_argnums=0)
def _logits_and_features(module: Classifier, params, x):
    # One compilation per (classifier, batch shape), shared by every call.
    return module.apply({"params": params}, x)


@dataclasses.dataclass(frozen=True)
class TrainedClassifier:
    """The FID classifier's module and params."""

    module: Classifier
    params: dict

    def logits_and_features(self, images, batch_size: int = 1000):
        """Class logits and penultimate features of images, batch by batch.

        Args:
          images: (N, H, W, C) in [0, 1].
          batch_size: images per forward pass.

        Returns:
          (logits (N, classes), features (N, D)).
        """
        images = np.asarray(images, np.float32)
        outs = [
            jax.device_get(
                _logits_and_features(self.module, self.params, images[i : i + batch_size])
            )
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])

    def accuracy(self, images, labels) -> float:
        """Fraction of ``images`` assigned to their ``labels``.

        Args:
          images: (N, H, W, C) in [0, 1].
          labels: (N,) int labels.

        Returns:
          The accuracy in [0, 1].
        """
        logits, _ = self.logits_and_features(images)
        return float(np.mean(logits.argmax(-1) == np.asarray(labels)))


CLASSIFIER_SUMMARY = "classifier.json"  # recipe, test accuracy and the FID floor
CLASSIFIER_PARAMS = "params"  # Orbax params directory


def save_classifier(directory, classifier: TrainedClassifier, summary: dict) -> None:
    """Writes ``directory/params`` and ``directory/classifier.json``.

    Args:
      directory: where to write (created if needed).
      classifier: the trained classifier.
      summary: what to record beside the architecture (recipe, accuracy, FID floor).
    """
    directory = pathlib.Path(directory)
    checkpoint.save_params(directory / CLASSIFIER_PARAMS, classifier.params)
    write_json_atomic(
        directory / CLASSIFIER_SUMMARY,
        {
            **summary,
            "widths": list(classifier.module.widths),
            "num_classes": classifier.module.num_classes,
        },
    )


def load_classifier(directory) -> tuple[TrainedClassifier, dict]:
    """A classifier written by ``save_classifier``.

    Args:
      directory: what ``experiments.train_classifier`` wrote.

    Returns:
      (classifier, summary).

    Raises:
      FileNotFoundError: the directory holds no classifier.
    """
    directory = pathlib.Path(directory)
    summary_path = directory / CLASSIFIER_SUMMARY
    if not summary_path.exists():
        raise FileNotFoundError(
            f"{directory} holds no classifier (no {CLASSIFIER_SUMMARY}); "
            "run python -m experiments.train_classifier --workdir DIR first"
        )
    summary = json.loads(summary_path.read_text())
    module = Classifier(tuple(summary["widths"]), summary["num_classes"])
    params = checkpoint.load_params(directory / CLASSIFIER_PARAMS)
    return TrainedClassifier(module, params), summary


def train_classifier(
    images,
    labels,
    key,
    *,
    num_classes: int = 10,
    epochs: int = 10,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    widths: tuple[int, ...] = (512, 128),
) -> TrainedClassifier:
    """Trains the MLP classifier: Adam on the cross-entropy, dropout 0.2.

    Args:
      images: (N, H, W, C) in [0, 1].
      labels: (N,) int labels.
      key: the PRNG key of initialisation, order and dropout.
      num_classes: the number of classes.
      epochs: passes over the data.
      batch_size: images per step.
      learning_rate: Adam's step size.
      widths: the hidden layers; the last is the feature layer.

    Returns:
      The trained classifier.
    """
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int32)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if len(images) < batch_size:
        raise ValueError(f"{len(images)} images are fewer than one batch of {batch_size}")
    module = Classifier(tuple(widths), num_classes)
    init_key, order_key, dropout_key = jax.random.split(key, 3)
    params = module.init(init_key, jnp.zeros((1,) + images.shape[1:]))["params"]
    tx = optax.adam(learning_rate)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y, key):
        def loss_fn(p):
            logits, _ = module.apply({"params": p}, x, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    steps_per_epoch = len(images) // batch_size
    for epoch in range(epochs):
        order = np.asarray(
            jax.random.permutation(jax.random.fold_in(order_key, epoch), len(images))
        )
        for s in range(steps_per_epoch):
            idx = order[s * batch_size : (s + 1) * batch_size]
            params, opt_state = step(
                params,
                opt_state,
                images[idx],
                labels[idx],
                jax.random.fold_in(dropout_key, epoch * steps_per_epoch + s),
            )
    return TrainedClassifier(module, params)


def gaussian_statistics(features):
    """Mean and (unbiased) covariance of features, in float64.

    Args:
      features: (N, D).

    Returns:
      (mean (D,), covariance (D, D)).
    """
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"features must be (N ≥ 2, D), got shape {features.shape}")
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(features_a, features_b) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets.

    d² = ‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2}). tr (Σ_a Σ_b)^{1/2} is computed
    as Σ √λ_i over the eigenvalues of the symmetric PSD matrix Σ_a^{1/2} Σ_b Σ_a^{1/2} (same
    spectrum): exact, and stable when a covariance is singular (fewer samples than
    features), where a general matrix square root is not.

    Args:
      features_a: (N, D).
      features_b: (M, D).

    Returns:
      d², ≥ 0.
    """
    mu_a, cov_a = gaussian_statistics(features_a)
    mu_b, cov_b = gaussian_statistics(features_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature sizes differ: {mu_a.shape[0]} and {mu_b.shape[0]}")
    eigenvalues, eigenvectors = np.linalg.eigh(cov_a)
    root_a = (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T
    product = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_sqrt = np.sum(np.sqrt(np.clip(product, 0.0, None)))
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt)


def classifier_fid(classifier: TrainedClassifier, images_a, images_b) -> float:
    """Classifier-feature FID between two image sets (not the Inception FID).

    Args:
      classifier: the trained classifier whose features are compared.
      images_a: (N, H, W, C) in [0, 1].
      images_b: (M, H, W, C) in [0, 1].

    Returns:
      The Fréchet distance of their features.
    """
    _, features_a = classifier.logits_and_features(images_a)
    _, features_b = classifier.logits_and_features(images_b)
    return frechet_distance(features_a, features_b)
