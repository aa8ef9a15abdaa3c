"""The patch discriminator of the autoencoder's adversarial loss (Isola et al. 2017's
PatchGAN, as Esser et al. 2021 and Rombach et al. 2022 use it)."""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxdiff.models.normalization import group_norm


class PatchDiscriminator(nn.Module):
  """Logits ``[B, h, w, 1]``, one per overlapping image patch.

  A 4x4 stride-2 convolution with LeakyReLU(0.2), then ``num_layers - 1`` more stride-2
  and one stride-1 4x4 convolution, each doubling the channels (capped at 8x) with a
  normalization and LeakyReLU, and a final 4x4 convolution to one logit. PatchGAN
  normalizes with BatchNorm; here GroupNorm, which keeps no running statistics, so the
  discriminator is a pure function of its parameters like every other jaxdiff model.

  Attributes:
    channels: channels of the first layer.
    num_layers: stride-2 layers.
    num_groups: GroupNorm groups (capped at the channel count).
  """

  channels: int = 64
  num_layers: int = 3
  num_groups: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda features, stride, name: nn.Conv(  # noqa: E731
        features, (4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)), name=name)
    h = nn.leaky_relu(conv(self.channels, 2, "conv0")(x), 0.2)
    for index in range(1, self.num_layers + 1):
      stride = 2 if index < self.num_layers else 1
      h = conv(self.channels * min(2 ** index, 8), stride, f"conv{index}")(h)
      h = nn.leaky_relu(group_norm(h, num_groups=self.num_groups, name=f"norm{index}"), 0.2)
    return conv(1, 1, "logits")(h)
