"""The denoising U-Net of DDPM (Ho et al. 2020, App. B) with ADM's extensions
(Dhariwal & Nichol 2021, Sec. 3)."""

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxdiff.models.attention import AttentionBlock, attention_heads
from jaxdiff.models.checks import check_times_and_labels, compute_dtype
from jaxdiff.models.embeddings import sinusoidal_embedding
from jaxdiff.models.initializers import default_init, zero_init
from jaxdiff.models.normalization import group_norm
from jaxdiff.models.resample import Downsample, Upsample
from jaxdiff.models.resnet import ResBlock
from jaxdiff.models.spatial_transformer import SpatialTransformer, check_context

# jax.image.resize methods for a lower-resolution condition (UNet.condition_resize).
RESIZE_METHODS = ("nearest", "linear", "cubic", "lanczos3", "lanczos5")


class UNet(nn.Module):
  """U-Net noise predictor ``(x_t, t, y) -> model output`` (NHWC).

  Layout of DDPM's reference model: a 3x3 input convolution; per level
  ``num_res_blocks`` residual blocks (each followed by self-attention when the
  feature map's height is in ``attention_resolutions``) and, except at the last
  level, a 2x downsampling; a middle block resnet-attention-resnet; the mirror
  path with ``num_res_blocks + 1`` blocks per level, each taking the
  concatenation with one stored skip activation (every block output, every
  downsampling output and the input convolution are stored), and 2x upsampling
  except at the first level; then GroupNorm, swish and a zero-initialized 3x3
  convolution. The timestep embedding (sinusoidal, then two dense layers of width
  ``4 * base_channels`` with swish) conditions every residual block; a learned
  class embedding is added to it when ``num_classes`` is set.

  Extensions of Dhariwal & Nichol 2021: ``num_heads`` / ``num_head_channels``,
  ``use_scale_shift_norm`` (adaptive GroupNorm), ``resblock_updown`` (residual
  blocks with built-in resampling instead of strided / upsampling convolutions),
  ``learn_sigma`` (twice the output channels, for learned variances, Nichol &
  Dhariwal 2021), and class conditioning with one extra "null" label
  (``num_classes``) for classifier-free guidance (Ho & Salimans 2022).

  Image conditioning (SR3, Saharia et al. 2021; Palette, Saharia et al. 2022): with
  ``condition_channels`` set, ``condition`` ([B, h, w, condition_channels]) is concatenated
  to x_t along channels before the input convolution. A condition of lower resolution
  (h = H / k, w = W / k for an integer k, e.g. SR3's low-resolution image) is first resized
  to H x W inside the model with ``jax.image.resize(method=condition_resize)``, so the data
  pipeline and the samplers keep it at its own size; ``condition=None`` is the null
  condition (zeros), the one condition dropout trains for classifier-free guidance. With
  ``aug_level_embedding`` the augmentation level s in [0, 1] of the condition (Ho et al.
  2022, CDM, Sec. 4.1) is embedded like the timestep (sinusoidal of 1000 s, two dense
  layers) and added to the time embedding; ``aug_level=None`` is s = 0. Both are new
  parameters (``conv_in`` takes C + condition_channels inputs; ``aug_dense0/1``), so the
  parameter tree of an unconditional model is unchanged.

  Mixed precision: parameters are float32. The convolutions, dense layers and
  attention of the body compute in ``dtype``. As in ADM's fp16 mode, the time and
  label embeddings, the GroupNorms and the output head (final norm and
  convolution) compute in float32; in addition the element-wise operations after
  each norm and the residual sums stay in float32, which roughly halves the bf16
  rounding error (tiny test U-Nets with unit-gain random weights: ~1.4% -> ~0.8%
  relative to float32) for some activation memory. The output is float32.

  Attributes:
    out_channels: predicted channels; ``None`` means the input's channel count.
      Doubled when ``learn_sigma``.
    base_channels: channels of the first level; the time embedding has
      ``4 * base_channels`` features.
    channel_mult: per-level channel multipliers; ``len(channel_mult) - 1``
      downsamplings, so input height and width must be divisible by
      ``2 ** (len(channel_mult) - 1)``.
    num_res_blocks: residual blocks per level on the way down.
    attention_resolutions: feature-map heights at which to self-attend; each must
      be reached by the input (otherwise a ``ValueError``).
    num_heads: attention heads.
    num_head_channels: channels per head; if set, overrides ``num_heads``.
    dropout: dropout rate inside residual blocks (active only with ``train=True``).
    use_scale_shift_norm: adaptive GroupNorm in residual blocks.
    resblock_updown: resample with residual blocks.
    num_classes: number of classes; the embedding table has ``num_classes + 1``
      rows and label ``num_classes`` is the null (unconditional) label.
    learn_sigma: output ``2 * out_channels`` channels (the second half for the
      variance).
    num_groups: GroupNorm groups, capped at each layer's channel count.
    dtype: compute dtype, e.g. ``"float32"`` or ``"bfloat16"``.
    remat: rematerialize residual and attention blocks (``nn.remat``) to save
      memory in the backward pass at the cost of recomputation.
    attention_implementation: ``None`` (jax's choice), ``"xla"`` or ``"cudnn"``
      (fused flash attention on NVIDIA GPUs with bf16/fp16 ``dtype``), passed to
      ``jax.nn.dot_product_attention``.
    context_dim: width D of the context ``[B, L, D]`` that the cross-attention blocks
      attend to (Rombach et al. 2022, Sec. 3.3); ``None``: no cross-attention.
    transformer_resolutions: feature-map heights at which a ``SpatialTransformer``
      (self-attention, cross-attention to the context, feed-forward) follows each
      residual block (after its self-attention, if any), and follows the middle block's
      attention when the lowest height is listed. Needs ``context_dim``.
    transformer_depth: transformer blocks in each ``SpatialTransformer``.
    condition_channels: channels of the conditioning image (None: no image condition).
    condition_resize: the ``jax.image.resize`` method that brings a lower-resolution
      condition to the input's size (``"cubic"``, ``"linear"``, ``"nearest"``, ...).
    aug_level_embedding: condition on the augmentation level ``aug_level`` [B].

  With the defaults of these fields (no cross-attention, no image condition, no
  augmentation level) the parameter tree is exactly that of a U-Net without them.
  """

  out_channels: int | None = None
  base_channels: int = 128
  channel_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attention_resolutions: Sequence[int] = (16,)
  num_heads: int = 1
  num_head_channels: int | None = None
  dropout: float = 0.0
  use_scale_shift_norm: bool = False
  resblock_updown: bool = False
  num_classes: int | None = None
  learn_sigma: bool = False
  num_groups: int = 32
  dtype: DTypeLike = "float32"
  remat: bool = False
  attention_implementation: Literal["xla", "cudnn"] | None = None
  context_dim: int | None = None
  transformer_resolutions: Sequence[int] = ()
  transformer_depth: int = 1
  condition_channels: int | None = None
  condition_resize: str = "cubic"
  aug_level_embedding: bool = False

  def _validate_config(self) -> jnp.dtype:
    """Raises ``ValueError`` on a bad field; returns the compute dtype."""
    if self.base_channels < 4 or self.base_channels % 2:
      raise ValueError(f"base_channels must be even and >= 4, got {self.base_channels}")
    if not self.channel_mult or any(m < 1 for m in self.channel_mult):
      raise ValueError(
          f"channel_mult must be a non-empty sequence of positive ints, got "
          f"{self.channel_mult!r}"
      )
    if self.num_res_blocks < 1:
      raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
    if self.num_classes is not None and self.num_classes < 1:
      raise ValueError(f"num_classes must be None or >= 1, got {self.num_classes}")
    if self.out_channels is not None and self.out_channels < 1:
      raise ValueError(f"out_channels must be None or >= 1, got {self.out_channels}")
    for channels in sorted({self.base_channels * m for m in self.channel_mult}):
      groups = min(self.num_groups, channels)
      if groups < 1 or channels % groups:
        raise ValueError(
            f"num_groups={self.num_groups} (capped at {groups}) must be >= 1 and divide "
            f"the {channels} channels of a level"
        )
      attention_heads(
          channels, num_heads=self.num_heads, num_head_channels=self.num_head_channels
      )
    dtype = compute_dtype(self.dtype)
    self._validate_transformer_config()
    if self.attention_implementation not in (None, "xla", "cudnn"):
      raise ValueError(
          "attention_implementation must be None, 'xla' or 'cudnn', got "
          f"{self.attention_implementation!r}"
      )
    return dtype

  def _validate_transformer_config(self) -> None:
    """The cross-attention fields: a context width where there are transformer blocks."""
    if self.transformer_resolutions and self.context_dim is None:
      raise ValueError(f"transformer_resolutions={tuple(self.transformer_resolutions)} "
                       "needs context_dim, the width of the context to attend to")
    if self.context_dim is not None and self.context_dim < 1:
      raise ValueError(f"context_dim must be None or >= 1, got {self.context_dim}")
    if self.transformer_depth < 1:
      raise ValueError(f"transformer_depth must be >= 1, got {self.transformer_depth}")

  def _validate_context(self, context: jax.Array | None, context_mask: jax.Array | None,
                        batch: int) -> None:
    """A context exactly when the model has transformer blocks, of width ``context_dim``."""
    if not self.transformer_resolutions:
      if context is not None or context_mask is not None:
        raise ValueError("context given, but the model has no cross-attention "
                         "(transformer_resolutions=())")
      return
    if context is None:
      raise ValueError(f"the model cross-attends at {tuple(self.transformer_resolutions)}: "
                       f"pass context [B, L, {self.context_dim}] (and context_mask [B, L])")
    check_context(context, context_mask, batch=batch, context_dim=self.context_dim)

  def _validate_inputs(self, x: jax.Array, t: jax.Array, y: jax.Array | None) -> None:
    """Raises ``ValueError`` when the inputs do not fit the configuration."""
    if x.ndim != 4:
      raise ValueError(f"x must be NHWC [B, H, W, C], got shape {x.shape}")
    batch, height, width, _ = x.shape
    factor = 2 ** (len(self.channel_mult) - 1)
    if height % factor or width % factor:
      raise ValueError(
          f"input size {height}x{width} cannot be downsampled by the "
          f"{len(self.channel_mult)} levels of channel_mult={tuple(self.channel_mult)}: "
          f"height and width must be divisible by 2**{len(self.channel_mult) - 1} = "
          f"{factor}"
      )
    sizes = tuple(height // 2**level for level in range(len(self.channel_mult)))
    for field in ("attention_resolutions", "transformer_resolutions"):
      unreached = sorted(set(getattr(self, field)) - set(sizes))
      if unreached:
        raise ValueError(
            f"{field} {unreached} are never reached by a {height}x{width} "
            f"input, whose levels have heights {sizes}"
        )
    check_times_and_labels(t, y, batch=batch, num_classes=self.num_classes)

  def _validate_condition(self, x: jax.Array, condition: jax.Array | None,
                          aug_level: jax.Array | None) -> None:
    """Raises ``ValueError`` when the condition or the augmentation level does not fit."""
    if condition is not None and self.condition_channels is None:
      raise ValueError("condition was given but the model has condition_channels=None")
    if aug_level is not None and not self.aug_level_embedding:
      raise ValueError("aug_level was given but the model has aug_level_embedding=False")
    if self.condition_channels is not None and self.condition_channels < 1:
      raise ValueError(f"condition_channels must be None or >= 1, got {self.condition_channels}")
    if self.condition_resize not in RESIZE_METHODS:
      raise ValueError(f"condition_resize={self.condition_resize!r} is not one of "
                       f"{RESIZE_METHODS}")
    batch, height, width, _ = x.shape
    if aug_level is not None and jnp.shape(aug_level) != (batch,):
      raise ValueError(f"aug_level must have shape [B] = ({batch},), got {jnp.shape(aug_level)}")
    if condition is None:
      return
    expected = f"[{batch}, {height} / k, {width} / k, {self.condition_channels}] for an integer k"
    shape = jnp.shape(condition)
    if (len(shape) != 4 or shape[0] != batch or shape[3] != self.condition_channels
        or height % shape[1] or width % shape[2] or height // shape[1] != width // shape[2]):
      raise ValueError(f"condition has shape {tuple(shape)}; expected {expected}")

  def _conditioned_input(self, x: jax.Array, condition: jax.Array | None) -> jax.Array:
    """x, or x and the condition (resized to x's size; zeros when None) along channels."""
    if self.condition_channels is None:
      return x
    shape = x.shape[:3] + (self.condition_channels,)
    if condition is None:
      condition = jnp.zeros(shape, x.dtype)
    elif condition.shape != shape:
      condition = jax.image.resize(condition, shape, method=self.condition_resize)
    return jnp.concatenate([x, condition.astype(x.dtype)], axis=-1)

  def _aug_level_embedding(self, emb: jax.Array, aug_level: jax.Array | None) -> jax.Array:
    """emb plus the embedded augmentation level (CDM), when the model conditions on it."""
    if not self.aug_level_embedding:
      return emb
    level = jnp.zeros(emb.shape[:1]) if aug_level is None else aug_level
    dense = functools.partial(nn.Dense, emb.shape[-1], dtype=jnp.float32,
                              kernel_init=default_init)
    aug = sinusoidal_embedding(1000.0 * level.astype(jnp.float32), self.base_channels)
    return emb + dense(name="aug_dense1")(nn.swish(dense(name="aug_dense0")(aug)))

  @nn.compact
  def __call__(
      self, x: jax.Array, t: jax.Array, y: jax.Array | None = None, *,
      condition: jax.Array | None = None, aug_level: jax.Array | None = None,
      context: jax.Array | None = None, context_mask: jax.Array | None = None,
      train: bool = False,
  ) -> jax.Array:
    """Predicts the model output for noisy images.

    Args:
      x: noisy images ``[B, H, W, C]``.
      t: timesteps ``[B]``: int32 in ``[0, T)``, or float (continuous-time models
        pass their time scaled as they like, e.g. ``999 * t``).
      y: int class labels ``[B]`` in ``[0, num_classes]`` (``num_classes`` is the
        null label), or ``None``: the null label when ``num_classes`` is set.
      condition: the conditioning image ``[B, H / k, W / k, condition_channels]`` (class
        docstring), or ``None``: the null condition.
      aug_level: the condition's augmentation level ``[B]`` in [0, 1], or ``None`` (0).
      context: ``[B, L, context_dim]``, what the cross-attention blocks attend to (only
        and always for a model with ``transformer_resolutions``).
      context_mask: bool ``[B, L]``, True for real context tokens; ``None``: all real.
      train: enables dropout, which then needs a ``"dropout"`` rng.

    Returns:
      float32 ``[B, H, W, out]``, ``out = (out_channels or C) * (2 if learn_sigma else 1)``.
    """
    dtype = self._validate_config()
    self._validate_inputs(x, t, y)
    self._validate_context(context, context_mask, x.shape[0])
    self._validate_condition(x, condition, aug_level)
    cond = None if context is None else (context, context_mask)
    blocks = self._block_factories(dtype)
    emb = self._aug_level_embedding(self._embedding(t, y, batch=x.shape[0]), aug_level)
    h = nn.Conv(
        self.base_channels, (3, 3), dtype=dtype, kernel_init=default_init,
        name="conv_in",
    )(self._conditioned_input(x, condition).astype(dtype))
    h, skips = self._encoder(h, emb, train, blocks, cond)
    res_block, attn_block, transformer = blocks
    h = res_block(h.shape[-1], name="mid_res0")(h, emb, train)
    h = attn_block(name="mid_attn")(h)
    if h.shape[1] in frozenset(self.transformer_resolutions):
      h = transformer(h.shape[-1], name="mid_transformer")(h, *cond)
    h = res_block(h.shape[-1], name="mid_res1")(h, emb, train)
    h = self._decoder(h, skips, emb, train, blocks, cond)
    out_channels = (self.out_channels or x.shape[-1]) * (2 if self.learn_sigma else 1)
    h = nn.swish(group_norm(h, num_groups=self.num_groups, name="norm_out"))
    return nn.Conv(
        out_channels, (3, 3), dtype=jnp.float32, kernel_init=zero_init, name="conv_out"
    )(h)

  def _block_factories(self, dtype: Any) -> tuple[Callable[..., nn.Module], ...]:
    """ResBlock, AttentionBlock and SpatialTransformer constructors with this model's
    options (remat or not); the transformer's takes the channel count."""
    res_block = nn.remat(ResBlock, static_argnums=(3,)) if self.remat else ResBlock
    attn_block = nn.remat(AttentionBlock) if self.remat else AttentionBlock
    transformer = nn.remat(SpatialTransformer) if self.remat else SpatialTransformer

    def transformer_block(channels: int, *, name: str) -> nn.Module:
      heads = attention_heads(channels, num_heads=self.num_heads,
                              num_head_channels=self.num_head_channels)
      return transformer(heads, depth=self.transformer_depth, num_groups=self.num_groups,
                         dtype=dtype, implementation=self.attention_implementation, name=name)

    return (
        functools.partial(
            res_block, dropout=self.dropout, use_scale_shift_norm=self.use_scale_shift_norm,
            num_groups=self.num_groups, dtype=dtype,
        ),
        functools.partial(
            attn_block, num_heads=self.num_heads, num_head_channels=self.num_head_channels,
            num_groups=self.num_groups, dtype=dtype,
            implementation=self.attention_implementation,
        ),
        transformer_block,
    )

  def _embedding(self, t: jax.Array, y: jax.Array | None, *, batch: int) -> jax.Array:
    """The time embedding (Ho et al. 2020, App. B), plus the class embedding when set."""
    dense = functools.partial(
        nn.Dense, 4 * self.base_channels, dtype=jnp.float32, kernel_init=default_init
    )
    emb = sinusoidal_embedding(t, self.base_channels)
    emb = dense(name="time_dense1")(nn.swish(dense(name="time_dense0")(emb)))
    if self.num_classes is None:
      return emb
    labels = jnp.full((batch,), self.num_classes, jnp.int32) if y is None else y
    return emb + nn.Embed(
        self.num_classes + 1, 4 * self.base_channels, dtype=jnp.float32, name="label_emb",
    )(labels)

  def _block(self, h: jax.Array, emb: jax.Array, train: bool, blocks: tuple,
             cond: tuple | None, *, channels: int, path: str, level: int,
             index: int) -> jax.Array:
    """Residual block ``{path}{level}_res{index}``, then attention and cross-attention
    (``{path}{level}_transformer{index}``) at the chosen resolutions."""
    res_block, attn_block, transformer = blocks
    h = res_block(channels, name=f"{path}{level}_res{index}")(h, emb, train)
    if h.shape[1] in frozenset(self.attention_resolutions):
      h = attn_block(name=f"{path}{level}_attn{index}")(h)
    if h.shape[1] in frozenset(self.transformer_resolutions):
      h = transformer(channels, name=f"{path}{level}_transformer{index}")(h, *cond)
    return h

  def _resample(self, h: jax.Array, emb: jax.Array, train: bool, blocks: tuple, *,
                direction: str, name: str) -> jax.Array:
    """Halves or doubles the resolution: a resampling ResBlock (BigGAN-style, Dhariwal &
    Nichol 2021) with ``resblock_updown``, else a strided conv / nearest upsampling + conv."""
    if self.resblock_updown:
      return blocks[0](h.shape[-1], resample=direction, name=name)(h, emb, train)
    layer = Downsample if direction == "down" else Upsample
    return layer(h.shape[-1], dtype=blocks[0].keywords["dtype"], name=name)(h)

  def _encoder(self, h: jax.Array, emb: jax.Array, train: bool, blocks: tuple,
               cond: tuple | None) -> tuple[jax.Array, list[jax.Array]]:
    """The downsampling path; returns the features and the skips for the decoder."""
    skips = [h]
    for level, mult in enumerate(self.channel_mult):
      for i in range(self.num_res_blocks):
        h = self._block(h, emb, train, blocks, cond, channels=mult * self.base_channels,
                        path="down", level=level, index=i)
        skips.append(h)
      if level != len(self.channel_mult) - 1:
        h = self._resample(h, emb, train, blocks, direction="down",
                           name=f"down{level}_resample")
        skips.append(h)
    return h, skips

  def _decoder(self, h: jax.Array, skips: list[jax.Array], emb: jax.Array, train: bool,
               blocks: tuple, cond: tuple | None) -> jax.Array:
    """The upsampling path, each block fed the matching skip (concatenated)."""
    for level, mult in reversed(list(enumerate(self.channel_mult))):
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = self._block(h, emb, train, blocks, cond, channels=mult * self.base_channels,
                        path="up", level=level, index=i)
      if level != 0:
        h = self._resample(h, emb, train, blocks, direction="up", name=f"up{level}_resample")
    return h
