"""``flow``: a masked autoregressive flow (Papamakarios et al., 2017) with affine
transformers, from flowjax, fitted by maximum likelihood to the standardised codes.

flowjax and equinox are imported by the functions that use them: loaded with the module,
they would add a quarter of a second to the start of every command, most of which never
fits or loads a flow."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cvae import progress as progress_lib
from cvae.samplers.kind import Kind, load_standardisation, save_standardisation


@dataclasses.dataclass
class LatentFlow:
    """z = shift + scale ⊙ f(ε): a flowjax MAF over standardised codes."""

    kind = "flow"
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
        show_progress=progress and progress_lib.on_terminal(),
    )
    return LatentFlow(flow, shift, scale, layers, width)


def _fit(codes, key, *, seed: int, progress: bool, labels, num_classes: int, budget: dict):
    del seed, labels, num_classes  # fitted per class by the caller
    return fit_latent_flow(codes, key, max_epochs=budget["flow_max_epochs"], progress=progress)


def _save(sampler: LatentFlow, directory: pathlib.Path) -> dict:
    import equinox as eqx

    eqx.tree_serialise_leaves(directory / "flow.eqx", sampler.flow)
    save_standardisation(directory, sampler.shift, sampler.scale)
    return {"dim": int(len(sampler.shift)), "layers": sampler.layers, "width": sampler.width}


def _load(directory: pathlib.Path, shape: dict) -> LatentFlow:
    import equinox as eqx

    skeleton = _flow_skeleton(shape["dim"], shape["layers"], shape["width"], jax.random.key(0))
    flow = eqx.tree_deserialise_leaves(directory / "flow.eqx", skeleton)
    shift, scale = load_standardisation(directory)
    return LatentFlow(flow, shift, scale, shape["layers"], shape["width"])


KIND = Kind("flow", _fit, ("flow_max_epochs",), _save, _load)
