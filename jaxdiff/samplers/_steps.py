"""Which timesteps a sampler visits, and the input checks every sampler shares.

These run in Python before the jitted chain, so bad input fails early with a clear
ValueError instead of inside a trace.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import diffusion, schedules
from jaxdiff.schedules import Schedule

Array = Any


def check_num_steps(num_steps: int, num_timesteps: int) -> int:
  """Raises ValueError unless 1 <= ``num_steps`` <= T."""
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
    raise ValueError(f"num_steps must be an int, got {num_steps!r}")
  if not 1 <= num_steps <= num_timesteps:
    raise ValueError(f"num_steps={num_steps} must lie in [1, {num_timesteps}] "
                     f"(the schedule has T = {num_timesteps} timesteps)")
  return int(num_steps)


def check_options(*, prediction: str, variance: str = "fixed_small") -> None:
  """Raises ValueError on an unknown prediction or variance type."""
  diffusion.check_prediction(prediction)
  diffusion.check_variance(variance)


def check_shape(shape: Sequence[int]) -> tuple[int, ...]:
  """Raises ValueError unless ``shape`` is a batch-first shape of positive ints."""
  try:
    shape = tuple(int(s) for s in shape)
  except TypeError:
    raise ValueError(f"shape must be a sequence of ints, got {shape!r}") from None
  if len(shape) < 2 or min(shape) < 1:
    raise ValueError(f"shape must be [B, ...] with at least 2 positive dims, got {shape}")
  return shape


def check_array(name: str, x: Optional[Array], shape: tuple[int, ...]) -> None:
  """Raises ValueError if ``x`` is given and its shape is not ``shape``."""
  if x is not None and tuple(jnp.shape(x)) != shape:
    raise ValueError(f"{name} has shape {tuple(jnp.shape(x))}, expected {shape}")


def check_key(rng: Any) -> None:
  """Raises ValueError unless ``rng`` is a jax.random key (raw uint32[2] or typed)."""
  if not isinstance(rng, (jax.Array, np.ndarray)):
    raise ValueError(f"rng must be a jax.random key, got {type(rng).__name__}")


def respaced(schedule: Schedule, num_steps: Optional[int],
             timesteps: Optional[Sequence[int]] = None) -> tuple[Schedule, Array]:
  """The chain a step selection keeps and the original timestep of each of its steps.

  ``timesteps`` (strictly ascending originals) if given; else ``num_steps=None`` is the
  full chain and N keeps ``space_timesteps(T, "ddimN")``. A shortened chain is the
  respaced schedule (Nichol & Dhariwal 2021, Sec. 4), which needs a concrete (not
  traced) schedule.
  """
  if timesteps is None and num_steps is None:
    return schedule, jnp.arange(schedule.num_timesteps, dtype=jnp.int32)
  kept = strided_timesteps(schedule.num_timesteps, num_steps=num_steps, timesteps=timesteps)
  return schedules.respace(schedule, np.asarray(kept).tolist())


def strided_timesteps(num_timesteps: int, *, num_steps: int,
                      timesteps: Optional[Sequence[int]]) -> Array:
  """The ascending original timesteps of a DDIM subsequence (Song et al. 2021, Sec. 4.2).

  ``timesteps`` if given (strictly ascending, in [0, T)), else the ``num_steps`` evenly
  strided ones of ``space_timesteps(T, "ddimN")``.
  """
  if timesteps is None:
    num_steps = check_num_steps(num_steps, num_timesteps)
    return jnp.asarray(schedules.space_timesteps(num_timesteps, f"ddim{num_steps}"), jnp.int32)
  kept = np.asarray(timesteps)
  if kept.ndim != 1 or kept.size < 1 or not np.issubdtype(kept.dtype, np.integer):
    raise ValueError(f"timesteps must be a non-empty 1-D sequence of ints, got {timesteps!r}")
  if np.any(np.diff(kept) <= 0):
    raise ValueError(f"timesteps must be strictly ascending, got {kept.tolist()}")
  if kept[0] < 0 or kept[-1] >= num_timesteps:
    raise ValueError(f"timesteps must lie in [0, {num_timesteps}), got {kept.tolist()}")
  return jnp.asarray(kept, jnp.int32)
