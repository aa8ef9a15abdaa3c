"""Flax mirrors of diffusers' U-Net building blocks (ResnetBlock2D, Attention, resamplers,
down / mid / up blocks), for loading its checkpoints exactly.

The layouts are those of Ho et al. 2020 (App. B) and Dhariwal & Nichol 2021 (scale-shift
norm, residual resampling) as diffusers writes them; submodule names follow diffusers'
parameter names, with list indices joined by ``_`` (``down_blocks.0.resnets.1`` is
``down_blocks_0/resnets_1``), so that ``jaxdiff.models.pretrained`` maps every tensor by
name. Everything computes in float32, NHWC.
"""

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models.resample import avg_downsample, nearest_upsample

DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D", "DownEncoderBlock2D")
UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D", "UpDecoderBlock2D")
_ATTENTION_BLOCKS = ("AttnDownBlock2D", "AttnUpBlock2D")
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": nn.silu,
    "swish": nn.silu,
    "mish": lambda x: x * jnp.tanh(nn.softplus(x)),
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "relu": nn.relu,
}


def conv(features: int, *, kernel: int = 3, stride: int = 1, padding=1, name: str) -> nn.Conv:
  """PyTorch's ``Conv2d(kernel, stride, padding)`` as a Flax convolution (NHWC)."""
  pad = ((padding, padding),) * 2 if isinstance(padding, int) else padding
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad, name=name)


def group_norm(x: jax.Array, *, groups: int, eps: float, name: str) -> jax.Array:
  """PyTorch's ``GroupNorm(groups, C, eps)`` (two-pass variance, as PyTorch computes it)."""
  return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, name=name)(x)


class ResnetBlock2D(nn.Module):
  """diffusers' ``ResnetBlock2D``: DDPM's residual block (Ho et al. 2020), optionally with
  scale-shift norm and built-in 2x resampling (Dhariwal & Nichol 2021).

  ``h = conv1(act(norm1(x)))`` (resampling ``h`` and ``x`` after the first activation);
  the embedding ``dense(act(emb))`` is added before ``norm2`` ("default") or applied as
  ``norm2(h) * (1 + scale) + shift`` ("scale_shift"); then ``conv2(act(h))``; the
  output is ``(shortcut(x) + h) / output_scale_factor``.
  """

  out_channels: int
  groups: int
  eps: float
  act_fn: str = "silu"
  time_embedding_norm: str = "default"
  output_scale_factor: float = 1.0
  resample: str = "none"

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array | None) -> jax.Array:
    act = ACTIVATIONS[self.act_fn]
    h = act(group_norm(x, groups=self.groups, eps=self.eps, name="norm1"))
    if self.resample == "up":
      h, x = nearest_upsample(h), nearest_upsample(x)
    elif self.resample == "down":
      h, x = avg_downsample(h), avg_downsample(x)
    h = conv(self.out_channels, name="conv1")(h)
    scale_shift = self.time_embedding_norm == "scale_shift"
    if temb is not None:
      features = 2 * self.out_channels if scale_shift else self.out_channels
      temb = nn.Dense(features, name="time_emb_proj")(act(temb))[:, None, None, :]
    if scale_shift:
      scale, shift = jnp.split(temb, 2, axis=-1)
      h = group_norm(h, groups=self.groups, eps=self.eps, name="norm2") * (1 + scale) + shift
    else:
      h = h if temb is None else h + temb
      h = group_norm(h, groups=self.groups, eps=self.eps, name="norm2")
    h = conv(self.out_channels, name="conv2")(act(h))
    if x.shape[-1] != self.out_channels:
      x = conv(self.out_channels, kernel=1, padding=0, name="conv_shortcut")(x)
    return (x + h) / self.output_scale_factor


class SpatialAttention(nn.Module):
  """diffusers' ``Attention`` over the pixels of a feature map (its deprecated attention
  block): ``(x + to_out(attention(to_q(n), to_k(n), to_v(n)))) / rescale_output_factor``
  with ``n = group_norm(x)`` (or ``x`` when ``groups`` is None), ``heads`` heads, scaled
  dot-product attention (Vaswani et al. 2017, Eq. 1)."""

  heads: int
  groups: int | None
  eps: float
  rescale_output_factor: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    h = x if self.groups is None else group_norm(x, groups=self.groups, eps=self.eps,
                                                 name="group_norm")
    h = h.reshape(batch, height * width, channels)
    q, k, v = (nn.Dense(channels, name=name)(h).reshape(
        batch, height * width, self.heads, channels // self.heads)
        for name in ("to_q", "to_k", "to_v"))
    out = jax.nn.dot_product_attention(q, k, v).reshape(batch, height * width, channels)
    out = nn.Dense(channels, name="to_out_0")(out).reshape(x.shape)
    return (out + x) / self.rescale_output_factor


class Resampler(nn.Module):
  """diffusers' ``Downsample2D`` / ``Upsample2D`` with a convolution named ``conv``.

  "down": a stride-2 3x3 convolution with ``padding`` on every side, or, for padding 0,
  after zero-padding the bottom and right by one (TensorFlow's SAME, as in DDPM);
  "up": nearest-neighbour 2x upsampling then a 3x3 convolution."""

  channels: int
  direction: str
  padding: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.direction == "up":
      return conv(self.channels, name="conv")(nearest_upsample(x))
    padding = ((0, 1), (0, 1)) if self.padding == 0 else self.padding
    return conv(self.channels, stride=2, padding=padding, name="conv")(x)


class MidBlock2D(nn.Module):
  """diffusers' ``UNetMidBlock2D``: resnet, (attention, resnet). Attention has
  ``channels // attention_head_dim`` heads, or ``attention_heads`` when set (OpenAI's
  fixed ``num_heads``)."""

  groups: int
  eps: float
  act_fn: str
  time_embedding_norm: str
  output_scale_factor: float
  add_attention: bool
  attention_head_dim: int | None
  attention_groups: int | None
  attention_heads: int | None = None

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array | None) -> jax.Array:
    channels = x.shape[-1]
    heads = self.attention_heads or channels // (self.attention_head_dim or channels)
    resnet = functools.partial(ResnetBlock2D, channels, self.groups, self.eps, self.act_fn,
                               self.time_embedding_norm, self.output_scale_factor)
    x = resnet(name="resnets_0")(x, temb)
    if self.add_attention:
      x = SpatialAttention(heads, self.attention_groups, self.eps, self.output_scale_factor,
                           name="attentions_0")(x)
    return resnet(name="resnets_1")(x, temb)


class UNetBlock(nn.Module):
  """One level of diffusers' U-Net or VAE: any block type in ``DOWN_BLOCKS`` /
  ``UP_BLOCKS``.

  ``num_layers`` resnets (an up block first concatenates one skip activation to its
  input, last first), each followed by attention in the Attn* types; then the resampler
  when ``resample``: a convolutional ``Resampler`` or a resampling ``ResnetBlock2D`` for
  the Resnet*sample* types and, with ``resampler="resnet"``, the Attn* types (diffusers'
  ``downsample_type`` / ``upsample_type`` reach only those). Returns the output and the
  activations that a down block hands to the skip connections.
  """

  block_type: str
  out_channels: int
  num_layers: int
  resample: bool
  groups: int
  eps: float
  act_fn: str = "silu"
  time_embedding_norm: str = "default"
  attention_head_dim: int | None = None
  attention_heads: int | None = None
  downsample_padding: int = 1
  resampler: str = "conv"

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array | None,
               skips: Sequence[jax.Array] = ()) -> tuple[jax.Array, list[jax.Array]]:
    up = self.block_type in UP_BLOCKS
    resnet_kw = dict(groups=self.groups, eps=self.eps, act_fn=self.act_fn,
                     time_embedding_norm=self.time_embedding_norm)
    skips, states = list(skips), []
    for i in range(self.num_layers):
      if skips:
        x = jnp.concatenate([x, skips.pop()], axis=-1)
      x = ResnetBlock2D(self.out_channels, name=f"resnets_{i}", **resnet_kw)(x, temb)
      if self.block_type in _ATTENTION_BLOCKS:
        heads = self.attention_heads or self.out_channels // (
            self.attention_head_dim or self.out_channels)
        x = SpatialAttention(heads, self.groups, self.eps, name=f"attentions_{i}")(x)
      states.append(x)
    if self.resample:
      name = "upsamplers_0" if up else "downsamplers_0"
      by_resnet = self.block_type.startswith("Resnet") or (
          self.resampler == "resnet" and self.block_type in _ATTENTION_BLOCKS)
      if by_resnet:
        x = ResnetBlock2D(self.out_channels, resample="up" if up else "down", name=name,
                          **resnet_kw)(x, temb)
      else:
        x = Resampler(self.out_channels, "up" if up else "down", self.downsample_padding,
                      name=name)(x)
      states.append(x)
    return x, states
