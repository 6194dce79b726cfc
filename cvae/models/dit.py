"""A small diffusion transformer (DiT, Peebles & Xie, 2023) over maps: code maps or images.

The input, a map H × W × C, is cut into p × p patches, each patch a token (a linear
embedding of its p·p·C numbers plus a fixed 2-D sine-cosine position); N blocks of
self-attention and an MLP read the tokens, each block modulated by the condition — the
time t and, for a class-conditional model, the label — through adaLN-Zero: the condition
sets every LayerNorm's shift and scale and a gate on every residual branch, the gates
start at zero so each block starts as the identity. A last adaLN layer maps each token
back to its p·p·C numbers.

The label embedding has one class more than the data, the null label ``num_classes``: a
model trained with labels dropped to it some of the time learns p(x | y) and p(x) at once,
which classifier-free guidance mixes (``cvae.models.flow_matching``).

A 7 × 7 code map with patch 1 and a 28 × 28 image with patch 4 are both 49 tokens: with the
same width and depth, the latent and the pixel model cost the same but for their first and
last layer, so "latent or pixels" is one setting at matched compute.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cvae.models import flow_matching


def sincos_positions(rows: int, cols: int, width: int) -> np.ndarray:
    """The fixed 2-D sine-cosine position embedding of a rows × cols grid of tokens: half the
    width encodes the row, half the column (as in DiT and MAE).

    Args:
      rows: token rows.
      cols: token columns.
      width: the embedding width (a multiple of 4).

    Returns:
      (rows·cols, width) float32.
    """
    quarter = width // 4
    frequencies = 1.0 / 10000.0 ** (np.arange(quarter) / quarter)

    def encode(positions):
        angles = positions[:, None] * frequencies[None]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)

    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return np.concatenate([encode(r.reshape(-1)), encode(c.reshape(-1))], -1).astype(np.float32)


def time_features(t, width: int):
    """Sinusoidal features of times t ∈ [0, 1] (frequencies 1 … 1000).

    Args:
      t: times (B,).
      width: the features' width (even).

    Returns:
      (B, width): sines then cosines.
    """
    frequencies = jnp.exp(jnp.linspace(0.0, math.log(1000.0), width // 2))
    angles = t[:, None] * frequencies[None]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], -1)


def _modulate(h, shift, scale):
    return h * (1.0 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Attention and an MLP, each a residual branch with adaLN-Zero modulation."""

    width: int
    heads: int
    mlp_ratio: int = 4

    @nn.compact
    def __call__(self, h, condition):
        zeros = nn.initializers.zeros
        modulation = nn.Dense(6 * self.width, kernel_init=zeros, name="modulation")
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(
            modulation(nn.silu(condition)), 6, axis=-1
        )
        norm = nn.LayerNorm(use_scale=False, use_bias=False, epsilon=1e-6)
        a = _modulate(norm(h), shift_a, scale_a)
        a = nn.MultiHeadDotProductAttention(self.heads, name="attention")(a, a)
        h = h + gate_a[:, None] * a
        m = _modulate(norm(h), shift_m, scale_m)
        m = nn.Dense(self.mlp_ratio * self.width, name="mlp_in")(m)
        m = nn.Dense(self.width, name="mlp_out")(nn.gelu(m))
        return h + gate_m[:, None] * m


class DiT(nn.Module):
    """v_θ(x, t, y) for maps x (B, H, W, C): see the module docstring.

    Attributes:
      shape: (H, W, C) of the maps it reads and writes.
      patch: p; H and W must be multiples of it.
      width: the token width (a multiple of 4 and of ``heads``).
      depth: DiT blocks.
      heads: attention heads.
      num_classes: labels in [0, num_classes) and the null label num_classes; 0: none.
    """

    shape: tuple[int, int, int]
    patch: int = 1
    width: int = 128
    depth: int = 4
    heads: int = 4
    num_classes: int = 0

    @property
    def grid(self) -> tuple[int, int]:
        """Token rows and columns: (H / p, W / p)."""
        return self.shape[0] // self.patch, self.shape[1] // self.patch

    @nn.compact
    def __call__(self, x, t, labels=None):
        check_dit_shape(self.shape, self.patch, self.width, self.heads)
        p, (rows, cols), depth_c = self.patch, self.grid, self.shape[2]
        batch = x.shape[0]
        tokens = x.reshape(batch, rows, p, cols, p, depth_c).transpose(0, 1, 3, 2, 4, 5)
        tokens = tokens.reshape(batch, rows * cols, p * p * depth_c)
        h = nn.Dense(self.width, name="embed")(tokens) + sincos_positions(rows, cols, self.width)
        condition = nn.Dense(self.width, name="time_in")(time_features(t, self.width))
        condition = nn.Dense(self.width, name="time_out")(nn.silu(condition))
        if self.num_classes:
            condition = condition + nn.Embed(self.num_classes + 1, self.width, name="label")(labels)
        for i in range(self.depth):
            h = DiTBlock(self.width, self.heads, name=f"block_{i}")(h, condition)
        shift, scale = jnp.split(
            nn.Dense(2 * self.width, kernel_init=nn.initializers.zeros, name="final_modulation")(
                nn.silu(condition)
            ),
            2,
            axis=-1,
        )
        h = _modulate(nn.LayerNorm(use_scale=False, use_bias=False, epsilon=1e-6)(h), shift, scale)
        out = nn.Dense(p * p * depth_c, kernel_init=nn.initializers.zeros, name="output")(h)
        out = out.reshape(batch, rows, cols, p, p, depth_c).transpose(0, 1, 3, 2, 4, 5)
        return out.reshape(batch, *self.shape)


def check_dit_shape(shape, patch: int, width: int, heads: int) -> None:
    """Raises ValueError, in one line saying what to change, for a DiT it cannot build.

    Args:
      shape: (H, W, C) of the maps.
      patch: the patch size p.
      width: the token width.
      heads: attention heads.
    """
    height, width_px = int(shape[0]), int(shape[1])
    if patch < 1 or height % patch or width_px % patch:
        raise ValueError(
            f"a patch of {patch} does not tile a {height}×{width_px} map: choose a patch that "
            f"divides both (a 7×7 code map: 1 or 7; 28×28 pixels: 1, 2, 4, 7, 14 or 28)"
        )
    if width % 4 or width % heads:
        raise ValueError(
            f"the DiT's width {width} must be a multiple of 4 (its 2-D positions) and of its "
            f"{heads} attention heads"
        )


def init_dit(module: DiT, key: jax.Array) -> dict:
    """A DiT's freshly initialised params (also the template saved params are read into).

    Args:
      module: the network.
      key: the PRNG key of the initialisation.

    Returns:
      The params pytree.
    """
    return flow_matching.init_params(module, key, module.shape)
