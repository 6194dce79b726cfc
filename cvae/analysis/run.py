"""``load_run(workdir)``: a trained run as an object, for notebooks and scripts.

run = cvae.load_run("runs/digits_cvae")
mean, log_var = run.encode(x)           # posterior parameters (log_var None if fixed)
logits = run.decode(z)                  # likelihood parameters
images = run.sample(jax.random.key(0), 64, sampler="gmm")
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cvae import data, evaluation, samplers
from cvae.evaluation import metrics
from cvae.models import objectives, protocol
from cvae.models import vae as model_lib
from cvae.runs import provenance
from cvae.runs.restore import Restored, load_config, restore
from cvae.runs.workdir import RunNotFoundError, Workdir
from cvae.training import latent

log = logging.getLogger("cvae")

__all__ = ["LATENT_DIFFUSION", "Run", "RunNotFoundError", "load_config", "load_run"]

LATENT_DIFFUSION = "latent_diffusion"  # the sampler that is a run of its own
# Encoding and sampling more than CHUNK items run CHUNK at a time (device memory stays
# bounded; the results gather on the host).
CHUNK = 10_000


@dataclasses.dataclass
class Run(Restored):
    """A trained run: its config, params (best or latest checkpoint), model and data info
    (``cvae.runs.restore.Restored``), with what notebooks do with them."""

    _store: samplers.SamplerStore | None = dataclasses.field(default=None, repr=False)
    _latent_runs: dict = dataclasses.field(default_factory=dict, repr=False)
    _programs: dict = dataclasses.field(default_factory=dict, repr=False)  # see _apply

    def __repr__(self) -> str:
        m = self.config.model
        return (
            f"Run({str(self.workdir)!r}, posterior={m.posterior!r}, "
            f"latent_dim={self.model.code_dim}, data={self.config.data.name!r}, "
            f"epoch={self.meta.get('epoch')}, params={self.num_params:,})"
        )

    @property
    def config_history(self) -> list[dict]:
        """The config changes of this run's resumes, oldest first: [{"step", "epoch",
        "changes": {field: [before, after]}, "provenance"}, …]; ``config`` is the one in
        force since the last of them (empty: one config trained the whole run)."""
        return Workdir(self.workdir).read_config_history()

    @property
    def num_params(self) -> int:
        """Number of trainable scalars."""
        return model_lib.count_params(self.params)

    # ---------------------------------------------------------------- inputs
    def _inputs(self, x):
        """Images as the model takes them: float32 in [0, 1], shaped N×H×W×C.

        uint8 images are scaled by the data set's maximum (255 for 8-bit data); float images
        must already lie in [0, 1]; one image H×W×C is a batch of one. Anything else is
        refused with what was expected, rather than encoded into codes that look plausible
        and are wrong.
        """
        x = np.asarray(x)
        if x.shape == tuple(self.info.shape):
            x = x[None]
        expected = (
            f"images N×{'×'.join(map(str, self.info.shape))} as uint8 0–255 or as "
            "floats in [0, 1] (e.g. data.evaluation_inputs)"
        )
        if x.dtype == np.uint8:
            return jnp.asarray(x, jnp.float32) / self.info.pixel_range[1]
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"images of dtype {x.dtype} are not accepted; pass {expected}")
        if x.size and not np.isfinite(x).all():
            raise ValueError(f"the images contain NaN or infinite values; pass {expected}")
        if x.size and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
            hint = (
                " (they look like 0–255 pixels: divide by 255 or pass uint8)"
                if float(x.max()) > 1.0
                else ""
            )
            raise ValueError(
                f"float images must lie in [0, 1], got values in "
                f"[{float(x.min()):g}, {float(x.max()):g}]{hint}; pass {expected}"
            )
        return jnp.asarray(x, jnp.float32)

    def _labels(self, labels, n):
        if labels is None:
            return None
        labels = jnp.broadcast_to(jnp.asarray(labels, jnp.int32), (n,))
        if not self.model.num_classes:
            raise ValueError(
                "labels were given but this run is unconditional (model.conditional=False)"
            )
        if int(labels.min()) < 0 or int(labels.max()) >= self.model.num_classes:
            raise ValueError(
                f"labels must lie in [0, {self.model.num_classes}), got "
                f"{int(labels.min())}..{int(labels.max())}"
            )
        return labels

    def _apply(self, *args, method):
        """``model.apply`` of ``method`` as one compiled program per method and argument
        kinds (flax run eagerly would compile each of its operations on its own: a
        hundred small programs for one decode). Python ints (sizes, layer numbers) are
        static."""
        static = tuple(i for i, a in enumerate(args) if isinstance(a, int))
        program = self._programs.get((method, static))
        if program is None:
            program = jax.jit(
                lambda params, *a: self.model.apply({"params": params}, *a, method=method),
                static_argnums=tuple(i + 1 for i in static),
            )
            self._programs[(method, static)] = program
        return program(self.params, *args)

    # -------------------------------------------------------------- the API
    def encode(self, x, labels=None, *, flat: bool = False):
        """The parameters of q(z|x), shaped as the model's code.

        Args:
          x: images (N, H, W, C) in [0, 1] (``inputs`` gives them as evaluation sees them).
          labels: int labels, one per image, for a conditional model; else None.
          flat: codes as vectors (N, d) whatever their shape (what densities over codes
            take).

        Returns:
          (mean, log_var), each (N, d) — or (N, h, w, c) maps for a model whose code is a
          map (``model.arch = "conv_map"``) unless ``flat``; log_var is None for collapsed and
          deterministic models. More than ``CHUNK`` (10,000) images are encoded that many at
          a time and gathered on the host.
        """
        x = self._inputs(x)
        if len(x) > CHUNK:  # bounded device memory: independent rows, encoded in chunks
            labels = self._labels(labels, len(x))
            parts = [
                self.encode(
                    x[i : i + CHUNK], None if labels is None else labels[i : i + CHUNK], flat=flat
                )
                for i in range(0, len(x), CHUNK)
            ]
            means = np.concatenate([np.asarray(m) for m, _ in parts])
            log_vars = (
                None if parts[0][1] is None else np.concatenate([np.asarray(v) for _, v in parts])
            )
            return means, log_vars
        posterior = self._apply(x, self._labels(labels, len(x)), method=self.model.encode)
        log_var = posterior.log_var if self.model.posterior_family == "gaussian" else None
        if flat or len(self.model.layer_shapes) > 1:
            return posterior.mean, log_var
        (mean,) = protocol.shaped_layers(self.model, posterior.mean)
        return mean, None if log_var is None else protocol.shaped_layers(self.model, log_var)[0]

    def decode(self, z, labels=None):
        """The likelihood parameters of p(x|z).

        Args:
          z: latents (N, d), or maps (N, h, w, c) for a model whose code is a map.
          labels: int labels, one per image, for a conditional model; else None.

        Returns:
          The decoder's output: logits for Bernoulli models.
        """
        z = np.asarray(z, np.float32)
        if z.ndim > 2:  # code maps (N, h, w, c), or a shape no code has
            z = np.asarray(protocol.flat_code(self.model, z))
        d = self.model.code_dim
        if z.ndim != 2 or z.shape[-1] != d:
            what = (
                "model.latent_dim"
                if d == self.config.model.latent_dim
                else "every stochastic layer's latents, z₁ first"
            )
            raise ValueError(f"latents must be shaped N×{d} (this run's {what}), got {z.shape}")
        if not np.isfinite(z).all():
            raise ValueError("the latents contain NaN or infinite values")
        return self._apply(jnp.asarray(z), self._labels(labels, len(z)), method=self.model.decode)

    def mean_image(self, z, labels=None):
        """E[x|z]: the images latents decode to.

        Args:
          z: latents (N, d).
          labels: int labels, one per image, for a conditional model; else None.

        Returns:
          Images (N, H, W, C) in the data's range.
        """
        return self.model.likelihood.mean(self.decode(z, labels))

    def reconstruct(self, x, key, labels=None):
        """E[x|z] for one z ~ q(z|x) per image.

        Args:
          x: images (N, H, W, C) in [0, 1].
          key: the PRNG key of the posterior draws, or an int seed.
          labels: int labels, one per image, for a conditional model; else None.

        Returns:
          Reconstructions (N, H, W, C).
        """
        x, key = self._inputs(x), _as_key(key)
        labels = self._labels(labels, len(x))
        posterior = self._apply(x, labels, method=self.model.encode)
        return self.model.likelihood.mean(
            self._apply(posterior.sample(key), labels, method=self.model.decode)
        )

    def sample(
        self,
        key,
        n: int,
        sampler: str | None = None,
        labels=None,
        guidance: float = 0.0,
        temperatures=None,
    ):
        """Images E[x|z], z from the prior or an ex-post density.

        With labels, the ex-post density is p̂(z|y): a mixture (flow, two-stage VAE) fitted
        to the codes of class y alone (a collapsed model's codes carry the class, so codes of
        other classes would override the label), class y's latents drawn from
        ``fold_in(key, y)``; or one diffusion model fitted to every code with its label,
        sampled with classifier-free guidance of weight ``guidance``.

        Args:
          key: the PRNG key of the draws (``jax.random.key(seed)``), or an int seed.
          n: how many images.
          sampler: "prior", "gmm", "flow", "two_stage" or "diffusion"; None for the
            family's default (prior for the Gaussian VAE, gmm otherwise). For a hierarchy
            also "gmm@top", …: the density fitted to the top layer's codes alone, or
            "gmm@top3", …: to the top 3 layers' (a deep hierarchy's top groups), the
            layers below drawn from the model's conditionals (the model's ``descend``,
            key ``fold_in(key, 1)``). "latent_diffusion": the DiT trained on this run's
            code maps (``experiments.train_latent``; ``latent_diffusion()``), its codes
            decoded.
          labels: the class of each image, for a conditional model (or a conditional
            latent DiT); else None.
          guidance: the diffusion samplers' classifier-free guidance weight w (with labels;
            0: the conditional model as fitted).
          temperatures: with ``sampler="prior"``, one τ per stochastic layer (z₁'s first):
            each layer's noise scaled by its τ (the model's ``sample_prior``); None: τ = 1.

        Returns:
          Images (n, H, W, C). More than ``CHUNK`` (10,000) are drawn that many at a
          time, chunk i from ``fold_in(key, i)``, and gathered on the host.
        """
        _require_int(n, 1, "the number of samples must be a positive integer")
        key = _as_key(key)
        sampler = sampler or samplers.default_sampler(self.model.posterior_family)
        if temperatures is not None:  # before any sampler's branch: none ignores them
            self._check_temperatures(temperatures, sampler)
        if n > CHUNK:  # bounded device memory: chunk i drawn with fold_in(key, i)
            labels = None if labels is None else np.broadcast_to(np.asarray(labels), (n,))
            return np.concatenate(
                [
                    np.asarray(
                        self.sample(
                            jax.random.fold_in(key, i),
                            min(CHUNK, n - start),
                            sampler,
                            None if labels is None else labels[start : start + CHUNK],
                            guidance,
                            temperatures,
                        )
                    )
                    for i, start in enumerate(range(0, n, CHUNK))
                ]
            )
        if sampler == LATENT_DIFFUSION:
            return self.sample_latent(key, n, labels, guidance)
        labels = self._labels(labels, n)
        if samplers.is_top_sampler(sampler):
            return self.mean_image(self._sample_from_the_top(key, n, sampler), labels)
        if sampler == "prior":
            tempered = () if temperatures is None else (jnp.asarray(temperatures, jnp.float32),)
            z = self._apply(key, n, *tempered, method=self.model.sample_prior)
        elif sampler in samplers.EX_POST and labels is None:
            z = self.ex_post(sampler).sample(key, n)
        elif sampler == "diffusion":
            z = self.ex_post(sampler, conditional=True).sample(key, n, labels, guidance)
        elif sampler in samplers.EX_POST:
            wanted = np.asarray(labels)
            z = np.zeros((n, self.model.code_dim), np.float32)
            for label in np.unique(wanted):
                rows = np.flatnonzero(wanted == label)
                z[rows] = self.ex_post(sampler, label=int(label)).sample(
                    jax.random.fold_in(key, int(label)), len(rows)
                )
        else:
            samplers.split_sampler(sampler)  # a malformed KIND@topN says what is wrong
            raise ValueError(
                f"sampler must be one of {samplers.SAMPLERS}, KIND@top or KIND@topN (a "
                f"hierarchy's top layers), or {LATENT_DIFFUSION!r}; got {sampler!r}"
            )
        return self.mean_image(z, labels)

    def _check_temperatures(self, temperatures, sampler) -> None:
        """Raises ValueError, in one line, unless ``temperatures`` are one finite τ ≥ 0 per
        stochastic layer, for the prior."""
        depth = len(self.model.layer_dims)
        values = np.asarray(temperatures, np.float64).reshape(-1)
        if sampler != "prior":
            raise ValueError(f"temperatures apply to sampler='prior', not {sampler!r}")
        if values.size != depth or not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError(
                f"temperatures must be {depth} finite τ ≥ 0, one per stochastic layer (z₁'s "
                f"first); got {list(np.asarray(temperatures).reshape(-1))}"
            )

    def latent_diffusion(self, workdir=None) -> latent.LatentDiffusion:
        """The latent diffusion run trained on this run's codes (``experiments.train_latent``),
        loaded once; one trained on other parameters of this run is refused.

        Args:
          workdir: its directory; None for this run's ``latent_diffusion/``.

        Returns:
          The latent run (``cvae.training.latent.LatentDiffusion``).
        """
        path = pathlib.Path(workdir) if workdir else self.workdir / latent.DEFAULT_DIR
        if path not in self._latent_runs:
            self._latent_runs[path] = latent.load_latent(path, tokenizer_sha256=self.params_sha256)
        return self._latent_runs[path]

    def sample_latent(self, key, n: int, labels=None, guidance: float = 0.0, workdir=None):
        """Images from a latent diffusion run on this run's codes: its code maps decoded (or,
        in pixel space, its own images).

        Args:
          key: the PRNG key of the draws, or an int seed.
          n: how many images.
          labels: the class of each, for a conditional latent run; else None.
          guidance: its classifier-free guidance weight w (with labels).
          workdir: the latent run's directory; None for this run's ``latent_diffusion/``.

        Returns:
          Images (n, H, W, C).
        """
        _require_int(n, 1, "the number of samples must be a positive integer")
        diffusion = self.latent_diffusion(workdir)
        # Labels condition the DiT when it was trained with them; a conditional tokenizer's
        # decoder reads them in any case (its codes do not carry the class).
        conditions_dit = diffusion.module.num_classes > 0 or not self.model.num_classes
        drawn = diffusion.sample(_as_key(key), n, labels if conditions_dit else None, guidance)
        if diffusion.space == "pixels":
            return drawn
        return self.mean_image(drawn, self._labels(labels, n) if self.model.num_classes else None)

    def _sample_from_the_top(self, key, n: int, sampler: str):
        """Codes whose top N layers come from the ex-post density of those layers' codes
        ("KIND@top": N = 1, "KIND@topN") and whose lower layers are drawn from the model's
        conditionals below them."""
        kind, top = samplers.split_sampler(sampler)
        # the store refuses a count the model's layers cannot hold, before any fit
        drawn = np.asarray(self.ex_post(kind, top=top).sample(key, n))
        code = jnp.zeros((n, self.model.code_dim), jnp.float32)
        code = code.at[:, -drawn.shape[1] :].set(drawn)
        lowest_kept = len(self.model.layer_dims) - top + 1
        return self._apply(code, lowest_kept, jax.random.fold_in(key, 1), method=self.model.descend)

    def interpolate(self, x0, x1, steps: int = 8, labels=None):
        """Images decoded along the straight line between the posterior means of two images.

        Args:
          x0: an image (H, W, C) or a batch of one.
          x1: an image (H, W, C) or a batch of one.
          steps: points on the line, ends included.
          labels: the label of the path, for a conditional model; else None.

        Returns:
          Images (steps, H, W, C).
        """
        _require_int(steps, 2, "steps must be an integer ≥ 2 (both ends included)")
        pair = jnp.concatenate([self._inputs(x0), self._inputs(x1)])  # each a batch of one
        means, _ = self.encode(pair, None if labels is None else jnp.full((2,), labels), flat=True)
        t = jnp.linspace(0.0, 1.0, steps)[:, None]
        z = (1 - t) * means[0] + t * means[1]
        return self.mean_image(z, labels)

    def scores(self, x, labels=None, *, k: int = 0, key=0, chunk_size: int = 100) -> dict:
        """Per-example scores, to rank and inspect examples by their likelihood.

        ``evaluate`` reports the means of these over a split (drawn with its own keys).

        Args:
          x: images (N, H, W, C) in [0, 1], or one image.
          labels: int labels, one per image, for a conditional model; else None.
          k: importance samples K for ``log_px``; 0 skips it.
          key: the PRNG key of the posterior samples, or an int seed.
          chunk_size: importance samples evaluated at once (bounds memory).

        Returns:
          {"elbo", "recon", "kl"}: (N,) arrays in nats, one posterior sample each; and
          "log_px", the (N,) importance-sampled log p̂(x), when k ≥ 1 and the posterior
          has a density.
        """
        _require_int(k, 0, "k must be an integer ≥ 0 (0: no importance sampling)")
        _require_int(chunk_size, 1, "chunk_size must be an integer ≥ 1")
        x, key = self._inputs(x), _as_key(key)
        labels = self._labels(labels, len(x))
        elbo_key, sampling_key = jax.random.split(key)
        _, terms = objectives.elbo_loss(
            self.model,
            self.params,
            x,
            elbo_key,
            labels=labels,
            code_l2=self.config.model.code_l2,
        )
        out = {name: np.asarray(terms[name]) for name in ("elbo", "recon", "kl")}
        if k > 0 and self.model.posterior_family != "deterministic":
            out["log_px"] = np.asarray(
                metrics.importance_sampled_log_likelihood(
                    self.model, self.params, x, sampling_key, k, min(chunk_size, k), labels
                )
            )
        return out

    def evaluate(
        self,
        split: str = "test",
        k: int | None = None,
        *,
        batch_size: int | None = None,
        chunk_size: int | None = None,
        progress: bool = False,
    ) -> dict:
        """Scores of a split through the one evaluation core (``cvae.evaluation``).

        The mesh is the training run's device count where this machine has that many devices
        (so the test ELBO equals the one training logged), else every local device.

        Args:
          split: a role (train | validation | test: the split the run's config names for it,
            the carved validation subset included) or any TFDS split string.
          k: importance samples for ``nll_is``; None for the run's ``eval`` config.
          batch_size: examples per batch; None for the run's ``eval`` config.
          chunk_size: importance samples at once; None for the run's ``eval`` config.
          progress: show a progress bar.

        Returns:
          What ``cvae.evaluation.evaluate`` returns (means in nats over every example), and
          the ``split``.
        """
        return evaluation.evaluate_run(
            self, split, k, batch_size=batch_size, chunk_size=chunk_size, progress=progress
        )

    def eval_set(self, split: str = "test", binarized: bool | None = None):
        """A split as evaluation reads it, row range by row range; nothing is read until asked for.

        Args:
          split: a role or a split string.
          binarized: False for the grey intensities; None to binarize when the run binarizes.

        Returns:
          The evaluation set (``cvae.evaluation.EvalSet``).
        """
        binarized = self.config.data.binarize == "dynamic" if binarized is None else binarized
        return evaluation.EvalSet(data.role_source(self.config.data, split), binarized)

    def inputs(
        self, split: str = "test", count: int | None = None, *, binarized: bool | None = None
    ):
        """The first examples of a split as the model sees them in evaluation.

        Only those rows are read.

        Args:
          split: a role or a split string.
          count: how many examples; None for all.
          binarized: False for the grey intensities; None to binarize when the run binarizes.

        Returns:
          (images float32 in [0, 1], labels or None for unlabelled data).
        """
        return self.eval_set(split, binarized).first(count)

    def training_codes(self, max_examples: int = 20000):
        """Posterior means of training images, and their labels.

        Only those images are read, 1,000 at a time (a streamed split is never loaded whole),
        binarized exactly as the first rows of the whole split's evaluation binarization.

        Args:
          max_examples: at most this many images, from the start of the split.

        Returns:
          (codes (n, d), labels or None).
        """
        sample = self.eval_set("train").head(max_examples)
        codes, labels = [], []
        for images, y in sample.unit_batches(1000):
            condition = y if self.model.num_classes else None
            codes.append(np.asarray(self.encode(images, condition, flat=True)[0]))
            labels.append(y)
        return np.concatenate(codes), (np.concatenate(labels) if self.info.num_classes else None)

    def latent_mixture(self, label: int | None = None) -> samplers.LatentMixture:
        """The ex-post Gaussian mixture (``ex_post("gmm")``).

        Args:
          label: fit to the codes of this class only; None for all codes.

        Returns:
          The mixture.
        """
        return self.ex_post("gmm", label)

    @property
    def params_sha256(self) -> str:
        """A digest of the params' values: what a fitted sampler or a score was made from."""
        return provenance.params_sha256(self.params)

    def ex_post(
        self, kind: str, label: int | None = None, conditional: bool = False, top: int = 0
    ) -> Any:
        """An ex-post density of the training codes, fitted once and saved
        (``cvae.samplers.SamplerStore``).

        Fitted once per set of params and fit lengths (``config.ex_post``) and saved in
        ``DIR/samplers/``: a later call, or a later process, loads it instead of refitting
        (a run trained further, or given other fit lengths, refits). The
        fit draws from ``fold_in(key(seed), i)``, i the kind's index, and the mixture uses
        the run's seed: a rerun gives the same samples.

        Args:
          kind: "gmm", "flow", "two_stage" or "diffusion" (``cvae.samplers``).
          label: fit to the codes of this class only; None for all codes.
          conditional: fit one class-conditional density to every code and its label
            (the diffusion sampler).
          top: fit to the codes of a hierarchy's top ``top`` layers alone (saved as
            "KIND@top" for one, "KIND@topN" for N); 0: the whole code.

        Returns:
          The sampler (``sample(key, n)``, ``log_prob(z)``).
        """
        if self._store is None:
            self._store = samplers.SamplerStore(
                Workdir(self.workdir),
                self.params_sha256,
                self.config.seed,
                self.config.ex_post,
                self.training_codes,
                self.info.num_classes,
                tuple(self.model.layer_dims),
            )
        return self._store.get(kind, label, conditional, top)


def _as_key(key):
    """A PRNG key from a key or an int seed; anything else is refused in one line."""
    if isinstance(key, int | np.integer) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and (
        jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        or (key.dtype == jnp.uint32 and key.shape == (2,))  # a legacy PRNGKey
    ):
        return key
    raise TypeError(
        f"key must be a PRNG key such as jax.random.key(0), or an int seed; got "
        f"{type(key).__name__} {getattr(key, 'dtype', '')} {getattr(key, 'shape', '')}".rstrip()
    )


def _require_int(value, minimum: int, message: str) -> None:
    """Raises ``ValueError(message, got value)`` unless ``value`` is an integer ≥ minimum."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{message}, got {value!r}")


def load_run(workdir: str | pathlib.Path, which: str = "best") -> Run:
    """A trained run: its config, model and parameters, ready for notebooks and scripts.

    Args:
      workdir: the run directory.
      which: "best" (by validation ELBO; the latest checkpoint when there is no best yet)
        or "latest".

    Returns:
      The run.

    Raises:
      RunNotFoundError: no run, or no checkpoint, in the directory.
    """
    return Run(**vars(restore(workdir, which)))
