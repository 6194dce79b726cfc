"""Conv nets whose code is a *map*: the tokenizer of a latent generative model.

The encoder halves H and W once per stage (stride-2 3×3 convolutions, ``conv_channels``
wide) down to an h × w grid, h = ⌈H / 2^n⌉, and reads at every position a c-channel
code — its mean, and for the gaussian family its log-variance (1×1 convolutions). The
decoder mirrors it: a 3×3 convolution from the code map, n stride-2 transposed
convolutions back to H × W, and the likelihood's parameters per pixel. MNIST's 28 × 28
with two stages is a 7 × 7 × c map; 32 × 32 colour images are 8 × 8 × c.

A posterior over a map is a posterior over its h·w·c numbers, one independent Gaussian per
position and channel, so its KL to N(0, I) is analytic per position and sums over them. A
model holds codes flattened to h·w·c (position-major, channels last: ``z.reshape(h, w,
c)`` is the map), so every formula and sampler of a vector code applies unchanged;
``decode`` takes either form, and ``cvae.models.protocol.code_maps`` shows a code as its
layers' maps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from cvae.models import nets


def map_shape(event_shape, stages: int, code_channels: int) -> tuple[int, int, int]:
    """(h, w, c) of the code map of images ``event_shape`` after ``stages`` halvings.

    Args:
      event_shape: (H, W, C) of the images.
      stages: how many stride-2 convolutions (``len(model.conv_channels)``).
      code_channels: c.

    Returns:
      (⌈H / 2^stages⌉, ⌈W / 2^stages⌉, c).
    """
    height, width = int(event_shape[0]), int(event_shape[1])
    return (math.ceil(height / 2**stages), math.ceil(width / 2**stages), int(code_channels))


def _with_label_maps(h, labels_onehot, lead):
    """One-hot labels (broadcast over the leading sample axes ``lead``) as constant extra
    channels of a feature map of the flattened batch (N, h, w, ·)."""
    if labels_onehot is None:
        return h
    classes = labels_onehot.shape[-1]
    onehot = jnp.broadcast_to(labels_onehot, tuple(lead) + (classes,)).reshape(-1, 1, 1, classes)
    onehot = jnp.broadcast_to(onehot.astype(h.dtype), h.shape[:3] + (classes,))
    return jnp.concatenate([h, onehot], axis=-1)


class ConvMapEncoder(nn.Module):
    """Images → per position of an h × w grid, a c-channel mean (and log-variance); see the
    module docstring. Both heads come back flattened to (…, h·w·c)."""

    channels: Sequence[int]
    code_shape: tuple[int, int, int]
    variance_head: bool = True
    activation: str = "relu"
    dropout_rate: float = 0.0

    @property
    def latent_dim(self) -> int:
        """h·w·c: the numbers in one code map."""
        return math.prod(self.code_shape)

    @nn.compact
    def __call__(self, x, labels_onehot=None, *, train: bool = False):
        act = nets.ACTIVATIONS[self.activation]
        lead, h = x.shape[:-3], x.reshape((-1,) + x.shape[-3:])
        for i, ch in enumerate(self.channels):
            h = act(nn.Conv(ch, (3, 3), strides=(2, 2), padding="SAME", name=f"conv_{i}")(h))
        h = act(nn.Conv(self.channels[-1], (3, 3), padding="SAME", name="mix")(h))
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        h = _with_label_maps(h, labels_onehot, lead)
        c = self.code_shape[-1]
        mean = nn.Conv(c, (1, 1), name="mean")(h).reshape(lead + (-1,))
        if not self.variance_head:
            return mean, None
        return mean, nn.Conv(c, (1, 1), name="log_var")(h).reshape(lead + (-1,))


class ConvMapDecoder(nn.Module):
    """A code map (flat (…, h·w·c) or (…, h, w, c)) → the likelihood's parameters per
    pixel, ``param_shape`` = (*P, H, W, C); see the module docstring."""

    channels: Sequence[int]
    code_shape: tuple[int, int, int]
    param_shape: tuple[int, ...]
    activation: str = "relu"
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, z, labels_onehot=None, *, train: bool = False):
        act = nets.ACTIVATIONS[self.activation]
        height, width, _ = self.param_shape[-3:]
        lead = z.shape[:-1]
        h = z.reshape((-1,) + tuple(self.code_shape))
        h = _with_label_maps(h, labels_onehot, lead)
        h = act(nn.Conv(self.channels[-1], (3, 3), padding="SAME", name="project")(h))
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        for i, ch in enumerate(reversed(self.channels)):
            h = act(
                nn.ConvTranspose(ch, (3, 3), strides=(2, 2), padding="SAME", name=f"deconv_{i}")(h)
            )
        h = h[:, :height, :width, :]
        return nets.pixel_params(h, self.param_shape, lead, 3)


def flat_codes(z, code_shape, code_dim: int):
    """Codes as the model holds them, (…, h·w·c), from either form; anything else is refused
    in one line naming both shapes.

    Args:
      z: codes (…, h·w·c) or maps (…, h, w, c).
      code_shape: the model's (h, w, c).
      code_dim: h·w·c.

    Returns:
      (…, h·w·c) codes.

    Raises:
      ValueError: ``z`` is neither.
    """
    code_shape = tuple(code_shape)
    if len(code_shape) == 3 and z.ndim >= 3 and tuple(z.shape[-3:]) == code_shape:
        return z.reshape(z.shape[:-3] + (code_dim,))
    if z.ndim >= 1 and z.shape[-1] == code_dim:
        return z
    shape = "×".join(map(str, code_shape))
    wanted = f"maps …×{shape} or flat …×{code_dim}" if len(code_shape) == 3 else f"…×{shape}"
    raise ValueError(
        f"a code of shape {tuple(z.shape)} does not fit this model, whose codes are {wanted}; "
        "encode images with this model's run to get codes of its shape"
    )
