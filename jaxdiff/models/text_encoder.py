"""A small trainable text encoder, the default conditioner of caption models, and the model
that puts it in front of a cross-attention U-Net.

`TextEncoder` is a transformer encoder (Vaswani et al. 2017) over token ids: token and
learned position embeddings, pre-norm blocks of masked self-attention and an MLP, a final
LayerNorm; LDM trains such an encoder jointly with its U-Net for its text-to-image models
(Rombach et al. 2022, Sec. 4.3.1). Token id `PAD` (0) is padding; every caption starts with
`BOS` (1), so even the empty caption, the "no condition" of classifier-free guidance, has one
real token.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.models.attention import self_attention
from jaxdiff.models.initializers import default_init

PAD, BOS = 0, 1


def null_tokens(max_length: int) -> np.ndarray:
  """The empty caption int32 [max_length]: BOS, then padding."""
  row = np.full((max_length,), PAD, np.int32)
  row[0] = BOS
  return row


def _layer_norm(x: jax.Array, name: str) -> jax.Array:
  return nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, name=name)(x)


class _EncoderBlock(nn.Module):
  """Pre-norm transformer block: ``x += attn(ln(x))`` over unmasked keys, ``x += mlp(ln(x))``."""

  heads: int
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    width = x.shape[-1]
    x = x + _MaskedSelfAttention(self.heads, name="attn")(_layer_norm(x, "norm1"), mask)
    h = nn.gelu(nn.Dense(self.mlp_ratio * width, kernel_init=default_init, name="mlp_in")(
        _layer_norm(x, "norm2")))
    return x + nn.Dense(width, kernel_init=default_init, name="mlp_out")(h)


class _MaskedSelfAttention(nn.Module):
  heads: int

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    keys = mask[:, None, None, :]  # [B, 1 head, 1 query, L]
    return self_attention(x, heads=self.heads, dtype=jnp.float32, mask=keys)


class TextEncoder(nn.Module):
  """Token ids ``[B, L]`` (``L <= max_length``) to a context ``[B, L, width]`` and its mask
  ``[B, L]`` (True where the id is not ``PAD``).

  Attributes:
    vocab_size: number of token ids (including ``PAD`` and ``BOS``).
    width: embedding width D (the U-Net's ``context_dim``).
    depth: transformer blocks.
    num_heads: attention heads (dividing ``width``).
    max_length: longest token sequence (the position table's length).
  """

  vocab_size: int
  width: int = 64
  depth: int = 2
  num_heads: int = 4
  max_length: int = 16

  @nn.compact
  def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    if tokens.ndim != 2 or tokens.shape[1] > self.max_length:
      raise ValueError(f"tokens must have shape [B, L] with L <= max_length="
                       f"{self.max_length}, got {tokens.shape}")
    if self.width % self.num_heads:
      raise ValueError(f"num_heads={self.num_heads} must divide width={self.width}")
    mask = tokens != PAD
    x = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02),
                 name="token_embedding")(tokens)
    positions = self.param("position_embedding", nn.initializers.normal(0.02),
                           (self.max_length, self.width))
    x = x + positions[None, :tokens.shape[1]]
    for index in range(self.depth):
      x = _EncoderBlock(self.num_heads, name=f"block{index}")(x, mask)
    return _layer_norm(x, "norm_out"), mask


class TextConditioned(nn.Module):
  """A caption-conditioned denoiser: ``text_encoder`` turns the token ids ``y [B, L]`` into
  the context that ``denoiser`` (a U-Net with ``context_dim``) cross-attends to.

  ``__call__(x, t, y=None, *, train=False)`` matches every other jaxdiff model, so the
  losses, samplers and classifier-free guidance take it as it is (the null condition is
  the empty caption ``[BOS, PAD, ...]``, the default when ``y`` is None).
  """

  denoiser: nn.Module
  text_encoder: TextEncoder

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    length = self.text_encoder.max_length
    tokens = (jnp.broadcast_to(null_tokens(length), (x.shape[0], length)) if y is None
              else jnp.asarray(y))
    if tokens.ndim != 2 or tokens.shape[0] != x.shape[0]:
      raise ValueError(f"y (caption token ids) must have shape [B, L] with B = "
                       f"{x.shape[0]}, got {tokens.shape}")
    context, mask = self.text_encoder(tokens.astype(jnp.int32))
    return self.denoiser(x, t, context=context, context_mask=mask, train=train)
