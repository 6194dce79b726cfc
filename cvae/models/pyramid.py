"""The nets of a conv pyramid with a top-down state (``cvae.models.residual_hierarchy``):
a bottom-up stage, the heads that read a grid into a latent's Gaussian, the upsampling of
the state, the write of a latent into it, and the decoder of the finest state.

A latent is a vector (``GridHeads`` read it from a grid, ``GridWrite`` writes it in) or a
map on the grid's own positions (``MapHeads``, ``MapWrite``: VDVAE's groups); deterministic
states are grids. Every net takes any leading axes (samples, then the batch) before the
grid's H×W×C or the vector's features; a map travels flattened, (…, H·W·c), as every code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cvae.models.nets import (
    ACTIVATIONS,
    MLPStack,
    ResidualBlock,
    gaussian_heads,
    pixel_params,
)


def _on_grids(fn: Callable[[jax.Array], jax.Array], grid: jax.Array) -> jax.Array:
    """``fn`` of a batch N×H×W×C applied to grids with any leading axes (…, H, W, C)."""
    lead = grid.shape[:-3]
    out = fn(grid.reshape((-1,) + grid.shape[-3:]))
    return out.reshape(lead + out.shape[1:])


class FeatureStage(nn.Module):
    """One stage of the bottom-up pass, h_{l−1} → h_l: a residual block at h_{l−1}'s width,
    then a stride-2 4×4 convolution to ``channels`` (halving H and W); the stage that
    reads x starts with a 3×3 stem convolution to ``channels`` (as ``ResNetEncoder``)."""

    channels: int
    activation: str = "relu"
    stem: bool = False

    @nn.compact
    def __call__(self, h):
        act = ACTIVATIONS[self.activation]

        def stage(h):
            if self.stem:
                h = nn.Conv(self.channels, (3, 3), padding="SAME", name="stem")(h)
            h = ResidualBlock(h.shape[-1], self.activation, name="block")(h)
            return nn.Conv(self.channels, (4, 4), strides=(2, 2), padding="SAME", name="down")(
                act(h)
            )

        return _on_grids(stage, h)


class GridHeads(nn.Module):
    """A grid (…, H, W, C) → the (mean, log-variance or None) of a latent vector, each
    (…, latent_dim): GroupNorm and the activation, flattened, an MLP of ``widths``, then a
    mean head and (``variance_head``) a log-variance head."""

    widths: Sequence[int]
    latent_dim: int
    variance_head: bool = True
    activation: str = "relu"

    @nn.compact
    def __call__(self, grid):
        act = ACTIVATIONS[self.activation]
        h = _on_grids(lambda g: act(nn.GroupNorm(8, name="norm")(g)), grid)
        h = h.reshape(grid.shape[:-3] + (-1,))
        h = MLPStack(self.widths, self.activation, name="trunk")(h)
        return gaussian_heads(h, self.latent_dim, self.variance_head)


class GridExpand(nn.Module):
    """A state one level up the pyramid → the next finer grid: nearest-neighbour ×2
    upsampling, the activation, a 3×3 convolution to ``channels``."""

    channels: int
    activation: str = "relu"

    @nn.compact
    def __call__(self, state):
        act = ACTIVATIONS[self.activation]

        def expand(h):
            h = jax.image.resize(
                h, (h.shape[0], h.shape[1] * 2, h.shape[2] * 2, h.shape[3]), "nearest"
            )
            return nn.Conv(self.channels, (3, 3), padding="SAME", name="conv")(act(h))

        return _on_grids(expand, state)


class GridWrite(nn.Module):
    """Writes a latent vector into the state: state ← block(state + W z), with W z a dense
    map laid out on the state's grid ``grid`` = (H, W, C) (on top, where there is no state
    yet, block(W z))."""

    grid: tuple[int, int, int]
    activation: str = "relu"

    @nn.compact
    def __call__(self, state, z):
        height, width, channels = self.grid
        written = nn.Dense(height * width * channels, name="write")(z)
        written = written.reshape(z.shape[:-1] + (height, width, channels))
        state = written if state is None else state + written
        return _on_grids(ResidualBlock(channels, self.activation, name="block"), state)


class GridDecoder(nn.Module):
    """The finest state (…, H/2, W/2, C) → p(x|·)'s parameters (…, *param_shape): ×2
    upsampling, a 3×3 convolution to ``channels``, a residual block, GroupNorm and the
    activation, and a 3×3 convolution to every likelihood parameter per pixel."""

    channels: int
    param_shape: tuple[int, ...]
    activation: str = "relu"

    @nn.compact
    def __call__(self, state):
        act = ACTIVATIONS[self.activation]
        lead = state.shape[:-3]
        h = state.reshape((-1,) + state.shape[-3:])
        h = jax.image.resize(h, (h.shape[0], h.shape[1] * 2, h.shape[2] * 2, h.shape[3]), "nearest")
        h = nn.Conv(self.channels, (3, 3), padding="SAME", name="up")(act(h))
        h = ResidualBlock(self.channels, self.activation, name="block")(h)
        h = act(nn.GroupNorm(8, name="norm_out")(h))
        return pixel_params(h, self.param_shape, lead, 3)


# A map head's log-variance is soft-clamped to (−B, B), B = 10 (σ between 0.0067 and 148):
# NVAE's bound on its log-scales (5·tanh(·/5), Vahdat & Kautz, 2020), which keeps a deep
# model's KL terms and their gradients finite when a head's output runs away early on.
LOG_VAR_BOUND = 10.0


def soft_clamp(value, bound: float):
    """bound · tanh(value / bound): the identity near 0, smoothly bounded by ±bound.

    Args:
      value: any array.
      bound: the bound B > 0.

    Returns:
      The clamped array, in (−B, B).
    """
    return bound * jnp.tanh(value / bound)


class MapHeads(nn.Module):
    """A grid (…, H, W, C) → the (mean, log-variance or None) of a latent *map* with
    ``code_channels`` channels at each of its H×W positions, each flattened to
    (…, H·W·code_channels): GroupNorm and the activation, a 3×3 convolution to ``width``,
    the activation, then 1×1 convolutions to the mean and (``variance_head``) to the
    log-variance, soft-clamped to (−10, 10) (``LOG_VAR_BOUND``)."""

    width: int
    code_channels: int
    variance_head: bool = True
    activation: str = "relu"

    @nn.compact
    def __call__(self, grid):
        act = ACTIVATIONS[self.activation]

        def heads(g):
            h = act(nn.GroupNorm(8, name="norm")(g))
            h = act(nn.Conv(self.width, (3, 3), padding="SAME", name="conv")(h))
            mean = nn.Conv(self.code_channels, (1, 1), name="mean")(h)
            if not self.variance_head:
                return mean
            log_var = nn.Conv(self.code_channels, (1, 1), name="log_var")(h)
            return jnp.concatenate([mean, soft_clamp(log_var, LOG_VAR_BOUND)], axis=-1)

        out = _on_grids(heads, grid)
        lead = grid.shape[:-3]
        if not self.variance_head:
            return out.reshape(lead + (-1,)), None
        mean, log_var = jnp.split(out, 2, axis=-1)
        return mean.reshape(lead + (-1,)), log_var.reshape(lead + (-1,))


class MapWrite(nn.Module):
    """Writes a latent map into the state: state ← block(state + W z), W a 1×1 convolution
    from the map's channels to the state's (on top, where there is no state yet,
    block(W z)). ``grid`` = (H, W, C) is the state's; the map (…, H·W·c) shares its H×W.
    W starts at ``write_scale`` times Flax's default scale (VDVAE scales it by
    1/√(groups), so that a deep stack of writes starts near the identity)."""

    grid: tuple[int, int, int]
    code_channels: int
    activation: str = "relu"
    write_scale: float = 1.0

    @nn.compact
    def __call__(self, state, z):
        height, width, channels = self.grid
        z = z.reshape(z.shape[:-1] + (height, width, self.code_channels))
        init = nn.initializers.variance_scaling(self.write_scale**2, "fan_in", "truncated_normal")
        written = _on_grids(nn.Conv(channels, (1, 1), kernel_init=init, name="write"), z)
        state = written if state is None else state + written
        return _on_grids(ResidualBlock(channels, self.activation, name="block"), state)
