"""Categories as 8-bit gray levels: how tokens travel through the image pipeline.

Category k of K is stored as the uint8 level round(k * 255 / (K - 1)), evenly spread over
[0, 255] (the digits' 17 gray levels v in 0..16 are scikit-learn's round(v * 255 / 16)),
and as the float image value level / 127.5 - 1 in [-1, 1] (`jaxdiff.images`). The way back
rounds to the nearest category, which is exact on these levels for any K <= 256 and
quantizes any other 8-bit data (e.g. Fashion-MNIST) to K levels. Works on NumPy and JAX
arrays, inside jit.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

Array = Any


def _check(num_levels: int) -> None:
  if isinstance(num_levels, bool) or not isinstance(num_levels, (int, np.integer)) or not (
      2 <= num_levels <= 256):
    raise ValueError(f"the number of categories must be an int in [2, 256], got {num_levels!r}")


def uint8_levels(num_levels: int) -> np.ndarray:
  """The K uint8 levels round(k * 255 / (K - 1)), k = 0..K-1."""
  _check(num_levels)
  return np.rint(np.arange(num_levels) * (255.0 / (num_levels - 1))).astype(np.uint8)


def tokens_to_uint8(tokens: Array, num_levels: int) -> Array:
  """uint8 levels of tokens in [0, K)."""
  _check(num_levels)
  return jnp.round(tokens * (255.0 / (num_levels - 1))).astype(jnp.uint8)


def uint8_to_tokens(values: Array, num_levels: int) -> Array:
  """int32 tokens of uint8 levels (nearest category)."""
  _check(num_levels)
  return jnp.round(values * ((num_levels - 1) / 255.0)).astype(jnp.int32)


def images_to_tokens(x: Array, num_levels: int) -> Array:
  """int32 tokens of images in [-1, 1] whose values are 8-bit levels (x = u / 127.5 - 1)."""
  values = jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255)
  return uint8_to_tokens(values, num_levels)


def tokens_to_images(tokens: Array, num_levels: int) -> Array:
  """float32 images in [-1, 1] of tokens: their uint8 levels / 127.5 - 1."""
  return tokens_to_uint8(tokens, num_levels).astype(jnp.float32) / 127.5 - 1.0
