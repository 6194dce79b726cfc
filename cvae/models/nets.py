"""Flax Linen encoders and decoders: MLPs and strided convolutions for H×W×C images.

Encoders map images (and optionally one-hot labels) to the parameters of q(z|x): a mean
head and, when the posterior family learns its variance, a separate log-variance head.
Decoders map latents (and optionally labels) to the parameters of p(x|z), shaped as the
likelihood asks (`param_shape`). Nothing here is random except dropout, whose key arrives
through Flax's ``rngs={"dropout": key}`` at ``apply`` time, never stored in a module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "elu": nn.elu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "softplus": nn.softplus,
    "leaky_relu": nn.leaky_relu,
}
# "gated": h = (W x + b) ⊙ σ(V x + c), the gated dense layer of Dauphin et al. (2017) that
# the VampPrior paper's MLPs use (Tomczak & Welling, 2018); it has twice the weights.
GATED = "gated"
INITS = ("lecun", "torch")


class Linear(nn.Module):
    """A dense layer with a selectable initialisation.

    ``lecun`` is Flax's default (truncated normal with variance 1/fan_in, zero bias);
    ``torch`` is PyTorch's ``nn.Linear`` default, weights and biases U(±1/√fan_in), so
    that our numbers can be compared with PyTorch implementations of the same model.
    """

    features: int
    weight_init: str = "lecun"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.weight_init == "lecun":
            return nn.Dense(self.features, name="dense")(x)
        bound = 1.0 / math.sqrt(x.shape[-1])

        def uniform_bias(key, shape, dtype=jnp.float32):
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        # variance_scaling(1/3, fan_in, uniform) is U(±sqrt(3 · (1/3) / fan_in)) = U(±1/√fan_in).
        kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
        return nn.Dense(
            self.features, kernel_init=kernel_init, bias_init=uniform_bias, name="dense"
        )(x)


def _with_labels(h: jax.Array, labels_onehot: jax.Array | None) -> jax.Array:
    """Concatenates one-hot labels to features, broadcasting over leading sample axes."""
    if labels_onehot is None:
        return h
    labels_onehot = jnp.broadcast_to(labels_onehot, h.shape[:-1] + labels_onehot.shape[-1:])
    return jnp.concatenate([h, labels_onehot.astype(h.dtype)], axis=-1)


def gaussian_heads(h, latent_dim: int, variance_head: bool):
    """The mean and (when the posterior learns it) log-variance heads of a conv encoder."""
    mean = nn.Dense(latent_dim, name="mean")(h)
    return mean, nn.Dense(latent_dim, name="log_var")(h) if variance_head else None


def _image_batch(x):
    """(leading axes, images as one batch N×H×W×C): a conv encoder flattens any leading
    sample axes into the batch for its convolutions and restores them afterwards."""
    return x.shape[:-3], x.reshape((-1,) + x.shape[-3:])


def _features_to_heads(h, lead, labels_onehot, encoder, *, train: bool):
    """A conv encoder's tail: its flattened features (with labels), dropout, the heads."""
    h = _with_labels(h.reshape(lead + (-1,)), labels_onehot)
    h = nn.Dropout(encoder.dropout_rate, deterministic=not train)(h)
    return gaussian_heads(h, encoder.latent_dim, encoder.variance_head)


def _flat_latents(z, labels_onehot):
    """A conv decoder's input: latents (with labels) flattened over the leading axes."""
    extra = 0 if labels_onehot is None else labels_onehot.shape[-1]
    return _with_labels(z, labels_onehot).reshape((-1, z.shape[-1] + extra))


def pixel_params(h, param_shape: tuple[int, ...], lead: tuple[int, ...], kernel: int):
    """The last convolution of a conv decoder: every likelihood parameter per pixel,
    (B, H, W, C·P) → (*lead, *P, H, W, C) for ``param_shape`` = (*P, H, W, C)."""
    height, width, depth = param_shape[-3:]
    leading_params = tuple(param_shape[:-3])
    n_par = math.prod(leading_params) if leading_params else 1
    out = nn.Conv(depth * n_par, (kernel, kernel), padding="SAME", name="output")(h)
    out = out.reshape(out.shape[:3] + (n_par, depth))
    out = jnp.moveaxis(out, 3, 1).reshape((-1,) + leading_params + (height, width, depth))
    return out.reshape(lead + tuple(param_shape))


class MLPStack(nn.Module):
    """Dense → activation → dropout, once per width."""

    widths: Sequence[int]
    activation: str = "relu"
    dropout_rate: float = 0.0
    weight_init: str = "lecun"

    @nn.compact
    def __call__(self, h: jax.Array, *, train: bool = False) -> jax.Array:
        for i, width in enumerate(self.widths):
            if self.activation == GATED:
                h = Linear(width, self.weight_init, name=f"hidden_{i}")(h) * nn.sigmoid(
                    Linear(width, self.weight_init, name=f"gate_{i}")(h)
                )
            else:
                h = Linear(width, self.weight_init, name=f"hidden_{i}")(h)
                h = ACTIVATIONS[self.activation](h)
            if self.dropout_rate > 0:
                h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        return h


def _mlp_heads(net, h, *, train: bool):
    """An MLP's trunk, then its mean head and (``net.variance_head``) log-variance head, as
    submodules ``trunk``, ``mean`` and ``log_var`` of ``net`` (a ``GaussianMLP``)."""
    h = MLPStack(net.widths, net.activation, net.dropout_rate, net.weight_init, name="trunk")(
        h, train=train
    )
    mean = Linear(net.latent_dim, net.weight_init, name="mean")(h)
    if not net.variance_head:
        return mean, None
    return mean, Linear(net.latent_dim, net.weight_init, name="log_var")(h)


class GaussianMLP(nn.Module):
    """A vector (…, d_in) → the (mean, log-variance or None) of a diagonal Gaussian over
    (…, latent_dim): an MLP of ``widths`` and two heads (the second dropped without
    ``variance_head``). The nets between a hierarchy's layers: p(z_l | z_{l+1}) and the
    posterior factors q(z_l | ·) that read vectors; ``MLPEncoder`` is one over images.
    Parameters: ``trunk``, ``mean``, ``log_var``."""

    widths: Sequence[int]
    latent_dim: int
    variance_head: bool = True
    activation: str = "relu"
    dropout_rate: float = 0.0
    weight_init: str = "lecun"

    @nn.compact
    def __call__(self, h, *, train: bool = False):
        return _mlp_heads(self, h, train=train)


class MLPEncoder(GaussianMLP):
    """x (…, H, W, C) → (mean, log_var or None), each (…, latent_dim): the ``GaussianMLP`` of
    the flattened image (and one-hot labels), with its attributes and parameter names.

    The mean and the log-variance come from two separate heads on the last hidden layer;
    ``variance_head=False`` (collapsed and deterministic posteriors) drops the second.
    """

    @nn.compact
    def __call__(self, x, labels_onehot=None, *, train: bool = False):
        h = _with_labels(x.reshape(x.shape[:-3] + (-1,)), labels_onehot)
        return _mlp_heads(self, h, train=train)


class MLPDecoder(nn.Module):
    """z (…, latent_dim) → likelihood parameters (…, *param_shape)."""

    widths: Sequence[int]
    param_shape: tuple[int, ...]
    activation: str = "relu"
    dropout_rate: float = 0.0
    weight_init: str = "lecun"

    @nn.compact
    def __call__(self, z, labels_onehot=None, *, train: bool = False):
        h = _with_labels(z, labels_onehot)
        h = MLPStack(
            self.widths, self.activation, self.dropout_rate, self.weight_init, name="trunk"
        )(h, train=train)
        out = Linear(math.prod(self.param_shape), self.weight_init, name="output")(h)
        return out.reshape(z.shape[:-1] + tuple(self.param_shape))


class ConvEncoder(nn.Module):
    """Strided 3×3 convolutions (each halves H and W), one dense layer, then the heads.

    Works for any H×W×C: nothing assumes 28×28. Leading sample axes are flattened into
    the batch for the convolutions and restored afterwards.
    """

    channels: Sequence[int]
    dense_width: int
    latent_dim: int
    variance_head: bool = True
    activation: str = "relu"
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, labels_onehot=None, *, train: bool = False):
        act = ACTIVATIONS[self.activation]
        lead, h = _image_batch(x)
        for i, ch in enumerate(self.channels):
            h = act(nn.Conv(ch, (3, 3), strides=(2, 2), padding="SAME", name=f"conv_{i}")(h))
        h = h.reshape(lead + (-1,))
        h = _with_labels(h, labels_onehot)
        h = MLPStack((self.dense_width,), self.activation, self.dropout_rate, name="trunk")(
            h, train=train
        )
        return gaussian_heads(h, self.latent_dim, self.variance_head)


class ConvDecoder(nn.Module):
    """Dense to a ceil(H/2^n)×ceil(W/2^n) grid, n stride-2 transposed convs, crop to H×W.

    The last 3×3 convolution emits every likelihood parameter per pixel; ``param_shape``
    is (*P, H, W, C) where P is the likelihood's leading parameter axes (empty or (2,)).
    """

    channels: Sequence[int]
    dense_width: int
    param_shape: tuple[int, ...]
    activation: str = "relu"
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, z, labels_onehot=None, *, train: bool = False):
        act = ACTIVATIONS[self.activation]
        height, width, _ = self.param_shape[-3:]
        n_up = len(self.channels)
        h0, w0 = math.ceil(height / 2**n_up), math.ceil(width / 2**n_up)
        lead = z.shape[:-1]
        h = _flat_latents(z, labels_onehot)
        h = MLPStack((self.dense_width,), self.activation, self.dropout_rate, name="trunk")(
            h, train=train
        )
        top = self.channels[-1]
        h = act(nn.Dense(h0 * w0 * top, name="project")(h)).reshape(-1, h0, w0, top)
        for i, ch in enumerate(reversed(self.channels)):
            h = act(
                nn.ConvTranspose(ch, (3, 3), strides=(2, 2), padding="SAME", name=f"deconv_{i}")(h)
            )
        h = h[:, :height, :width, :]
        return pixel_params(h, self.param_shape, lead, 3)


# ------------------------------------------------------------------ residual conv nets
# For 32×32 and 64×64 colour images. Normalisation is GroupNorm: it normalises within each
# example, so a run computes the same function whatever the batch, its split over devices
# or processes, and at evaluation — BatchNorm's batch statistics would make the loss of an
# example depend on its neighbours and on the device layout, and would need running
# averages saved beside the params.


class ResidualBlock(nn.Module):
    """h + conv(act(GN(conv(act(GN(h)))))) at constant resolution and width (pre-activation,
    He et al., 2016)."""

    channels: int
    activation: str = "relu"
    groups: int = 8

    @nn.compact
    def __call__(self, h):
        act = ACTIVATIONS[self.activation]
        r = nn.Conv(self.channels, (3, 3), padding="SAME", name="conv_a")(
            act(nn.GroupNorm(self.groups, name="norm_a")(h))
        )
        r = nn.Conv(self.channels, (3, 3), padding="SAME", name="conv_b")(
            act(nn.GroupNorm(self.groups, name="norm_b")(r))
        )
        return h + r


def check_resnet_shape(height: int, width: int, stages: int, arch: str = "resnet") -> None:
    """The residual (and Ghosh et al.'s) decoders double a grid ``stages`` times up to H×W,
    so H and W must divide evenly."""
    if height % 2**stages or width % 2**stages:
        raise ValueError(
            f"model.arch='{arch}' with {stages} stages halves the image {stages} times, so H "
            f"and W must be multiples of {2**stages}; got {height}×{width}: resize the data "
            "(e.g. 32×32 or 64×64) or use fewer model.conv_channels stages"
        )


class ResNetEncoder(nn.Module):
    """A stem convolution, then per stage a residual block and a stride-2 convolution to
    the next width; the flattened features feed the mean (and log-variance) heads."""

    channels: Sequence[int]
    latent_dim: int
    variance_head: bool = True
    activation: str = "relu"
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, labels_onehot=None, *, train: bool = False):
        act = ACTIVATIONS[self.activation]
        check_resnet_shape(x.shape[-3], x.shape[-2], len(self.channels))
        lead, h = _image_batch(x)
        h = nn.Conv(self.channels[0], (3, 3), padding="SAME", name="stem")(h)
        for i, ch in enumerate(self.channels):
            h = ResidualBlock(h.shape[-1], self.activation, name=f"block_{i}")(h)
            h = nn.Conv(ch, (4, 4), strides=(2, 2), padding="SAME", name=f"down_{i}")(act(h))
        h = act(nn.GroupNorm(8, name="norm_out")(h))
        return _features_to_heads(h, lead, labels_onehot, self, train=train)


class ResNetDecoder(nn.Module):
    """The encoder mirrored: a dense projection to an (H/2ⁿ)×(W/2ⁿ) grid, then per stage a
    nearest-neighbour ×2 upsampling, a convolution to the stage's width and a residual
    block; a last 3×3 convolution emits every likelihood parameter per pixel."""

    channels: Sequence[int]
    param_shape: tuple[int, ...]
    activation: str = "relu"
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, z, labels_onehot=None, *, train: bool = False):
        act = ACTIVATIONS[self.activation]
        height, width, _ = self.param_shape[-3:]
        stages = len(self.channels)
        check_resnet_shape(height, width, stages)
        lead = z.shape[:-1]
        h = _flat_latents(z, labels_onehot)
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        top = self.channels[-1]
        h = nn.Dense((height >> stages) * (width >> stages) * top, name="project")(h)
        h = h.reshape(-1, height >> stages, width >> stages, top)
        for i, ch in enumerate(reversed(self.channels)):
            h = jax.image.resize(
                h, (h.shape[0], h.shape[1] * 2, h.shape[2] * 2, h.shape[3]), "nearest"
            )
            h = nn.Conv(ch, (3, 3), padding="SAME", name=f"up_{i}")(act(h))
            h = ResidualBlock(ch, self.activation, name=f"block_{i}")(h)
        h = act(nn.GroupNorm(8, name="norm_out")(h))
        return pixel_params(h, self.param_shape, lead, 3)


# ------------------------------------------------------------------ Ghosh et al. (2020)


class GhoshEncoder(nn.Module):
    """The CelebA/CIFAR encoder of Ghosh et al. (2020, "From variational to deterministic
    autoencoders", their code's non-convolutional bottleneck): 5×5 stride-2 convolutions of
    ``channels`` (128, 256, 512, 1024 in the paper), each normalised and ReLU'd, flattened
    into the latent heads. Their BatchNorm is GroupNorm here (see the residual nets)."""

    channels: Sequence[int]
    latent_dim: int
    variance_head: bool = True
    activation: str = "relu"
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, labels_onehot=None, *, train: bool = False):
        act = ACTIVATIONS[self.activation]
        lead, h = _image_batch(x)
        for i, ch in enumerate(self.channels):
            h = nn.Conv(ch, (5, 5), strides=(2, 2), padding="SAME", name=f"conv_{i}")(h)
            h = act(nn.GroupNorm(min(32, ch), name=f"norm_{i}")(h))
        return _features_to_heads(h, lead, labels_onehot, self, train=train)


class GhoshDecoder(nn.Module):
    """Their decoder: a dense layer to an (H/8)×(W/8)×channels[-1] grid, 5×5 stride-2
    transposed convolutions of ``channels[-2::-1][:3]`` (512, 256, 128), normalised and ReLU'd,
    and a 5×5 convolution to the likelihood's parameters."""

    channels: Sequence[int]
    param_shape: tuple[int, ...]
    activation: str = "relu"
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, z, labels_onehot=None, *, train: bool = False):
        act = ACTIVATIONS[self.activation]
        height, width, _ = self.param_shape[-3:]
        check_resnet_shape(height, width, 3, "ghosh")
        lead = z.shape[:-1]
        h = _flat_latents(z, labels_onehot)
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        top = self.channels[-1]
        h = nn.Dense((height // 8) * (width // 8) * top, name="project")(h)
        h = h.reshape(-1, height // 8, width // 8, top)
        for i, ch in enumerate(list(reversed(self.channels))[1:4]):
            h = nn.ConvTranspose(ch, (5, 5), strides=(2, 2), padding="SAME", name=f"deconv_{i}")(h)
            h = act(nn.GroupNorm(min(32, ch), name=f"norm_{i}")(h))
        return pixel_params(h, self.param_shape, lead, 5)


def check_image_batch(x, event_shape) -> None:
    """Raises ValueError, saying how to fix it, unless ``x`` is a batch N×H×W×C of images
    shaped ``event_shape``.

    Args:
      x: the model's input.
      event_shape: (H, W, C) of the model's images.
    """
    if tuple(x.shape) == tuple(event_shape):
        raise ValueError(
            f"input of shape {tuple(x.shape)} is one image without a batch axis; pass "
            f"a batch shaped N×H×W×C, e.g. x[None] (shape 1×"
            f"{'×'.join(map(str, event_shape))})"
        )
    if tuple(x.shape[-3:]) != tuple(event_shape) or x.ndim < 4:
        raise ValueError(
            f"input of shape {tuple(x.shape)} does not match the model's images "
            f"{tuple(event_shape)}; pass a batch shaped N×H×W×C = "
            f"N×{'×'.join(map(str, event_shape))}"
        )
