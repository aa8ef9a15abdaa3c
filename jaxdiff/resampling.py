"""Integer-factor image resampling shared by the degradations, ILVR and the metrics.

`area_downsample(x, factor)` is the mean over each ``factor x factor`` block and
`nearest_upsample(x, factor)` repeats every pixel into such a block. Their composition
`low_pass(x, factor)` is the orthogonal projection onto images that are constant on the
blocks (idempotent and self-adjoint), the linear low-pass filter phi_N of ILVR (Choi et al.
2021, eq. 6) with N = factor: replacing ``low_pass(x)`` by ``low_pass(y)`` gives an image
whose low-pass content is exactly y's. The functions use array methods only, so they take
NumPy arrays (the host data pipeline) and jax arrays (inside jitted samplers) alike; images
are NHWC, any float dtype, and the factor must divide the height and width.
"""

from __future__ import annotations

from typing import Any

Array = Any


def check_factor(shape: tuple[int, ...], factor: int) -> None:
  """Raises ValueError unless ``factor`` is a positive int dividing the height and width of
  NHWC ``shape``."""
  if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
    raise ValueError(f"the resampling factor must be a positive int, got {factor!r}")
  if len(shape) != 4:
    raise ValueError(f"images must be NHWC [B, H, W, C], got shape {tuple(shape)}")
  if shape[1] % factor or shape[2] % factor:
    raise ValueError(f"factor {factor} does not divide the image size {shape[1]}x{shape[2]}")


def area_downsample(x: Array, factor: int) -> Array:
  """[B, H / f, W / f, C]: the mean of each f x f block (box filter, "area" resizing)."""
  check_factor(x.shape, factor)
  b, h, w, c = x.shape
  return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def nearest_upsample(x: Array, factor: int) -> Array:
  """[B, H * f, W * f, C]: every pixel repeated into an f x f block."""
  check_factor((x.shape[0], x.shape[1] * factor, x.shape[2] * factor, x.shape[3]), factor)
  return x.repeat(factor, axis=1).repeat(factor, axis=2)


def low_pass(x: Array, factor: int) -> Array:
  """``nearest_upsample(area_downsample(x, f), f)``: the block-mean projection (ILVR's
  phi_N)."""
  return nearest_upsample(area_downsample(x, factor), factor)
