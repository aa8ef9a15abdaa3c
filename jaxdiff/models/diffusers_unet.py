"""diffusers' ``UNet2DModel`` as a Flax module, for its checkpoints (DDPM, ADM-style)."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models.diffusers_blocks import MidBlock2D, UNetBlock, conv, group_norm
from jaxdiff.models.embeddings import sinusoidal_embedding


class TimestepEmbedding(nn.Module):
  """diffusers' ``TimestepEmbedding``: ``linear_2(silu(linear_1(emb)))``."""

  features: int

  @nn.compact
  def __call__(self, emb: jax.Array) -> jax.Array:
    return nn.Dense(self.features, name="linear_2")(
        nn.silu(nn.Dense(self.features, name="linear_1")(emb)))


class DiffusersUNet2D(nn.Module):
  """The U-Net of diffusers' ``UNet2DModel``, field for field (its config keys).

  Ho et al. 2020's U-Net (App. B) in diffusers' general form, with Dhariwal & Nichol
  2021's options: a sinusoidal timestep embedding (``flip_sin_to_cos``, ``freq_shift``)
  through two dense layers (``time_embedding``), plus a class embedding when
  ``num_class_embeds``; ``conv_in``; one down block per ``down_block_types`` entry
  (``layers_per_block`` resnets each) with a downsampler except at the last; the
  middle block; one up block per ``up_block_types`` entry (``layers_per_block + 1``
  resnets, each taking one stored skip activation); GroupNorm, SiLU and ``conv_out``.
  Built by ``jaxdiff.models.load_pretrained``; ``apply(variables, x, t, y)`` takes NHWC
  float32 ``x``, timesteps ``t`` (``[B]`` or a scalar) and, for class-conditional
  models, labels ``y [B]``, and returns what the PyTorch model returns, in NHWC.
  ``attention_heads`` (not a diffusers key) fixes the number of heads of every attention
  layer instead, as OpenAI's U-Net does with ``num_heads`` (see ``openai_unet``).
  """

  out_channels: int = 3
  center_input_sample: bool = False
  time_embedding_dim: int | None = None
  freq_shift: float = 0.0
  flip_sin_to_cos: bool = True
  down_block_types: Sequence[str] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D",
                                     "AttnDownBlock2D")
  mid_block_type: str | None = "UNetMidBlock2D"
  up_block_types: Sequence[str] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D",
                                   "UpBlock2D")
  block_out_channels: Sequence[int] = (224, 448, 672, 896)
  layers_per_block: int = 2
  mid_block_scale_factor: float = 1.0
  downsample_padding: int = 1
  downsample_type: str = "conv"
  upsample_type: str = "conv"
  act_fn: str = "silu"
  attention_head_dim: int | None = 8
  norm_num_groups: int = 32
  attn_norm_num_groups: int | None = None
  norm_eps: float = 1e-5
  resnet_time_scale_shift: str = "default"
  add_attention: bool = True
  num_class_embeds: int | None = None
  attention_heads: int | None = None

  def _embedding(self, t: jax.Array, y: jax.Array | None, batch: int) -> jax.Array:
    """The timestep (and class) embedding ``[B, time_embed_dim]``."""
    channels = self.block_out_channels[0]
    width = self.time_embedding_dim or 4 * channels
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))
    emb = sinusoidal_embedding(t, channels, flip_sin_to_cos=self.flip_sin_to_cos,
                               freq_shift=self.freq_shift)
    emb = TimestepEmbedding(width, name="time_embedding")(emb)
    if self.num_class_embeds is not None:
      if y is None:
        raise ValueError(f"this UNet2DModel is class-conditional ({self.num_class_embeds} "
                         "classes): pass labels y [B]")
      emb = emb + nn.Embed(self.num_class_embeds, width, name="class_embedding")(y)
    elif y is not None:
      raise ValueError("y was given but this UNet2DModel has no class embedding")
    return emb

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    """Maps NHWC ``x``, timesteps ``t`` and labels ``y`` to ``[B, H, W, out_channels]``."""
    del train
    factor = 2 ** (len(self.block_out_channels) - 1)
    if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(f"x must be NHWC with height and width divisible by {factor}, got "
                       f"shape {x.shape}")
    if self.center_input_sample:
      x = 2 * x - 1.0
    emb = self._embedding(t, y, x.shape[0])
    block_kw = dict(groups=self.norm_num_groups, eps=self.norm_eps, act_fn=self.act_fn,
                    time_embedding_norm=self.resnet_time_scale_shift,
                    attention_head_dim=self.attention_head_dim,
                    attention_heads=self.attention_heads)
    h = conv(self.block_out_channels[0], name="conv_in")(x)
    skips = [h]
    last = len(self.block_out_channels) - 1
    for i, (block_type, channels) in enumerate(zip(self.down_block_types,
                                                   self.block_out_channels)):
      h, states = UNetBlock(block_type, channels, self.layers_per_block, i != last,
                            downsample_padding=self.downsample_padding,
                            resampler=self.downsample_type, name=f"down_blocks_{i}",
                            **block_kw)(h, emb)
      skips += states
    if self.mid_block_type is not None:
      attention_groups = self.attn_norm_num_groups
      if attention_groups is None and self.resnet_time_scale_shift == "default":
        attention_groups = self.norm_num_groups
      h = MidBlock2D(self.norm_num_groups, self.norm_eps, self.act_fn,
                     self.resnet_time_scale_shift, self.mid_block_scale_factor,
                     self.add_attention, self.attention_head_dim, attention_groups,
                     self.attention_heads, name="mid_block")(h, emb)
    num_layers = self.layers_per_block + 1
    for i, (block_type, channels) in enumerate(zip(self.up_block_types,
                                                   self.block_out_channels[::-1])):
      h, _ = UNetBlock(block_type, channels, num_layers, i != last,
                       resampler=self.upsample_type, name=f"up_blocks_{i}",
                       **block_kw)(h, emb, skips[-num_layers:])
      skips = skips[:-num_layers]
    h = group_norm(h, groups=self.norm_num_groups, eps=self.norm_eps, name="conv_norm_out")
    return conv(self.out_channels, name="conv_out")(nn.silu(h))

