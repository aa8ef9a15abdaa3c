"""Networks over category tokens for discrete-state diffusion (`jaxdiff.discrete`).

Both take tokens x_t shaped like the data, [B, H, W, C] (any number type: the training job
initializes models with float zeros, which are token 0), and return float32
[B, H, W, out_channels] with out_channels = K * C: the logits of the K categories of every
channel, K contiguous values per channel.

- `OneHotInput(backbone, num_tokens)`: any image network (the U-Net, the DiT) on the one-hot
  encoding of the tokens, num_tokens * C input channels;
- `TokenTransformer`: a small transformer over the H * W * C tokens read row-major: a learned
  token embedding, fixed 1-D sine-cosine positions (Vaswani et al. 2017, Sec. 3.5), DiT's
  adaLN-Zero blocks (Peebles & Xie 2023) conditioned on the time (and a class label), and a
  zero-initialized linear head to K logits per token.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models.checks import check_times_and_labels, compute_dtype
from jaxdiff.models.dit import DiTBlock, adaln_conditioning, embedding_init
from jaxdiff.models.embeddings import sinusoidal_embedding


class OneHotInput(nn.Module):
  """``backbone(one_hot(x), t, y, train=...)``: an image network over tokens in
  [0, num_tokens), one-hot encoded to num_tokens channels per data channel."""

  backbone: nn.Module
  num_tokens: int

  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    onehot = jax.nn.one_hot(x.astype(jnp.int32), self.num_tokens, dtype=jnp.float32)
    return self.backbone(onehot.reshape(x.shape[:-1] + (-1,)), t, y, train=train)


class TokenTransformer(nn.Module):
  """A transformer denoiser over tokens (module docstring).

  Attributes:
    num_tokens: the vocabulary of x_t (the data's categories, plus the mask token of the
      absorbing and masked processes).
    out_channels: outputs per pixel, K * C (K logits per channel).
    hidden_size, depth, num_heads, mlp_ratio: the width, number of blocks, heads and MLP
      width ratio of the DiT blocks.
    num_classes: classes of a label embedding (label num_classes is the null label), or None.
    frequency_embedding_size: width of the time sinusoid.
    dtype: compute dtype of the blocks.
  """

  num_tokens: int
  out_channels: int
  hidden_size: int = 128
  depth: int = 4
  num_heads: int = 4
  mlp_ratio: float = 4.0
  num_classes: int | None = None
  frequency_embedding_size: int = 256
  dtype: str = "float32"

  def _conditioning(self, t: jax.Array, y: jax.Array | None, batch: int) -> jax.Array:
    return adaln_conditioning(t, y, batch=batch, hidden_size=self.hidden_size,
                              frequency_embedding_size=self.frequency_embedding_size,
                              freq_shift=0.0, num_classes=self.num_classes)

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    del train
    dtype = compute_dtype(self.dtype)
    if x.ndim != 4 or self.out_channels % x.shape[-1] or self.hidden_size % self.num_heads:
      raise ValueError(f"TokenTransformer needs x [B, H, W, C] with C dividing out_channels="
                       f"{self.out_channels} and num_heads dividing hidden_size, got x "
                       f"{x.shape}, num_heads={self.num_heads}, hidden={self.hidden_size}")
    batch = x.shape[0]
    check_times_and_labels(t, y, batch=batch, num_classes=self.num_classes)
    tokens = x.astype(jnp.int32).reshape(batch, -1)
    h = nn.Embed(self.num_tokens, self.hidden_size, dtype=jnp.float32,
                 embedding_init=embedding_init, name="token_embed")(tokens)
    h = h + sinusoidal_embedding(jnp.arange(tokens.shape[1]), self.hidden_size)[None]
    c = self._conditioning(t, y, batch)
    for i in range(self.depth):
      h = DiTBlock(self.num_heads, mlp_ratio=self.mlp_ratio, dtype=dtype, name=f"block{i}")(h, c)
    h = nn.LayerNorm(dtype=jnp.float32, name="final_norm")(h)
    logits = nn.Dense(self.out_channels // x.shape[-1], dtype=jnp.float32,
                      kernel_init=nn.initializers.zeros_init(), name="final_linear")(h)
    return logits.reshape(x.shape[:-1] + (self.out_channels,))
