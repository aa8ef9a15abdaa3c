"""The Diffusion Transformer, DiT (Peebles & Xie 2023), with adaLN-Zero blocks."""

import functools
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxdiff.models.attention import self_attention
from jaxdiff.models.checks import check_times_and_labels, compute_dtype
from jaxdiff.models.embeddings import sincos_position_embedding_2d, sinusoidal_embedding

# DiT's initialization (its `initialize_weights`): Xavier-uniform linear layers, N(0, 0.02)
# timestep MLP and label table, zero adaLN modulations and output layer.
xavier_init = nn.initializers.xavier_uniform()
patch_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2))
embedding_init = nn.initializers.normal(stddev=0.02)
zero_init = nn.initializers.zeros_init()


def _layer_norm(x: jax.Array, *, eps: float, name: str) -> jax.Array:
  """LayerNorm without affine parameters (DiT's ``elementwise_affine=False``), float32."""
  return nn.LayerNorm(epsilon=eps, use_bias=False, use_scale=False, dtype=jnp.float32,
                      name=name)(x.astype(jnp.float32))


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """Adaptive layer norm's ``x * (1 + scale) + shift``, per example over tokens."""
  return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


def adaln_conditioning(t: jax.Array, y: jax.Array | None, *, batch: int, hidden_size: int,
                       frequency_embedding_size: int, freq_shift: float,
                       num_classes: int | None) -> jax.Array:
  """DiT's conditioning (Peebles & Xie 2023, Sec. 3.2) ``c = MLP(sinusoid(t)) +
  label_embedding(y)``, float32 ``[B, hidden_size]`` (``y`` None: the null label), as
  submodules "t_embed_fc1", "t_embed_fc2" and "y_embed" of the calling compact method."""
  dense = functools.partial(nn.Dense, hidden_size, dtype=jnp.float32,
                            kernel_init=embedding_init)
  c = sinusoidal_embedding(t, frequency_embedding_size, flip_sin_to_cos=True,
                           freq_shift=freq_shift)
  c = dense(name="t_embed_fc2")(nn.silu(dense(name="t_embed_fc1")(c)))
  if num_classes is not None:
    labels = jnp.full((batch,), num_classes, jnp.int32) if y is None else y
    c = c + nn.Embed(num_classes + 1, hidden_size, dtype=jnp.float32,
                     embedding_init=embedding_init, name="y_embed")(labels)
  return c


class DiTBlock(nn.Module):
  """One DiT block with adaLN-Zero conditioning (Peebles & Xie 2023, Sec. 3.2, Fig. 3).

  From the conditioning ``c`` a zero-initialized dense layer regresses the shifts,
  scales and gates ``(shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp)``;
  then ``x += gate_msa * attention(modulate(norm(x)))`` and
  ``x += gate_mlp * mlp(modulate(norm(x)))``, so each block starts as the identity.
  The MLP is ``dense(mlp_ratio * C)``, tanh-approximated GELU, ``dense(C)``.

  Attributes:
    num_heads: attention heads; must divide the width.
    mlp_ratio: hidden width of the MLP over the model width.
    mlp_norm_eps: epsilon of the norm before the MLP (DiT: 1e-6; diffusers'
      ``DiTTransformer2DModel`` uses its config's ``norm_eps``).
    dtype: compute dtype of the dense layers and attention; norms, modulation and the
      residual stream stay float32.
    attention_implementation: as in ``jax.nn.dot_product_attention``.
  """

  num_heads: int
  mlp_ratio: float = 4.0
  mlp_norm_eps: float = 1e-6
  dtype: DTypeLike = jnp.float32
  attention_implementation: Literal["xla", "cudnn"] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    """Maps tokens ``x [B, N, C]`` and conditioning ``c [B, C]`` to float32 ``[B, N, C]``."""
    width = x.shape[-1]
    modulation = nn.Dense(6 * width, dtype=jnp.float32, kernel_init=zero_init,
                          name="adaLN_modulation")(nn.silu(c))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(
        modulation, 6, axis=-1)
    h = _modulate(_layer_norm(x, eps=1e-6, name="norm1"), shift_msa, scale_msa)
    h = self_attention(h.astype(self.dtype), heads=self.num_heads, dtype=self.dtype,
                       implementation=self.attention_implementation,
                       kernel_init=xavier_init, out_init=xavier_init)
    x = x + gate_msa[:, None, :] * h.astype(jnp.float32)
    h = _modulate(_layer_norm(x, eps=self.mlp_norm_eps, name="norm2"), shift_mlp, scale_mlp)
    h = nn.Dense(int(width * self.mlp_ratio), dtype=self.dtype, kernel_init=xavier_init,
                 name="mlp_fc1")(h)
    h = nn.Dense(width, dtype=self.dtype, kernel_init=xavier_init,
                 name="mlp_fc2")(nn.gelu(h, approximate=True))
    return x + gate_mlp[:, None, :] * h.astype(jnp.float32)


class DiT(nn.Module):
  """Diffusion Transformer noise predictor ``(x_t, t, y) -> model output`` (NHWC).

  Peebles & Xie 2023 (Sec. 3.2): the image is cut into ``patch_size x patch_size``
  patches, each linearly embedded (a strided convolution) to ``hidden_size`` and
  added to fixed 2-D sine-cosine position embeddings; ``depth`` adaLN-Zero blocks
  (``DiTBlock``) conditioned on ``c = MLP(sinusoid(t)) + embed(y)``; a final adaptive
  layer norm and a zero-initialized linear decoder to ``patch_size**2 * out`` values
  per token, rearranged back to the image. As in the U-Net, ``num_classes`` adds a
  learned label table with one extra row, label ``num_classes`` being the null label
  for classifier-free guidance (DiT's ``use_cfg_embedding``), and ``learn_sigma``
  doubles the output channels (the second half for the variance, Nichol & Dhariwal
  2021). ``DIT_PRESETS`` holds the paper's S, B, L and XL models (Table 4) with patch
  sizes 2, 4 and 8.

  Attributes:
    patch_size: patch side ``p``; input height and width must be multiples of it.
    hidden_size: token width.
    depth: number of blocks.
    num_heads: attention heads per block.
    mlp_ratio: MLP width over ``hidden_size``.
    out_channels: predicted channels; ``None`` means the input's. Doubled with
      ``learn_sigma``.
    num_classes: classes of the label embedding, or ``None`` (unconditional).
    learn_sigma: output ``2 * out_channels`` channels.
    frequency_embedding_size: width of the timestep sinusoid (DiT: 256).
    freq_shift: the sinusoid's frequency shift (``sinusoidal_embedding``): 0 in DiT,
      1 in diffusers' ``DiTTransformer2DModel``.
    mlp_norm_eps: see ``DiTBlock``.
    dtype: compute dtype of the blocks, e.g. ``"float32"`` or ``"bfloat16"``; the
      embeddings and the output layer compute in float32; the output is float32.
    remat: rematerialize each block in the backward pass (``nn.remat``).
    attention_implementation: ``None``, ``"xla"`` or ``"cudnn"``.
  """

  patch_size: int = 2
  hidden_size: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  out_channels: int | None = None
  num_classes: int | None = None
  learn_sigma: bool = False
  frequency_embedding_size: int = 256
  freq_shift: float = 0.0
  mlp_norm_eps: float = 1e-6
  dtype: DTypeLike = "float32"
  remat: bool = False
  attention_implementation: Literal["xla", "cudnn"] | None = None

  def _validate(self, x: jax.Array, t: jax.Array, y: jax.Array | None) -> jnp.dtype:
    """Raises ``ValueError`` on a bad field or input; returns the compute dtype."""
    for field in ("patch_size", "hidden_size", "num_heads"):
      if getattr(self, field) < 1:
        raise ValueError(f"DiT {field} must be >= 1, got {getattr(self, field)}")
    if self.depth < 0:
      raise ValueError(f"DiT depth must be >= 0, got {self.depth}")
    if self.hidden_size % self.num_heads or self.hidden_size % 4:
      raise ValueError(f"DiT hidden_size={self.hidden_size} must be a multiple of 4 and of "
                       f"num_heads={self.num_heads}")
    if self.num_classes is not None and self.num_classes < 1:
      raise ValueError(f"num_classes must be None or >= 1, got {self.num_classes}")
    dtype = compute_dtype(self.dtype)
    if x.ndim != 4:
      raise ValueError(f"x must be NHWC [B, H, W, C], got shape {x.shape}")
    batch, height, width, _ = x.shape
    if height % self.patch_size or width % self.patch_size:
      raise ValueError(f"input size {height}x{width} is not a multiple of patch_size="
                       f"{self.patch_size}")
    check_times_and_labels(t, y, batch=batch, num_classes=self.num_classes)
    return dtype

  def _conditioning(self, t: jax.Array, y: jax.Array | None, batch: int) -> jax.Array:
    return adaln_conditioning(t, y, batch=batch, hidden_size=self.hidden_size,
                              frequency_embedding_size=self.frequency_embedding_size,
                              freq_shift=self.freq_shift, num_classes=self.num_classes)

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    """``UNet.__call__``'s contract: NHWC ``x``, timesteps ``t [B]``, labels ``y [B]`` or
    None (the null label), to float32 ``[B, H, W, out]``. ``train`` is accepted for that
    common signature; DiT has no dropout."""
    del train
    dtype = self._validate(x, t, y)
    batch, height, width, channels = x.shape
    p = self.patch_size
    rows, cols = height // p, width // p
    tokens = nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding="VALID",
                     dtype=dtype, kernel_init=patch_init, name="patch_embed")(x.astype(dtype))
    tokens = tokens.reshape(batch, rows * cols, self.hidden_size).astype(jnp.float32)
    tokens = tokens + sincos_position_embedding_2d(rows, cols, self.hidden_size)[None]
    c = self._conditioning(t, y, batch)
    block = nn.remat(DiTBlock) if self.remat else DiTBlock
    for i in range(self.depth):
      tokens = block(self.num_heads, mlp_ratio=self.mlp_ratio, mlp_norm_eps=self.mlp_norm_eps,
                     dtype=dtype, attention_implementation=self.attention_implementation,
                     name=f"block{i}")(tokens, c)

    out_channels = (self.out_channels or channels) * (2 if self.learn_sigma else 1)
    shift, scale = jnp.split(nn.Dense(2 * self.hidden_size, dtype=jnp.float32,
                                      kernel_init=zero_init, name="final_adaLN")(nn.silu(c)),
                             2, axis=-1)
    h = _modulate(_layer_norm(tokens, eps=1e-6, name="final_norm"), shift, scale)
    h = nn.Dense(p * p * out_channels, dtype=jnp.float32, kernel_init=zero_init,
                 name="final_linear")(h)
    h = h.reshape(batch, rows, cols, p, p, out_channels).transpose(0, 1, 3, 2, 4, 5)
    return h.reshape(batch, height, width, out_channels)
