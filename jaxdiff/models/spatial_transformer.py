"""Cross-attention conditioning: Rombach et al. 2022's SpatialTransformer (Sec. 3.3).

A feature map attends to itself and to a context sequence (token embeddings of a caption,
or any encoder's output ``[B, L, D]``) through transformer blocks (Vaswani et al. 2017):
``x + proj_out(blocks(proj_in(norm(x))))``, each block being self-attention, cross-attention
to the context and a GEGLU feed-forward (Shazeer 2020), each pre-normed and residual. A
context mask ``[B, L]`` (True = a real token) removes padding from the keys; a row whose
tokens are all masked receives no cross-attention update at all.
"""

from __future__ import annotations

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxdiff.models.attention import self_attention
from jaxdiff.models.initializers import default_init, zero_init
from jaxdiff.models.normalization import group_norm


def check_context(context: jax.Array, context_mask: jax.Array | None, *, batch: int,
                  context_dim: int) -> None:
  """One-line ``ValueError`` unless ``context`` is ``[batch, L, context_dim]`` and the mask
  ``None`` or ``[batch, L]``."""
  shape = jnp.shape(context)
  if len(shape) != 3 or shape[0] != batch:
    raise ValueError(f"context must have shape [B, L, D] = ({batch}, L, {context_dim}), got "
                     f"{shape}")
  if shape[2] != context_dim:
    raise ValueError(f"context has width {shape[2]}, but the model's context_dim is "
                     f"{context_dim}")
  if context_mask is not None and jnp.shape(context_mask) != shape[:2]:
    raise ValueError(f"context_mask must have shape [B, L] = {shape[:2]}, got "
                     f"{jnp.shape(context_mask)}")


def cross_attention(h: jax.Array, context: jax.Array, context_mask: jax.Array | None, *,
                    heads: int, dtype: DTypeLike,
                    implementation: Literal["xla", "cudnn"] | None = None) -> jax.Array:
  """Multi-head attention of queries ``h [B, N, C]`` to keys and values of ``context
  [B, L, D]`` (Rombach et al. 2022, eq. 3: softmax(Q K^T / sqrt(d)) V).

  Q, K and V are bias-free projections to ``C`` channels in ``heads`` heads, then a dense
  output projection. Tokens where ``context_mask`` is False get no weight; a query row whose
  context is entirely masked outputs zero (not an average over padding). Must be called
  inside a compact Flax module (submodules ``q``, ``k``, ``v``, ``proj_out``).
  """
  channels = h.shape[-1]
  project = lambda name, inputs: nn.DenseGeneral(  # noqa: E731
      (heads, channels // heads), use_bias=False, dtype=dtype, kernel_init=default_init,
      name=name)(inputs)
  q, k, v = project("q", h), project("k", context), project("v", context)
  mask = None
  if context_mask is not None:
    mask = jnp.asarray(context_mask, bool)[:, None, None, :]  # [B, 1 head, 1 query, L]
  out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)
  if context_mask is not None:  # all-masked rows: softmax would spread over the padding
    out = out * jnp.any(context_mask, axis=-1)[:, None, None, None].astype(out.dtype)
  return nn.DenseGeneral(channels, axis=(-2, -1), dtype=dtype, kernel_init=default_init,
                         name="proj_out")(out)


def _layer_norm(x: jax.Array, name: str) -> jax.Array:
  return nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, name=name)(x.astype(jnp.float32))


class Attention(nn.Module):
  """Self-attention of tokens ``[B, N, C]`` (``self_attention``), or cross-attention to a
  context when one is given (``cross_attention``)."""

  heads: int
  dtype: DTypeLike = jnp.float32
  implementation: Literal["xla", "cudnn"] | None = None

  @nn.compact
  def __call__(self, h: jax.Array, context: jax.Array | None = None,
               context_mask: jax.Array | None = None) -> jax.Array:
    options = dict(heads=self.heads, dtype=self.dtype, implementation=self.implementation)
    if context is None:
      return self_attention(h, **options)
    return cross_attention(h, context, context_mask, **options)


class TransformerBlock(nn.Module):
  """Rombach et al.'s BasicTransformerBlock on tokens ``[B, N, C]``: ``x += self_attn(
  norm1(x))``, ``x += cross_attn(norm2(x), context)``, ``x += geglu_ff(norm3(x))``.

  Attributes:
    heads: attention heads (dividing C).
    ff_mult: the feed-forward's hidden width as a multiple of C.
    dtype: compute dtype of the projections; norms and residual sums are float32.
    implementation: passed to ``jax.nn.dot_product_attention``.
  """

  heads: int
  ff_mult: int = 4
  dtype: DTypeLike = jnp.float32
  implementation: Literal["xla", "cudnn"] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array,
               context_mask: jax.Array | None) -> jax.Array:
    channels = x.shape[-1]
    attention = lambda name: Attention(self.heads, self.dtype, self.implementation,  # noqa: E731
                                       name=name)
    x = x.astype(jnp.float32)
    x = x + attention("attn1")(_layer_norm(x, "norm1"))
    x = x + attention("attn2")(_layer_norm(x, "norm2"), context, context_mask)
    hidden = nn.Dense(2 * self.ff_mult * channels, dtype=self.dtype, kernel_init=default_init,
                      name="ff_in")(_layer_norm(x, "norm3"))
    value, gate = jnp.split(hidden, 2, axis=-1)
    ff = nn.Dense(channels, dtype=self.dtype, kernel_init=default_init,
                  name="ff_out")(value * nn.gelu(gate, approximate=False))
    return x + ff.astype(jnp.float32)


class SpatialTransformer(nn.Module):
  """Rombach et al. 2022's SpatialTransformer: ``x + proj_out(blocks(proj_in(norm(x))))``.

  GroupNorm, a 1x1 projection, the pixels as ``H * W`` tokens through ``depth``
  ``TransformerBlock``s attending to ``context [B, L, D]`` (masked by ``context_mask``
  ``[B, L]``, True = real token), and a zero-initialized 1x1 projection back, so the block
  starts as the identity. Output float32 of ``x``'s shape.

  Attributes:
    heads: attention heads (dividing the channels).
    depth: transformer blocks.
    num_groups: GroupNorm groups (capped at the channel count).
    dtype: compute dtype.
    implementation: passed to ``jax.nn.dot_product_attention``.
  """

  heads: int
  depth: int = 1
  num_groups: int = 32
  dtype: DTypeLike = jnp.float32
  implementation: Literal["xla", "cudnn"] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array,
               context_mask: jax.Array | None = None) -> jax.Array:
    batch, height, width, channels = x.shape
    h = group_norm(x, num_groups=self.num_groups, name="norm")
    h = nn.Dense(channels, dtype=self.dtype, kernel_init=default_init, name="proj_in")(h)
    h = h.reshape(batch, height * width, channels)
    for index in range(self.depth):
      h = TransformerBlock(self.heads, dtype=self.dtype, implementation=self.implementation,
                           name=f"block{index}")(h, context, context_mask)
    h = nn.Dense(channels, dtype=self.dtype, kernel_init=zero_init, name="proj_out")(h)
    return x.astype(jnp.float32) + h.reshape(x.shape).astype(jnp.float32)
