"""2x spatial up- and down-sampling (Ho et al. 2020; Dhariwal & Nichol 2021)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxdiff.models.initializers import default_init


def nearest_upsample(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2x upsampling of NHWC ``x`` (DDPM's ``upsample`` resize)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def avg_downsample(x: jax.Array) -> jax.Array:
  """2x2 average pooling with stride 2 of NHWC ``x`` (ADM's conv-free ``Downsample``)."""
  return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))


class Upsample(nn.Module):
  """Nearest-neighbour 2x upsampling then a 3x3 convolution (DDPM, ``with_conv=True``)."""

  channels: int
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps ``[B, H, W, C]`` to ``[B, 2H, 2W, channels]``."""
    return nn.Conv(
        self.channels, (3, 3), dtype=self.dtype, kernel_init=default_init,
        name="conv",
    )(nearest_upsample(x))


class Downsample(nn.Module):
  """A 3x3 convolution with stride 2 (DDPM's ``downsample`` with ``with_conv=True``).

  Padding is TensorFlow's ``SAME``, as in the reference code.
  """

  channels: int
  dtype: DTypeLike = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps ``[B, H, W, C]`` (H, W even) to ``[B, H/2, W/2, channels]``."""
    return nn.Conv(
        self.channels, (3, 3), strides=(2, 2), padding="SAME", dtype=self.dtype,
        kernel_init=default_init, name="conv",
    )(x)
