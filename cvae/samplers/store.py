"""Fitting, caching and saving a run's ex-post samplers: ``SamplerStore``.

A sampler is fitted once per set of params and fit lengths (a config's ``ex_post``
section) and saved in ``DIR/samplers/<name>/``: a later call, or a later process, loads it
instead of refitting (a run trained further, or given other fit lengths, refits). The fit
draws from ``fold_in(key(seed), i)``, i the kind's index in the registry, and the mixture
uses the run's seed: a rerun gives the same samples.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from cvae.runs.workdir import Workdir
from cvae.samplers import registry
from cvae.samplers.kind import Sampler

log = logging.getLogger("cvae")


@dataclasses.dataclass
class SamplerStore:
    """A run's ex-post samplers, fitted on first use, saved, and loaded thereafter.

    Attributes:
      workdir: the run's workdir (its ``samplers/`` folder holds the fits).
      params_sha256: the digest of the params the codes come from; a saved sampler of
        other params is refitted.
      seed: the run's seed (the fits' keys and the mixture's integer seed).
      budget: the fits' lengths, a config's ``ex_post`` section (None: the defaults).
      training_codes: () → (codes (N, d), labels (N,) or None): the codes to fit.
      num_classes: the data's classes (for a class-conditional fit).
      layer_dims: the sizes of the model's layers, z₁'s first (for fits to the codes of
        its top layers).
    """

    workdir: Workdir
    params_sha256: str
    seed: int
    budget: Any
    training_codes: Callable[[], tuple[np.ndarray, np.ndarray | None]]
    num_classes: int
    layer_dims: tuple[int, ...]
    _fitted: dict = dataclasses.field(default_factory=dict, repr=False)

    def get(
        self, kind: str, label: int | None = None, conditional: bool = False, top: int = 0
    ) -> Sampler:
        """An ex-post density of the training codes, fitted once and saved.

        Args:
          kind: "gmm", "flow", "two_stage" or "diffusion".
          label: fit to the codes of this class only; None for all codes.
          conditional: fit one class-conditional density to every code and its label
            (the diffusion sampler).
          top: fit to the codes of a hierarchy's top ``top`` layers alone (saved as
            "KIND@top" for one, "KIND@topN" for N); 0: the whole code.

        Returns:
          The sampler (``sample(key, n)``, ``log_prob(z)``).

        Raises:
          ValueError: an unknown kind, a conditional fit without labelled data, top layers
            of a one-layer model, or as many top layers as the model has or more.
        """
        top, layers = int(top), len(self.layer_dims)
        if top and layers < 2:
            raise ValueError(
                f"sampler {registry.top_sampler_name(kind, top)!r} needs a hierarchy "
                f"(model.upper_latent_dims); this run has one stochastic layer: use {kind!r}"
            )
        if not 0 <= top < layers:
            raise ValueError(
                f"sampler {registry.top_sampler_name(kind, top)!r} fits the top {top} layers "
                f"of {layers}: use {registry.top_sampler_name(kind, 1)} to "
                f"{registry.top_sampler_name(kind, layers - 1)}, or {kind!r} for all of them"
            )
        name = kind if label is None else f"{kind}-label{label}"
        name = f"{kind}-conditional" if conditional else name
        name = registry.top_sampler_name(name, top) if top else name
        budget = registry.fit_budget(self.budget, kind)
        memo = (name, tuple(sorted(budget.items())))
        if memo not in self._fitted:
            directory = self.workdir.sampler_dir(name)
            saved = self._load(kind, directory)
            if (
                saved is not None
                and saved[1].get("params_sha256") == self.params_sha256
                # a sampler saved before budgets were recorded was fitted with the defaults
                and saved[1].get("budget", registry.fit_budget(None, kind)) == budget
            ):
                self._fitted[memo] = saved[0]
            else:
                self._fitted[memo] = self._fit_and_save(
                    kind, directory, budget, label, conditional, top
                )
        return self._fitted[memo]

    def _load(self, kind: str, directory) -> tuple[Sampler, dict] | None:
        """The saved sampler, or None (none saved, or unreadable: refitted)."""
        try:
            return registry.load(directory)
        except Exception as err:  # noqa: BLE001 - any damage to the files: refit
            # The fit is a function of an explicit key, so the refit is the same sampler.
            log.warning(
                "the saved %s sampler in %s is unreadable (%s: %s); fitting it again",
                kind,
                directory,
                type(err).__name__,
                str(err).splitlines()[0][:120],
            )
            return None

    def _fit_and_save(self, kind, directory, budget, label, conditional, top) -> Sampler:
        codes, labels = self.training_codes()
        if conditional and labels is None:
            raise ValueError("a conditional sampler needs labelled training data")
        if label is not None:
            codes = codes[np.asarray(labels) == label]
        if top:
            codes = codes[:, -sum(self.layer_dims[-top:]) :]
        key = jax.random.fold_in(jax.random.key(self.seed), registry.EX_POST.index(kind))
        registry.kind_named(kind).check(codes)  # a refusal, before any announcement
        # Every fit says what it is doing: even the mixture's EM takes a minute on 60,000
        # MNIST codes.
        log.info(
            "fitting the %s sampler to %d training codes; it is saved in %s and "
            "reused while these params are the run's",
            kind,
            len(codes),
            directory,
        )
        fitted = registry.fit(
            kind,
            codes,
            key,
            seed=self.seed,
            progress=True,
            labels=labels if conditional else None,
            num_classes=self.num_classes if conditional else 0,
            budget=self.budget,
        )
        meta = {
            "params_sha256": self.params_sha256,
            "budget": budget,
            "num_codes": len(codes),
            "label": label,
            "conditional": conditional,
        }
        try:
            registry.save(fitted, directory, meta)
        except OSError as err:  # a read-only run still samples
            log.warning("could not save the fitted %s sampler in %s: %s", kind, directory, err)
        return fitted
