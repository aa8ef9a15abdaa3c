"""Residual block with timestep conditioning (Ho et al. 2020, App. B; Dhariwal & Nichol 2021)."""

import functools
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxdiff.models.initializers import default_init, zero_init
from jaxdiff.models.normalization import group_norm
from jaxdiff.models.resample import avg_downsample, nearest_upsample

_RESAMPLE = ("none", "up", "down")


class ResBlock(nn.Module):
  """DDPM's ``resnet_block`` with ADM's extensions.

  ``h = conv(swish(norm(x)))``; the embedding enters through a dense layer, either
  added to ``h`` (Ho et al. 2020) or, with ``use_scale_shift_norm``, as adaptive
  group norm ``norm(h) * (1 + scale) + shift`` (Dhariwal & Nichol 2021, Sec. 3);
  then ``swish``, dropout and a zero-initialized 3x3 convolution. The skip path is
  a 1x1 convolution (DDPM's ``nin_shortcut``) when the channel count changes.
  ``resample="up"``/``"down"`` resamples both paths inside the block (ADM's
  ``resblock_updown``: nearest upsampling / 2x2 average pooling after the first
  norm and activation).

  Convolutions and the embedding projection compute in ``dtype``; norms,
  activations and the residual sum in float32, so the output is float32.

  Attributes:
    out_channels: output channels.
    dropout: dropout rate before the last convolution.
    use_scale_shift_norm: adaptive group norm instead of additive embedding.
    resample: ``"none"``, ``"up"`` or ``"down"``.
    num_groups: GroupNorm groups (capped at the channel count).
    dtype: compute dtype.
  """

  out_channels: int
  dropout: float = 0.0
  use_scale_shift_norm: bool = False
  resample: Literal["none", "up", "down"] = "none"
  num_groups: int = 32
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array, train: bool = False) -> jax.Array:
    """Maps ``x [B, H, W, C]`` and ``emb [B, E]`` to float32 ``[B, H', W', out_channels]``.

    ``train`` enables dropout, which then needs a ``"dropout"`` rng.
    """
    if self.resample not in _RESAMPLE:
      raise ValueError(f"resample must be one of {_RESAMPLE}, got {self.resample!r}")
    conv = functools.partial(nn.Conv, dtype=self.dtype, kernel_init=default_init)
    h = nn.swish(group_norm(x, num_groups=self.num_groups, name="norm1"))
    if self.resample == "up":
      h, x = nearest_upsample(h), nearest_upsample(x)
    elif self.resample == "down":
      h, x = avg_downsample(h), avg_downsample(x)
    h = conv(self.out_channels, (3, 3), name="conv1")(h)

    emb_features = 2 * self.out_channels if self.use_scale_shift_norm else self.out_channels
    emb_out = nn.Dense(
        emb_features, dtype=self.dtype, kernel_init=default_init, name="emb_proj"
    )(nn.swish(emb))[:, None, None, :]
    if self.use_scale_shift_norm:
      scale, shift = jnp.split(emb_out, 2, axis=-1)
      h = group_norm(h, num_groups=self.num_groups, name="norm2") * (1 + scale) + shift
    else:
      h = h.astype(jnp.float32) + emb_out
      h = group_norm(h, num_groups=self.num_groups, name="norm2")
    h = nn.Dropout(self.dropout, deterministic=not train, name="dropout")(nn.swish(h))
    h = conv(self.out_channels, (3, 3), kernel_init=zero_init, name="conv2")(h)

    if x.shape[-1] != self.out_channels:
      x = conv(self.out_channels, (1, 1), name="skip")(x)
    return x.astype(jnp.float32) + h
