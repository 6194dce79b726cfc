"""Ex-post densities over latent codes: fitted after training, saved in the workdir.

A collapsed or deterministic model is not trained to make N(0, I) its aggregate
posterior; it is sampled through a density fitted to its training codes afterwards
(Ghosh et al., 2020). Four kinds, one module each, one interface (``sample(key, n)``,
``log_prob(z)``):

* ``gmm``: a full-covariance Gaussian mixture (scikit-learn's EM, sampled in JAX with
  an explicit key; ``LatentMixture``).
* ``flow``: a masked autoregressive flow (Papamakarios et al., 2017) with affine
  transformers, from flowjax, fitted by maximum likelihood to the standardised codes.
* ``two_stage``: the two-stage VAE of Dai & Wipf (2019): a second, small VAE trained on
  the standardised codes and sampled through its own prior.
* ``diffusion``: a flow-matching model over the standardised codes, sampled by solving its
  ODE; fitted with labels it samples p(z|y) with classifier-free guidance.

Each module declares its ``Kind`` (``kind``: fit, fit lengths, save, load); ``registry``
keys them by name and does ``fit``, ``save`` and ``load`` for any of them; ``store``'s
``SamplerStore`` fits a run's samplers once, saves them and loads them thereafter. Fitting
is a function of the codes and an explicit key, and a saved sampler loads bit-identically,
so sampling twice does not refit and a rerun draws the same samples.
"""

from cvae.samplers.diffusion import DiffusionSampler, fit_diffusion
from cvae.samplers.flow import LatentFlow, fit_latent_flow
from cvae.samplers.gmm import LatentMixture, fit_latent_mixture
from cvae.samplers.registry import (
    EX_POST,
    FIT_VERSION,
    KINDS,
    SAMPLERS,
    TOP,
    TOP_SAMPLERS,
    default_sampler,
    fit,
    fit_budget,
    is_top_sampler,
    kind_named,
    load,
    save,
    split_sampler,
    top_sampler_name,
)
from cvae.samplers.store import SamplerStore
from cvae.samplers.two_stage import TwoStageSampler, fit_two_stage

__all__ = [
    "EX_POST",
    "FIT_VERSION",
    "KINDS",
    "SAMPLERS",
    "TOP",
    "TOP_SAMPLERS",
    "DiffusionSampler",
    "LatentFlow",
    "LatentMixture",
    "SamplerStore",
    "TwoStageSampler",
    "default_sampler",
    "fit",
    "fit_budget",
    "fit_diffusion",
    "fit_latent_flow",
    "fit_latent_mixture",
    "fit_two_stage",
    "is_top_sampler",
    "kind_named",
    "load",
    "save",
    "split_sampler",
    "top_sampler_name",
]
