"""Inpainting by replacement (Song et al. 2021, App. I.2; Lugmayr et al. 2022, eq. 8) with
RePaint's resampling (Lugmayr et al. 2022, Sec. 4.2 and Algorithm 1), for every sampler.

After every step of any sampler the known pixels are replaced by a fresh draw of q(x_t | x_0
= x_known) at the time t the step reached (exactly x_known at the clean end and in the
output). RePaint's resampling jumps back ``jump_length`` steps by the forward process and
denoises again, so that each block is denoised ``resample_count`` times; it needs a
sampler whose state is x alone (a Markov chain: ddpm, ddim, edm_heun).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.samplers.grids import Points

Array = Any


def repaint_transitions(num_steps: int, *, jump_length: int,
                        resample_count: int) -> tuple[np.ndarray, np.ndarray]:
  """The RePaint time schedule (Lugmayr et al. 2022, Sec. 4.2 and Algorithm 1).

  Steps k = 0, ..., N - 1 go from grid point k to k + 1; a level l in {0, ..., N} is the
  state at point N - l (level N is the start, level 0 the end). The chain goes down one level
  at a time; whenever it reaches a level l divisible by ``jump_length`` with
  l + jump_length <= N, it jumps back up ``jump_length`` levels and redescends, so that each
  such block is denoised ``resample_count`` times in all.

  Returns:
    ``(steps, up)``: int32 step indices k and bool "is a forward (jump back) move", one per
    transition; a forward move with index k goes from point k + 1 back to point k.
  """
  levels: list[int] = []
  up: list[bool] = []
  for level in range(num_steps - 1, -1, -1):
    levels.append(level)
    up.append(False)
    if level % jump_length == 0 and level + jump_length <= num_steps:
      for _ in range(resample_count - 1):
        levels.extend(range(level, level + jump_length))
        up.extend([True] * jump_length)
        levels.extend(range(level + jump_length - 1, level - 1, -1))
        up.extend([False] * jump_length)
  return num_steps - 1 - np.asarray(levels, np.int32), np.asarray(up, bool)


def known_at(point: Points, x_known: Array, key: Array) -> Array:
  """A draw of q(x_t | x_0 = x_known) at a grid point; exactly x_known at the clean end."""
  noise = jax.random.normal(key, x_known.shape, x_known.dtype)
  return (jnp.asarray(point.alpha).astype(x_known.dtype) * x_known
          + jnp.asarray(point.sigma).astype(x_known.dtype) * noise)


def jump_back(x: Array, s: Points, t: Points, transition_variance: Array, key: Array) -> Array:
  """A draw of the forward transition q(x_s | x_t) = N(alpha_s / alpha_t x_t, sigma^2_{s|t})."""
  ratio = jnp.asarray(s.alpha / t.alpha).astype(x.dtype)
  scale = jnp.sqrt(jnp.asarray(transition_variance)).astype(x.dtype)
  return ratio * x + scale * jax.random.normal(key, x.shape, x.dtype)


def check_mask(mask: Array, shape: tuple[int, ...]) -> Array:
  """The mask as bools broadcastable to ``shape``, or ValueError naming the mismatch."""
  mask = jnp.asarray(mask)
  if mask.ndim != len(shape) or any(m not in (1, s) for m, s in zip(mask.shape, shape)):
    raise ValueError(f"mask has shape {mask.shape}, which does not match x_known's shape "
                     f"{shape}: expected the same rank, each dim equal or 1")
  return mask != 0
