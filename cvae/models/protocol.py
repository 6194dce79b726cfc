"""The one interface every model answers: ``LatentVariableModel``.

A model is a Flax Linen module whose code is one or more stochastic *layers*, z₁ next to x
and z_L on top; a one-layer VAE is a hierarchy of one (``layer_dims == (latent_dim,)``).
Everything outside ``cvae.models`` — training, evaluation, the samplers, the explorer —
reads a model through this protocol alone and never asks which class it is (a test walks
the source to hold that). Where a design cannot do something (labels in a hierarchy,
``descend`` below a one-layer code), the model says so in one line.

What it declares:

* ``event_shape``, ``num_classes`` (labels in [0, num_classes) are accepted; 0: none, and
  ``check_labels`` refuses any), ``posterior_family`` ("gaussian", "collapsed" — some layer
  wants an ex-post density to be sampled — or "deterministic": no density, no bounds);
* ``layer_dims`` (d₁, …, d_L) and ``code_dim`` = Σ d_l: a *code* is every layer's latents
  concatenated, z₁ first (``split_code`` cuts it); ``layer_shapes``: each layer's code as
  it is read — a vector ``(d_l,)`` or a map ``(h, w, c)`` with d_l = h·w·c, held flattened
  position-major (``shaped_layers`` and ``flat_code`` convert);
* ``sigma0s``: each layer's fixed posterior scale σ₀ (0 for a point mass; None where the
  scale is learned);
* ``bound_family``: which formulas of ``cvae.models.objectives`` score it — "single" (one
  posterior over the code) or "layered" (the layers drawn jointly in inference order).

What it does (params-taking methods run the model themselves; module methods go through
``model.apply(variables, …, method=model.NAME)``):

* ``with_sigma0s(sigma0s)``: the model with each layer's σ₀ replaced (traced values allowed);
* ``elbo_terms(params, x, key, labels=None)``: per-example "recon", "kl", "elbo" and each
  layer's "kl_l" for one (joint) draw;
* ``log_importance_weights(params, x, key, k, labels=None)``: log w = log p(x, z) − log
  q(z|x) for k draws per example, (k, B) ((B,) for k = None) — these two written once, in
  ``ScoredByObjectives``, a base of every design;
* module methods ``encode(x, labels)`` (the posterior over the code: for a hierarchy its
  mean path), ``decode(z, labels)`` (p(x|·)'s parameters), ``sample_prior(key, n,
  temperatures=None)`` (codes drawn from p(z), each layer's noise scaled by its τ),
  ``descend(code, layer, key=None)`` (the layers below ``layer`` regenerated from those at
  and above it; a one-layer model's code is returned as is) and ``resample_layer(code,
  layer, key)`` (one layer redrawn from p given the layers above, every other kept).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import flax.linen as nn
import jax

from cvae.models import code_maps, objectives


@runtime_checkable
class LatentVariableModel(Protocol):
    """What every model of cvae declares and does; see the module docstring."""

    event_shape: tuple[int, int, int]

    @property
    def num_classes(self) -> int:
        """Labels in [0, num_classes) are accepted; 0: an unconditional model."""
        ...

    @property
    def posterior_family(self) -> str:
        """ "gaussian", "collapsed" or "deterministic" (see the module docstring)."""
        ...

    @property
    def layer_dims(self) -> tuple[int, ...]:
        """The latent sizes d₁, …, d_L, z₁ (next to x) first."""
        ...

    @property
    def code_dim(self) -> int:
        """d₁ + … + d_L."""
        ...

    @property
    def layer_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Each layer's code shape, z₁'s first: (d_l,) or a map (h, w, c)."""
        ...

    @property
    def sigma0s(self) -> tuple[float | None, ...]:
        """Each layer's fixed σ₀ (0: a point mass); None where the scale is learned."""
        ...

    @property
    def bound_family(self) -> str:
        """ "single" or "layered": which formulas of ``cvae.models.objectives`` apply."""
        ...

    def check_labels(self, labels) -> None:
        """Raises ValueError, in one line, if ``labels`` is not what the model accepts.

        Args:
          labels: int labels, one per example, or None.
        """
        ...

    def split_code(self, z) -> list:
        """Codes as their layers' parts.

        Args:
          z: codes (…, code_dim).

        Returns:
          The parts, z₁ first, each (…, d_l).
        """
        ...

    def with_sigma0s(self, sigma0s) -> Any:
        """The model with each layer's σ₀ replaced (a collapsed layer's).

        Args:
          sigma0s: one σ₀ per layer, z₁'s first (numbers or traced values).

        Returns:
          The model (a clone; parameters are unchanged).
        """
        ...

    def elbo_terms(self, params, x, key, labels=None) -> dict:
        """Per-example ELBO terms of one (joint) draw, each layer's KL among them.

        Args:
          params: the model's parameters.
          x: images in [0, 1], (B, H, W, C).
          key: the PRNG key of the draw.
          labels: int labels for a conditional model; else None.

        Returns:
          "recon", "kl", "elbo" and "kl_1" … "kl_L", each (B,) nats.
        """
        ...

    def log_importance_weights(self, params, x, key, k: int | None, labels=None) -> jax.Array:
        """log w = log p(x, z) − log q(z|x) for k draws per example.

        Args:
          params: the model's parameters.
          x: images in [0, 1], (B, H, W, C).
          key: the PRNG key of the draws.
          k: draws per example; None for one, without the leading axis.
          labels: int labels for a conditional model; else None.

        Returns:
          (k, B) log-weights ((B,) for k = None).
        """
        ...


def shaped_layers(model: LatentVariableModel, z) -> list:
    """A code as its layers' parts in their shapes.

    Args:
      model: any model of this protocol.
      z: codes (…, code_dim).

    Returns:
      The parts, z₁ first: (…, d_l) vectors or (…, h, w, c) maps.
    """
    return [
        part.reshape(part.shape[:-1] + tuple(shape))
        for part, shape in zip(model.split_code(z), model.layer_shapes, strict=True)
    ]


def flat_code(model: LatentVariableModel, z):
    """Codes as the model holds them, (…, code_dim), from a one-layer model's maps
    (…, h, w, c) or from codes already flat.

    Args:
      model: any model of this protocol.
      z: codes.

    Returns:
      (…, code_dim) codes.

    Raises:
      ValueError: ``z`` has neither shape (one line naming both).
    """
    shape = model.layer_shapes[0] if len(model.layer_shapes) == 1 else (model.code_dim,)
    return code_maps.flat_codes(z, shape, model.code_dim)


class ScoredByObjectives:
    """The protocol's scoring methods, written once for every design: each model's
    ``elbo_terms`` and ``log_importance_weights`` are ``cvae.models.objectives``' formulas
    of the family it declares (``bound_family``). A base of ``VAE`` and ``Hierarchy``."""

    @nn.nowrap
    def elbo_terms(self, params, x, key, labels=None) -> dict:
        """Per-example ELBO terms with one (joint) draw (``objectives.elbo_terms``).

        Args:
          params: the model's parameters.
          x: images in [0, 1], (B, H, W, C).
          key: the PRNG key of the draw.
          labels: int labels for a conditional model; else None.

        Returns:
          "recon", "kl", "elbo" and "kl_1" … "kl_L", each (B,) nats.
        """
        return objectives.elbo_terms(self, params, x, key, labels)

    @nn.nowrap
    def log_importance_weights(self, params, x, key, k: int | None, labels=None):
        """log w = log p(x, z) − log q(z|x) for k draws per example (every layer of a layered
        model from one joint draw; a one-layer model's k draws all from ``key``).

        Args:
          params: the model's parameters.
          x: images in [0, 1], (B, H, W, C).
          key: the PRNG key of the draws.
          k: draws per example; None for one, without the leading axis.
          labels: int labels for a conditional model; else None.

        Returns:
          (k, B) log-weights ((B,) for k = None).
        """
        return objectives.log_importance_weights(self, params, x, key, k, labels)
