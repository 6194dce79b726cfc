"""Ex-post densities over latent codes: fitted after training, saved in the workdir.

A collapsed or deterministic model is not trained to make N(0, I) its aggregate
posterior; it is sampled through a density fitted to its training codes afterwards
(Ghosh et al., 2020). Four kinds, one interface (``sample(key, n)``, ``log_prob(z)``):

* ``gmm``: a full-covariance Gaussian mixture (scikit-learn's EM, sampled in JAX with
  an explicit key; ``LatentMixture``).
* ``flow``: a masked autoregressive flow (Papamakarios et al., 2017) with affine
  transformers, from flowjax, fitted by maximum likelihood to the standardised codes.
* ``two_stage``: the two-stage VAE of Dai & Wipf (2019): a second, small VAE trained on
  the standardised codes — Gaussian decoder N(z; D(u), γ I) with a learned γ, prior
  u ~ N(0, I) — and sampled through its own prior. Its ``log_prob`` is an importance-sampled
  estimate.
* ``diffusion``: a flow-matching model over the standardised codes, sampled by solving its
  ODE (``cvae.analysis.diffusion``); fitted with labels it samples p(z|y) with
  classifier-free guidance.

Fitting is a function of the codes and an explicit key. ``save`` writes a sampler to a
directory (a temporary one, renamed when complete) and ``load`` reads it back
bit-identically, so sampling twice does not refit and a rerun draws the same samples.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import shutil
import tempfile
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from cvae import config as config_lib
from cvae.analysis import diffusion

EX_POST = ("gmm", "flow", "two_stage", "diffusion")
SAMPLERS = ("prior", *EX_POST)  # "prior": the model's own prior, VAE.sample_prior
# A hierarchy's ex-post densities fitted to the top layer's codes alone ("gmm@top", …); the
# layers below are drawn from the model's p(z_{l−1} | z_l) (the model's ``descend``).
TOP = "@top"
TOP_SAMPLERS = tuple(f"{kind}{TOP}" for kind in EX_POST)


def split_sampler(name: str) -> tuple[str, bool]:
    """``"gmm@top"`` → ("gmm", True); ``"gmm"`` → ("gmm", False).

    Args:
      name: a sampler's name.

    Returns:
      (the sampler kind, whether it is fitted to a hierarchy's top-layer codes).
    """
    kind, top = name.removesuffix(TOP), name.endswith(TOP)
    return kind, top


_META = "sampler.json"
# Raised whenever a fitting procedure changes: a save of another version is not loaded (the
# run refits). 2: the two-stage VAE standardises its codes and warms its KL up.
FIT_VERSION = 2


# ------------------------------------------------------------------ gmm (scikit-learn)


@dataclasses.dataclass(frozen=True)
class LatentMixture:
    """A fitted mixture Σ_k π_k N(μ_k, Σ_k) over latent codes."""

    log_weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, d)
    cholesky: np.ndarray  # (K, d, d), Σ_k = L_k L_kᵀ

    def sample(self, key, num_samples: int):
        """z = μ_c + L_c ε with c ~ Categorical(π), ε ~ N(0, I).

        Args:
          key: the PRNG key of the draw.
          num_samples: how many codes.

        Returns:
          (num_samples, d) codes.
        """
        component_key, noise_key = jax.random.split(key)
        c = jax.random.categorical(
            component_key, jnp.asarray(self.log_weights), shape=(num_samples,)
        )
        eps = jax.random.normal(noise_key, (num_samples, self.means.shape[-1]))
        chol = jnp.asarray(self.cholesky)[c]
        return jnp.asarray(self.means)[c] + jnp.einsum("nij,nj->ni", chol, eps)

    def log_prob(self, z):
        """log Σ_k π_k N(z; μ_k, L_k L_kᵀ).

        Args:
          z: codes (N, d).

        Returns:
          (N,) log-densities.
        """
        z = jnp.asarray(z, jnp.float32)
        diff = z[:, None, :] - jnp.asarray(self.means)[None]  # (N, K, d)
        chol = jnp.asarray(self.cholesky)
        solved = jax.vmap(
            lambda L, r: jax.scipy.linalg.solve_triangular(L, r.T, lower=True).T,
            in_axes=(0, 1),
            out_axes=1,
        )(chol, diff)
        log_det = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        log_normal = (
            -0.5 * jnp.sum(solved**2, axis=-1) - log_det - 0.5 * z.shape[-1] * jnp.log(2 * jnp.pi)
        )
        return jax.nn.logsumexp(jnp.asarray(self.log_weights) + log_normal, axis=-1)


def fit_latent_mixture(codes, num_components: int = 10, seed: int = 0) -> LatentMixture:
    """Fits a full-covariance Gaussian mixture to training codes with EM (scikit-learn).

    Args:
      codes: (N, d).
      num_components: K.
      seed: scikit-learn's ``random_state`` of the initialisation.

    Returns:
      The mixture, sampled in JAX with an explicit key.

    Raises:
      ValueError: fewer than K·(d + 1) codes (a full covariance would be singular).
    """
    from sklearn.mixture import GaussianMixture

    codes = np.asarray(codes, np.float64)
    # Each full covariance is non-singular only with more than d codes per component.
    needed = num_components * (codes.shape[-1] + 1)
    if len(codes) < needed:
        raise ValueError(
            f"fitting a {num_components}-component mixture to {codes.shape[-1]}-"
            f"dimensional codes needs at least {needed} training codes, got "
            f"{len(codes)}; use --sampler prior or train on more data"
        )
    gmm = GaussianMixture(
        num_components, covariance_type="full", reg_covar=1e-6, random_state=seed
    ).fit(codes)
    return LatentMixture(
        np.log(gmm.weights_).astype(np.float32),
        gmm.means_.astype(np.float32),
        np.linalg.cholesky(gmm.covariances_).astype(np.float32),
    )


def default_sampler(posterior_family: str) -> str:
    """The sampler a model uses when none is named.

    Args:
      posterior_family: the model's posterior family.

    Returns:
      "prior" for the gaussian VAE, "gmm" for collapsed and deterministic models.
    """
    return "prior" if posterior_family == "gaussian" else "gmm"


# ------------------------------------------------------------------ flow (flowjax)


@dataclasses.dataclass
class LatentFlow:
    """z = shift + scale ⊙ f(ε): a flowjax MAF over standardised codes."""

    flow: Any  # flowjax.distributions.Transformed
    shift: np.ndarray
    scale: np.ndarray
    layers: int
    width: int

    def sample(self, key, num_samples: int):
        """Codes drawn through the flow, the standardisation undone.

        Args:
          key: the PRNG key of the draw.
          num_samples: how many codes.

        Returns:
          (num_samples, d) codes.
        """
        return jnp.asarray(self.shift) + jnp.asarray(self.scale) * self.flow.sample(
            key, (num_samples,)
        )

    def log_prob(self, z):
        """log p(z) = log p_flow((z − shift)/scale) − Σ log scale.

        Args:
          z: codes (N, d).

        Returns:
          (N,) log-densities.
        """
        standard = (jnp.asarray(z) - self.shift) / self.scale
        return self.flow.log_prob(standard) - float(np.sum(np.log(self.scale)))


def _flow_skeleton(dim: int, layers: int, width: int, key):
    from flowjax.distributions import Normal
    from flowjax.flows import masked_autoregressive_flow

    return masked_autoregressive_flow(
        key, base_dist=Normal(jnp.zeros(dim)), flow_layers=layers, nn_width=width
    )


def fit_latent_flow(
    codes,
    key,
    *,
    layers: int = 8,
    width: int = 64,
    max_epochs: int = 200,
    progress: bool = False,
) -> LatentFlow:
    """A masked autoregressive flow fitted by maximum likelihood to the standardised codes.

    flowjax's ``fit_to_data``: Adam, 10% of the codes held out for early stopping, the best
    parameters kept.

    Args:
      codes: (N, d).
      key: the PRNG key of the initialisation and the batches.
      layers: the flow's autoregressive layers.
      width: the conditioner networks' width.
      max_epochs: the most passes over the codes.
      progress: show flowjax's progress bar (tqdm) over the epochs.

    Returns:
      The fitted flow.
    """
    from flowjax.train import fit_to_data

    codes = np.asarray(codes, np.float32)
    shift, scale = codes.mean(axis=0), codes.std(axis=0) + 1e-6
    init_key, fit_key = jax.random.split(key)
    flow = _flow_skeleton(codes.shape[-1], layers, width, init_key)
    flow, _ = fit_to_data(
        fit_key,
        flow,
        (codes - shift) / scale,
        learning_rate=1e-3,
        max_epochs=max_epochs,
        max_patience=10,
        batch_size=256,
        show_progress=progress,
    )
    return LatentFlow(flow, shift, scale, layers, width)


# ------------------------------------------------------------------ two-stage VAE


class _CodeVAE(nn.Module):
    """The second stage: an MLP VAE over d-dimensional codes, latent u of the same size."""

    dim: int
    width: int = 256

    def setup(self):
        self.encoder_trunk = [nn.Dense(self.width), nn.Dense(self.width)]
        self.encoder_mean, self.encoder_log_var = nn.Dense(self.dim), nn.Dense(self.dim)
        self.decoder_trunk = [nn.Dense(self.width), nn.Dense(self.width)]
        self.decoder_mean = nn.Dense(self.dim)
        self.log_gamma = self.param("log_gamma", nn.initializers.zeros, ())

    def encode(self, z):
        h = z
        for layer in self.encoder_trunk:
            h = nn.relu(layer(h))
        return self.encoder_mean(h), self.encoder_log_var(h)

    def decode(self, u):
        h = u
        for layer in self.decoder_trunk:
            h = nn.relu(layer(h))
        return self.decoder_mean(h)

    def __call__(self, z):
        mean, log_var = self.encode(z)
        return mean, log_var, self.decode(mean)


def _gaussian_log_prob(x, mean, log_var):
    return -0.5 * jnp.sum(
        math.log(2 * math.pi) + log_var + (x - mean) ** 2 * jnp.exp(-log_var), axis=-1
    )


def _code_log_weights(module, params, z, key, k: int):
    """log p(z|u) + log p(u) − log q(u|z) for k draws u ~ q(u|z): shape (k, B)."""
    mean, log_var = module.apply({"params": params}, z, method=module.encode)
    u = mean + jnp.exp(0.5 * log_var) * jax.random.normal(key, (k,) + mean.shape)
    decoded = module.apply({"params": params}, u, method=module.decode)
    log_gamma = jnp.broadcast_to(params["log_gamma"], z.shape)
    return (
        _gaussian_log_prob(z, decoded, log_gamma)
        + _gaussian_log_prob(u, 0.0, jnp.zeros_like(u))
        - _gaussian_log_prob(u, mean, log_var)
    )


@dataclasses.dataclass
class TwoStageSampler:
    """z = shift + scale ⊙ D(u), u ~ N(0, I): the second-stage VAE's decoder mean, over
    standardised codes."""

    params: dict
    dim: int
    width: int
    shift: np.ndarray
    scale: np.ndarray

    @property
    def module(self) -> _CodeVAE:
        return _CodeVAE(self.dim, self.width)

    def sample(self, key, num_samples: int):
        """u ~ N(0, I) through the second stage's decoder mean, the standardisation undone.

        Args:
          key: the PRNG key of the draw.
          num_samples: how many codes.

        Returns:
          (num_samples, d) codes.
        """
        u = jax.random.normal(key, (num_samples, self.dim))
        decoded = self.module.apply({"params": self.params}, u, method=_CodeVAE.decode)
        assert isinstance(decoded, jax.Array)  # apply returns (out, state) only when mutable
        return jnp.asarray(self.shift) + jnp.asarray(self.scale) * decoded

    def log_prob(self, z, key=None, k: int = 200):
        """Importance-sampled log p(z), the standardisation's Jacobian included.

        Args:
          z: codes (N, d).
          key: the PRNG key of the importance samples; None for key 0.
          k: importance samples per code.

        Returns:
          (N,) log-density estimates.
        """
        key = jax.random.key(0) if key is None else key
        standard = (jnp.asarray(z) - self.shift) / self.scale
        log_w = _code_log_weights(self.module, self.params, standard, key, k)
        return jax.nn.logsumexp(log_w, axis=0) - math.log(k) - float(np.sum(np.log(self.scale)))


def fit_two_stage(
    codes,
    key,
    *,
    width: int = 256,
    epochs: int = 100,
    warmup_epochs: int = 20,
    batch_size: int = 100,
    learning_rate: float = 1e-3,
) -> TwoStageSampler:
    """Trains the second stage of Dai & Wipf (2019) on the standardised codes.

    Adam, one-sample ELBO with the learned γ of Dai & Wipf, the whole fit one compiled
    ``lax.scan`` over epochs and batches. Standardising is what keeps it alive: on raw codes
    of variance ≈ 0.5, below the initial γ = 1, u bought less reconstruction than its KL cost
    and the second stage collapsed (every sample the mean code). The KL weight also warms up
    from 0 to 1 over ``warmup_epochs``.

    Args:
      codes: (N, d).
      key: the PRNG key of the initialisation, order and samples.
      width: the second VAE's hidden width.
      epochs: passes over the codes.
      warmup_epochs: epochs over which the KL weight rises from 0 to 1.
      batch_size: codes per step.
      learning_rate: Adam's step size.

    Returns:
      The fitted sampler.
    """
    codes = np.asarray(codes, np.float32)
    shift, scale = codes.mean(axis=0), codes.std(axis=0) + 1e-6
    standard = jnp.asarray((codes - shift) / scale)
    n, dim = codes.shape
    batch_size = min(batch_size, n)
    steps = n // batch_size
    warmup_steps = max(1, warmup_epochs * steps)
    module = _CodeVAE(dim, width)
    init_key, order_key, noise_key = jax.random.split(key, 3)
    params = module.init(init_key, standard[:1])["params"]
    tx = optax.adam(learning_rate)

    def loss(params, batch, key, kl_weight):
        bound = module.bind({"params": params})
        mean, log_var = bound.encode(batch)
        u = mean + jnp.exp(0.5 * log_var) * jax.random.normal(key, mean.shape)
        decoded = bound.decode(u)
        log_gamma = jnp.broadcast_to(params["log_gamma"], batch.shape)
        kl = 0.5 * jnp.sum(jnp.exp(log_var) + mean**2 - 1.0 - log_var, axis=-1)
        return -jnp.mean(_gaussian_log_prob(batch, decoded, log_gamma) - kl_weight * kl)

    def epoch(carry, e):
        params, opt_state = carry
        order = jax.random.permutation(jax.random.fold_in(order_key, e), n)[: steps * batch_size]

        def step(carry, s):
            params, opt_state = carry
            batch = standard[jax.lax.dynamic_slice_in_dim(order, s * batch_size, batch_size)]
            t = e * steps + s
            kl_weight = jnp.minimum(1.0, (t + 1) / warmup_steps)
            grads = jax.grad(loss)(params, batch, jax.random.fold_in(noise_key, t), kl_weight)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        return jax.lax.scan(step, (params, opt_state), jnp.arange(steps))[0], None

    (params, _), _ = jax.jit(lambda p, o: jax.lax.scan(epoch, (p, o), jnp.arange(epochs)))(
        params, tx.init(params)
    )
    return TwoStageSampler(jax.device_get(params), dim, width, shift, scale)


# ------------------------------------------------------------------ one interface


def fit(
    kind: str,
    codes,
    key,
    *,
    seed: int = 0,
    progress: bool = False,
    labels=None,
    num_classes: int = 0,
    budget=None,
):
    """The ex-post density ``kind`` fitted to training codes.

    Args:
      kind: "gmm", "flow", "two_stage" or "diffusion".
      codes: (N, d).
      key: the PRNG key of the flow's, the two-stage VAE's and the diffusion model's fit.
      seed: scikit-learn's integer seed for the mixture.
      progress: show a progress bar where the fit has steps to count (flow, diffusion).
      labels: (N,) int labels: a class-conditional diffusion model (the other kinds are
        fitted per class instead, to that class's codes).
      num_classes: the number of classes when labels are given.
      budget: the fits' lengths, a config's ``ex_post`` section (``flow_max_epochs``,
        ``two_stage_epochs``, ``diffusion_updates``); None for the defaults.

    Returns:
      The sampler (``sample(key, n)``, ``log_prob(z)``).

    Raises:
      ValueError: an unknown kind, or too few codes for the mixture.
    """
    budget = fit_budget(budget)
    if kind == "gmm":
        return fit_latent_mixture(codes, seed=seed)
    if kind == "flow":
        return fit_latent_flow(codes, key, max_epochs=budget["flow_max_epochs"], progress=progress)
    if kind == "two_stage":
        epochs = budget["two_stage_epochs"]
        return fit_two_stage(codes, key, epochs=epochs, warmup_epochs=max(1, epochs // 5))
    if kind == "diffusion":
        return diffusion.fit_diffusion(
            codes,
            key,
            labels,
            num_classes,
            num_updates=budget["diffusion_updates"] or None,
            progress=progress,
        )
    raise ValueError(f"the ex-post samplers are {EX_POST}, got {kind!r}")


# The fields of a config's ``ex_post`` section each kind's fit reads.
BUDGET_FIELDS = {
    "gmm": (),
    "flow": ("flow_max_epochs",),
    "two_stage": ("two_stage_epochs",),
    "diffusion": ("diffusion_updates",),
}


def fit_budget(section=None, kind: str | None = None) -> dict:
    """The fits' lengths as a plain dict.

    Args:
      section: a config's ``ex_post`` section (or a dict of some of its fields); the
        defaults of ``cvae.config.base_config`` fill the rest. None for the defaults.
      kind: keep only the fields this kind's fit reads (what its saved sampler records,
        to be refitted when they change); None for all.

    Returns:
      Field name → value.

    Raises:
      ValueError: an unknown kind.
    """
    budget = config_lib.base_config().ex_post.to_dict()
    if section is not None:
        given = section.to_dict() if hasattr(section, "to_dict") else dict(section)
        budget.update({k: given[k] for k in budget if k in given})
    if kind is not None:
        if kind not in BUDGET_FIELDS:
            raise ValueError(f"the ex-post samplers are {EX_POST}, got {kind!r}")
        budget = {k: budget[k] for k in BUDGET_FIELDS[kind]}
    return budget


def save(sampler, directory, meta: dict) -> None:
    """Writes a sampler and its metadata to a directory, replaced whole, atomically.

    Args:
      sampler: a fitted sampler.
      directory: where to write (``Workdir.sampler_dir``).
      meta: what identifies the fit (kind, params digest, seed …).
    """
    import equinox as eqx

    directory = pathlib.Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(dir=directory.parent, prefix=".saving-"))
    if isinstance(sampler, LatentMixture):
        kind = "gmm"
        np.savez(
            staging / "mixture.npz",
            log_weights=sampler.log_weights,
            means=sampler.means,
            cholesky=sampler.cholesky,
        )
        shape = {}
    elif isinstance(sampler, LatentFlow):
        kind = "flow"
        eqx.tree_serialise_leaves(staging / "flow.eqx", sampler.flow)
        np.savez(staging / "standardise.npz", shift=sampler.shift, scale=sampler.scale)
        shape = {"dim": int(len(sampler.shift)), "layers": sampler.layers, "width": sampler.width}
    elif isinstance(sampler, diffusion.DiffusionSampler):
        kind = "diffusion"
        (staging / "params.msgpack").write_bytes(serialization.to_bytes(sampler.params))
        np.savez(staging / "standardise.npz", shift=sampler.shift, scale=sampler.scale)
        shape = {
            "dim": sampler.dim,
            "width": sampler.width,
            "depth": sampler.depth,
            "num_classes": sampler.num_classes,
        }
    elif isinstance(sampler, TwoStageSampler):
        kind = "two_stage"
        (staging / "params.msgpack").write_bytes(serialization.to_bytes(sampler.params))
        np.savez(staging / "standardise.npz", shift=sampler.shift, scale=sampler.scale)
        shape = {"dim": sampler.dim, "width": sampler.width}
    else:
        raise TypeError(f"cannot save a {type(sampler).__name__}")
    (staging / _META).write_text(
        json.dumps({**meta, "kind": kind, "shape": shape, "fit_version": FIT_VERSION}, indent=2)
    )
    if directory.exists():
        shutil.rmtree(directory)
    staging.rename(directory)


def load(directory):
    """A sampler written by ``save``.

    Args:
      directory: where it was saved.

    Returns:
      (sampler, meta), or None when the directory holds none, or one fitted by an older
      procedure (``FIT_VERSION``).
    """
    import equinox as eqx

    directory = pathlib.Path(directory)
    if not (directory / _META).is_file():
        return None
    meta = json.loads((directory / _META).read_text())
    if meta.get("fit_version") != FIT_VERSION:
        return None
    shape = meta["shape"]
    if meta["kind"] == "gmm":
        with np.load(directory / "mixture.npz") as f:
            return LatentMixture(f["log_weights"], f["means"], f["cholesky"]), meta
    if meta["kind"] == "flow":
        skeleton = _flow_skeleton(shape["dim"], shape["layers"], shape["width"], jax.random.key(0))
        flow = eqx.tree_deserialise_leaves(directory / "flow.eqx", skeleton)
        with np.load(directory / "standardise.npz") as f:
            return LatentFlow(flow, f["shift"], f["scale"], shape["layers"], shape["width"]), meta
    if meta["kind"] == "diffusion":
        module = diffusion.VelocityNet(
            shape["dim"], shape["width"], shape["depth"], shape["num_classes"]
        )
        template = diffusion.initial_params(module, jax.random.key(0))
        params = serialization.from_bytes(template, (directory / "params.msgpack").read_bytes())
        with np.load(directory / "standardise.npz") as f:
            return diffusion.DiffusionSampler(
                jax.device_get(params),
                shape["dim"],
                shape["width"],
                shape["depth"],
                shape["num_classes"],
                f["shift"],
                f["scale"],
            ), meta
    template = _CodeVAE(shape["dim"], shape["width"]).init(
        jax.random.key(0), jnp.zeros((1, shape["dim"]))
    )["params"]
    params = serialization.from_bytes(template, (directory / "params.msgpack").read_bytes())
    with np.load(directory / "standardise.npz") as f:
        return TwoStageSampler(
            jax.device_get(params), shape["dim"], shape["width"], f["shift"], f["scale"]
        ), meta
