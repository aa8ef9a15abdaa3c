"""Inpainting by replacement, with RePaint resampling (Lugmayr et al. 2022)."""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.samplers import _chain, _steps
from jaxdiff.samplers._traceable import Traceable, traceable, unwrap
from jaxdiff.samplers.ancestral import ancestral_step
from jaxdiff.schedules import Schedule

Array = Any
ModelFn = Callable[[Array, Array], Array]


def repaint_transitions(num_steps: int, *, jump_length: int,
                        resample_count: int) -> tuple[np.ndarray, np.ndarray]:
  """The RePaint time schedule (Lugmayr et al. 2022, Sec. 4.2 and Algorithm 1).

  Level l in {N, ..., 0} is the state before the l remaining reverse steps (level N is
  x_T, level 0 the output). A reverse step with index i goes from level i+1 to i; a
  forward ("jump back") step with index l goes from level l to l+1. The chain goes down
  one level at a time; whenever it reaches a level l divisible by ``jump_length`` with
  l + jump_length <= N, it jumps back up ``jump_length`` levels and redescends, so that
  each such block is denoised ``resample_count`` times in all.

  Returns:
    ``(indices, up)``: int32 step indices and bool "is a forward step", one per transition.
  """
  indices: list[int] = []
  up: list[bool] = []
  for level in range(num_steps - 1, -1, -1):
    indices.append(level)
    up.append(False)
    if level % jump_length == 0 and level + jump_length <= num_steps:
      for _ in range(resample_count - 1):
        indices.extend(range(level, level + jump_length))
        up.extend([True] * jump_length)
        indices.extend(range(level + jump_length - 1, level - 1, -1))
        up.extend([False] * jump_length)
  return np.asarray(indices, np.int32), np.asarray(up, bool)


def _alpha_bar_at_level(schedule: Schedule, level: Array) -> Array:
  """alpha-bar of the state at a level: alphas_cumprod[level - 1], and 1 at level 0."""
  return jnp.where(level > 0, schedule.alphas_cumprod[jnp.maximum(level - 1, 0)], 1.0)


def _known_at_level(schedule: Schedule, x_known: Array, level: Array, key: Array) -> Array:
  """A draw of q(x_t | x_0 = x_known) at the level's timestep; exactly x_known at level 0."""
  a = _alpha_bar_at_level(schedule, level)
  noise = jax.random.normal(key, x_known.shape, x_known.dtype)
  return jnp.sqrt(a) * x_known + jnp.sqrt(1.0 - a) * noise


def inpaint_step(model_fn: ModelFn, schedule: Schedule, timestep_map: Array, x_known: Array,
                 mask: Array, x: Array, i: Array, up: Array, key: Array,
                 **step_kw: Any) -> Array:
  """One RePaint transition (Lugmayr et al. 2022, Algorithm 1, lines 4-8 and 10).

  Reverse (``up`` false): x_unknown ~ p(x_{i-1} | x_i) (:func:`ancestral_step`),
  x_known ~ q(x_{i-1} | x_0), x_{i-1} = m * x_known + (1 - m) * x_unknown (eq. 8).
  Forward (``up`` true): x_{l+1} ~ N(sqrt(1 - beta_l) x_l, beta_l I).
  """
  key_step, key_known = jax.random.split(key)

  def reverse(x: Array) -> Array:
    x = ancestral_step(model_fn, schedule, timestep_map, x, i, key_step, **step_kw)
    return jnp.where(mask, _known_at_level(schedule, x_known, i, key_known), x)

  def forward(x: Array) -> Array:
    beta = schedule.betas[i].astype(x.dtype)
    return jnp.sqrt(1.0 - beta) * x + jnp.sqrt(beta) * jax.random.normal(key_step, x.shape,
                                                                          x.dtype)

  return jax.lax.cond(up, forward, reverse, x)


@functools.partial(jax.jit, static_argnames=("prediction", "variance", "clip_denoised"))
def _inpaint(model: Traceable, schedule: Schedule, timestep_map: Array, rng: Array,
             x_known: Array, mask: Array, indices: Array, up: Array, x_T: Optional[Array],
             denoised_fn: Optional[Traceable], cond_fn: Optional[Traceable], *,
             prediction: str, variance: str, clip_denoised: bool) -> Array:
  key_T, key_known, key_steps = jax.random.split(rng, 3)
  if x_T is None:
    x_T = jax.random.normal(key_T, x_known.shape, x_known.dtype)
  num_steps = timestep_map.shape[0]
  x = jnp.where(mask, _known_at_level(schedule, x_known, num_steps, key_known), x_T)
  step = functools.partial(inpaint_step, unwrap(model), schedule, timestep_map, x_known, mask,
                           prediction=prediction, variance=variance,
                           clip_denoised=clip_denoised, denoised_fn=unwrap(denoised_fn),
                           cond_fn=unwrap(cond_fn))
  keys = jax.random.split(key_steps, indices.shape[0])
  return _chain.run_chain(lambda x, inp: step(x, *inp), x, (indices, up, keys))


def _check_positive_int(name: str, value: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be an int >= 1, got {value!r}")
  return int(value)


def _check_mask(mask: Array, shape: tuple[int, ...]) -> Array:
  mask = jnp.asarray(mask)
  if mask.ndim != len(shape) or any(m not in (1, s) for m, s in zip(mask.shape, shape)):
    raise ValueError(f"mask has shape {mask.shape}, which does not match x_known's shape "
                     f"{shape}: expected the same rank, each dim equal or 1")
  return mask != 0


def inpaint(model_fn: ModelFn, schedule: Schedule, rng: Array, x_known: Array, mask: Array, *,
            num_steps: Optional[int] = None, prediction: str = "eps",
            variance: str = "fixed_small", clip_denoised: bool = True, jump_length: int = 1,
            resample_count: int = 1, x_T: Optional[Array] = None,
            timesteps: Optional[Sequence[int]] = None,
            denoised_fn: Optional[Callable[[Array], Array]] = None,
            cond_fn: Optional[ModelFn] = None) -> Array:
  """Samples the unknown region given known pixels; RePaint, Lugmayr et al. 2022, Algorithm 1.

  At every reverse step the known region is replaced by a fresh draw of q(x_t | x_0) of
  the given image, and at the end it equals ``x_known`` exactly. ``resample_count=1``
  is plain replacement; larger values add RePaint's resampling with jumps of
  ``jump_length`` levels (:func:`repaint_transitions`), costing about
  ``(2 * resample_count - 1) * N`` transitions. One ``lax.scan`` inside one jit.

  Args:
    model_fn: ``model_fn(x_t, t) -> output``; ``t`` is int32 [B], original timesteps.
    schedule: the model's schedule (T steps).
    rng: a jax.random key.
    x_known: [B, ...] image; only its known region is used.
    mask: nonzero where known; same rank as x_known, each dim equal or 1.
    num_steps: None for all T steps, or N for the respaced chain ``"ddimN"``.
    prediction, variance, clip_denoised, denoised_fn, cond_fn, timesteps: as in
      :func:`ddpm`.
    jump_length: RePaint's jump length j >= 1.
    resample_count: RePaint's number of resamplings r >= 1.
    x_T: start from this noise (its known region is replaced).

  Raises:
    ValueError: on a mask whose shape does not match, jump_length outside [1, N],
      resample_count < 1, num_steps outside [1, T], an unknown prediction or variance.
  """
  _steps.check_options(prediction=prediction, variance=variance)
  x_known = jnp.asarray(x_known)
  shape = _steps.check_shape(x_known.shape)
  mask = _check_mask(mask, shape)
  _steps.check_array("x_T", x_T, shape)
  _steps.check_key(rng)
  chain_schedule, timestep_map = _steps.respaced(schedule, num_steps, timesteps)
  num_chain = int(timestep_map.shape[0])
  jump_length = _check_positive_int("jump_length", jump_length)
  if jump_length > num_chain:
    raise ValueError(f"jump_length={jump_length} exceeds the chain's {num_chain} steps")
  indices, up = repaint_transitions(
      num_chain, jump_length=jump_length,
      resample_count=_check_positive_int("resample_count", resample_count))
  return _inpaint(traceable(model_fn, name="model_fn"), chain_schedule, timestep_map, rng,
                  x_known, mask, jnp.asarray(indices), jnp.asarray(up), x_T,
                  traceable(denoised_fn, name="denoised_fn", optional=True),
                  traceable(cond_fn, name="cond_fn", optional=True), prediction=prediction,
                  variance=variance, clip_denoised=bool(clip_denoised))
