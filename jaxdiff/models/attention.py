"""Global multi-head self-attention over pixels (Ho et al. 2020 App. B; Dhariwal & Nichol 2021)."""

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxdiff.models.initializers import default_init, zero_init
from jaxdiff.models.normalization import group_norm


def attention_heads(channels: int, *, num_heads: int, num_head_channels: int | None) -> int:
  """Number of heads for ``channels``: ``channels // num_head_channels`` if that is set
  (ADM's ``num_head_channels``), otherwise ``num_heads``; it must divide ``channels``."""
  if num_head_channels is not None:
    if num_head_channels < 1 or channels % num_head_channels:
      raise ValueError(
          f"num_head_channels={num_head_channels} must be >= 1 and divide the "
          f"{channels} channels of an attention block"
      )
    return channels // num_head_channels
  if num_heads < 1 or channels % num_heads:
    raise ValueError(
        f"num_heads={num_heads} must be >= 1 and divide the {channels} channels of an "
        "attention block"
    )
  return num_heads


class AttentionBlock(nn.Module):
  """Residual self-attention block: ``x + proj(attention(q, k, v))`` on ``norm(x)``.

  DDPM's ``attn_block`` (one head, Ho et al. 2020) generalized to several heads as
  in ADM (Dhariwal & Nichol 2021, Sec. 3). Every pixel attends to every pixel with
  scaled dot-product attention (Vaswani et al. 2017, Eq. 1) through
  ``jax.nn.dot_product_attention``: ``implementation=None`` lets jax choose (its
  XLA path today, which XLA fuses on TPU); ``"cudnn"`` asks for cuDNN's fused
  flash attention on NVIDIA GPUs (bf16/fp16 compute, head size a multiple of 8 and
  at most 128).
  The output projection is zero-initialized, so the block starts as the identity.
  Projections and attention compute in ``dtype``; the norm and the residual sum
  in float32, so the output is float32.

  Attributes:
    num_heads: number of heads (ignored when ``num_head_channels`` is set).
    num_head_channels: channels per head; overrides ``num_heads``.
    num_groups: GroupNorm groups (capped at the channel count).
    dtype: compute dtype.
    implementation: ``None``, ``"xla"`` or ``"cudnn"``, as in
      ``jax.nn.dot_product_attention``.
  """

  num_heads: int = 1
  num_head_channels: int | None = None
  num_groups: int = 32
  dtype: DTypeLike = jnp.float32
  implementation: Literal["xla", "cudnn"] | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps ``[B, H, W, C]`` to float32 of the same shape."""
    batch, height, width, channels = x.shape
    heads = attention_heads(
        channels, num_heads=self.num_heads, num_head_channels=self.num_head_channels
    )
    h = group_norm(x, num_groups=self.num_groups, name="norm")
    out = self_attention(
        h.reshape(batch, height * width, channels), heads=heads, dtype=self.dtype,
        implementation=self.implementation, out_init=zero_init,
    )
    return x.astype(jnp.float32) + out.reshape(batch, height, width, channels)


def self_attention(
    h: jax.Array, *, heads: int, dtype: DTypeLike,
    implementation: Literal["xla", "cudnn"] | None = None,
    kernel_init: nn.initializers.Initializer = default_init,
    out_init: nn.initializers.Initializer = default_init,
    mask: jax.Array | None = None,
) -> jax.Array:
  """Multi-head scaled dot-product self-attention over tokens (Vaswani et al. 2017, Eq. 1).

  ``softmax(q k^T / sqrt(d)) v`` per head, with ``q, k, v`` dense projections (with
  bias) of ``h [B, N, C]`` into ``heads`` heads of ``C // heads`` channels, then a dense
  output projection back to ``C``. ``mask`` (bool, broadcastable to ``[B, heads, N, N]``)
  keeps the attention weights where True. Must be called inside a compact Flax module: the
  projections are its submodules ``q``, ``k``, ``v`` and ``proj_out``.
  """
  channels = h.shape[-1]
  q, k, v = (
      nn.DenseGeneral(
          (heads, channels // heads), dtype=dtype, kernel_init=kernel_init, name=name,
      )(h)
      for name in ("q", "k", "v")
  )
  out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)
  return nn.DenseGeneral(
      channels, axis=(-2, -1), dtype=dtype, kernel_init=out_init, name="proj_out"
  )(out)
