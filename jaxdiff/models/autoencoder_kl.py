"""diffusers' ``AutoencoderKL`` (Rombach et al. 2022's KL-regularized autoencoder) in Flax."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models.diffusers_blocks import (ACTIVATIONS, MidBlock2D, UNetBlock, conv,
                                             group_norm)

_EPS = 1e-6  # diffusers' Encoder and Decoder fix every norm's epsilon here.


class _Coder(nn.Module):
  """The fields and layers that diffusers' VAE Encoder and Decoder share."""

  block_out_channels: Sequence[int]
  layers_per_block: int
  act_fn: str
  norm_num_groups: int
  mid_block_add_attention: bool

  def _mid_block(self, h: jax.Array) -> jax.Array:
    """resnet, single-head attention, resnet (UNetMidBlock2D without time embedding)."""
    return MidBlock2D(self.norm_num_groups, _EPS, self.act_fn, "default", 1.0,
                      self.mid_block_add_attention, None, self.norm_num_groups,
                      name="mid_block")(h, None)

  def _output(self, h: jax.Array, features: int) -> jax.Array:
    """GroupNorm, activation, ``conv_out``."""
    h = ACTIVATIONS[self.act_fn](group_norm(h, groups=self.norm_num_groups, eps=_EPS,
                                            name="conv_norm_out"))
    return conv(features, name="conv_out")(h)


class Encoder(_Coder):
  """``conv_in``, down blocks (``DownEncoderBlock2D``), the middle block, GroupNorm,
  activation and ``conv_out`` to ``2 * latent_channels`` (mean and log-variance)."""

  latent_channels: int = 4
  down_block_types: Sequence[str] = ("DownEncoderBlock2D",)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = conv(self.block_out_channels[0], name="conv_in")(x)
    last = len(self.block_out_channels) - 1
    for i, (block_type, channels) in enumerate(zip(self.down_block_types,
                                                   self.block_out_channels)):
      h, _ = UNetBlock(block_type, channels, self.layers_per_block, i != last,
                       self.norm_num_groups, _EPS, self.act_fn, downsample_padding=0,
                       name=f"down_blocks_{i}")(h, None)
    return self._output(self._mid_block(h), 2 * self.latent_channels)


class Decoder(_Coder):
  """``conv_in``, the middle block, up blocks (``UpDecoderBlock2D``, ``layers_per_block
  + 1`` resnets), GroupNorm, activation and ``conv_out``."""

  out_channels: int = 3
  up_block_types: Sequence[str] = ("UpDecoderBlock2D",)

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    h = self._mid_block(conv(self.block_out_channels[-1], name="conv_in")(z))
    last = len(self.block_out_channels) - 1
    for i, (block_type, channels) in enumerate(zip(self.up_block_types,
                                                   self.block_out_channels[::-1])):
      h, _ = UNetBlock(block_type, channels, self.layers_per_block + 1, i != last,
                       self.norm_num_groups, _EPS, self.act_fn, name=f"up_blocks_{i}")(h, None)
    return self._output(h, self.out_channels)


class AutoencoderKL(nn.Module):
  """diffusers' ``AutoencoderKL``, field for field (its config keys), NHWC.

  ``encode(x) -> (mean, logvar)`` of the diagonal Gaussian posterior (log-variance
  clamped to [-30, 20] as diffusers does), ``decode(z) -> image``, and
  ``__call__(x) = decode(mean)``, the PyTorch model's ``forward`` without posterior
  sampling. Use them as ``module.apply(variables, x, method=module.encode)``. Latents
  for a diffusion model are ``scaling_factor * (z - shift_factor)`` in diffusers'
  convention; ``scaling_factor`` is kept here for that.
  """

  in_channels: int = 3
  out_channels: int = 3
  down_block_types: Sequence[str] = ("DownEncoderBlock2D",)
  up_block_types: Sequence[str] = ("UpDecoderBlock2D",)
  block_out_channels: Sequence[int] = (64,)
  layers_per_block: int = 1
  act_fn: str = "silu"
  latent_channels: int = 4
  norm_num_groups: int = 32
  scaling_factor: float = 0.18215
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True

  def setup(self):
    common = dict(block_out_channels=self.block_out_channels,
                  layers_per_block=self.layers_per_block, act_fn=self.act_fn,
                  norm_num_groups=self.norm_num_groups,
                  mid_block_add_attention=self.mid_block_add_attention)
    self.encoder = Encoder(latent_channels=self.latent_channels,
                           down_block_types=self.down_block_types, **common)
    self.decoder = Decoder(out_channels=self.out_channels, up_block_types=self.up_block_types,
                           **common)
    if self.use_quant_conv:
      self.quant_conv = conv(2 * self.latent_channels, kernel=1, padding=0, name=None)
    if self.use_post_quant_conv:
      self.post_quant_conv = conv(self.latent_channels, kernel=1, padding=0, name=None)

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Images ``[B, H, W, in_channels]`` to the posterior's ``(mean, logvar)``."""
    moments = self.encoder(x)
    if self.use_quant_conv:
      moments = self.quant_conv(moments)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, z: jax.Array) -> jax.Array:
    """Latents ``[B, h, w, latent_channels]`` to images ``[B, H, W, out_channels]``."""
    if self.use_post_quant_conv:
      z = self.post_quant_conv(z)
    return self.decoder(z)

  def __call__(self, x: jax.Array) -> jax.Array:
    """``decode(encode(x).mean)``: the reconstruction from the posterior mode."""
    return self.decode(self.encode(x)[0])
