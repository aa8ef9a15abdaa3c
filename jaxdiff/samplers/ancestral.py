"""Ancestral sampling of the reverse process; Ho et al. 2020, Algorithm 2."""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxdiff import diffusion
from jaxdiff.samplers import _chain, _steps, guidance
from jaxdiff.samplers._traceable import Traceable, traceable, unwrap
from jaxdiff.schedules import Schedule

Array = Any
ModelFn = Callable[[Array, Array], Array]


def ancestral_step(model_fn: ModelFn, schedule: Schedule, timestep_map: Array, x: Array,
                   i: Array, key: Array, *, prediction: str, variance: str,
                   clip_denoised: bool, denoised_fn: Optional[Callable[[Array], Array]] = None,
                   cond_fn: Optional[ModelFn] = None) -> Array:
  """One reverse step x_i -> x_{i-1} ~ p(x_{i-1} | x_i); Ho et al. 2020, Algorithm 2, line 4.

  x_{i-1} = mu_theta(x_i, i) + sigma_i z with z ~ N(0, I), and no noise at i = 0. The
  model sees the original timestep ``timestep_map[i]``; mean and variance come from
  :func:`jaxdiff.diffusion.p_mean_variance` on ``schedule`` (the possibly respaced
  chain). With ``cond_fn`` the mean is shifted by variance * cond_fn (Dhariwal & Nichol
  2021, Algorithm 1).
  """
  batch = x.shape[0]
  t = jnp.full((batch,), i, jnp.int32)
  t_model = jnp.full((batch,), timestep_map[i], jnp.int32)
  out = diffusion.p_mean_variance(schedule, model_fn(x, t_model), x, t, prediction=prediction,
                                  variance=variance, clip_denoised=clip_denoised,
                                  denoised_fn=denoised_fn)
  mean = out.mean
  if cond_fn is not None:
    mean = guidance.condition_mean(mean, out.variance, cond_fn(x, t_model))
  noise = jax.random.normal(key, x.shape, x.dtype)
  nonzero = (i > 0).astype(x.dtype)
  return mean + nonzero * jnp.exp(0.5 * out.log_variance) * noise


def ancestral_chain(model_fn: ModelFn, schedule: Schedule, timestep_map: Array, x: Array,
                    key: Array, *, num_steps: int, trajectory_stride: Optional[int] = None,
                    **step_kw: Any) -> Array | tuple[Array, Array]:
  """Runs :func:`ancestral_step` for i = num_steps - 1, ..., 0 as one ``lax.scan``."""
  step = functools.partial(ancestral_step, model_fn, schedule, timestep_map, **step_kw)
  indices = jnp.arange(num_steps - 1, -1, -1, dtype=jnp.int32)
  keys = jax.random.split(key, num_steps)
  return _chain.run_chain(lambda x, inp: step(x, *inp), x, (indices, keys),
                          trajectory_stride=trajectory_stride)


@functools.partial(jax.jit, static_argnames=("shape", "prediction", "variance", "clip_denoised",
                                             "trajectory_stride"))
def _ddpm(model: Traceable, schedule: Schedule, timestep_map: Array, rng: Array,
          x_T: Optional[Array], denoised_fn: Optional[Traceable], cond_fn: Optional[Traceable],
          *, shape: tuple[int, ...], prediction: str, variance: str, clip_denoised: bool,
          trajectory_stride: Optional[int]) -> Array | tuple[Array, Array]:
  key_T, key_steps = jax.random.split(rng)
  if x_T is None:
    x_T = jax.random.normal(key_T, shape, schedule.betas.dtype)
  return ancestral_chain(unwrap(model), schedule, timestep_map, x_T, key_steps,
                         num_steps=timestep_map.shape[0], trajectory_stride=trajectory_stride,
                         prediction=prediction, variance=variance, clip_denoised=clip_denoised,
                         denoised_fn=unwrap(denoised_fn), cond_fn=unwrap(cond_fn))


def ddpm(model_fn: ModelFn, schedule: Schedule, rng: Array, shape: Sequence[int], *,
         num_steps: Optional[int] = None, prediction: str = "eps",
         variance: str = "fixed_small", clip_denoised: bool = True,
         x_T: Optional[Array] = None, return_trajectory: bool = False,
         timesteps: Optional[Sequence[int]] = None,
         trajectory_stride: int = 1, denoised_fn: Optional[Callable[[Array], Array]] = None,
         cond_fn: Optional[ModelFn] = None) -> Array | tuple[Array, Array]:
  """Ancestral sampling, Ho et al. 2020, Algorithm 2, on the full or a respaced chain.

  x_T ~ N(0, I); for i = N-1, ..., 0: x_{i-1} = mu_theta(x_i, i) + sigma_i z (no noise at
  the last step). The whole chain is one ``lax.scan`` inside one jit; a second call with
  the same shapes, options and model_fn reuses the compiled program (see
  :mod:`jaxdiff.samplers` on passing params as a ``jax.tree_util.Partial``).

  Args:
    model_fn: ``model_fn(x_t, t) -> output``; ``t`` is int32 [B], original timesteps.
    schedule: the schedule the model was trained with (T steps).
    rng: a jax.random key.
    shape: [B, ...] of the samples.
    num_steps: None for all T steps, or N to respace onto ``space_timesteps(T, "ddimN")``
      (Nichol & Dhariwal 2021, Sec. 4; needs a concrete schedule).
    prediction: "eps" | "x0" | "v" | "mean".
    variance: "fixed_small" | "fixed_large" | "learned" | "learned_range".
    clip_denoised: clip the predicted x_0 to [-1, 1].
    x_T: start from this noise [shape] instead of drawing it (shard it over the batch axis
      to run sharded).
    return_trajectory: also return the states x_T, after every ``trajectory_stride``-th
      step, and x_0: ``[1 + ceil(N / stride), *shape]``.
    timesteps: strictly ascending original timesteps to respace onto instead of
      ``num_steps`` (e.g. from ``space_timesteps(T, [counts])``).
    trajectory_stride: see ``return_trajectory``.
    denoised_fn: map applied to the predicted x_0 before clipping, e.g.
      ``jax.tree_util.Partial(samplers.dynamic_threshold, percentile=99.5)``.
    cond_fn: classifier guidance term, e.g. from :func:`classifier_guidance`.

  Returns:
    x_0 samples [shape], or ``(x_0, trajectory)`` when ``return_trajectory``.

  Raises:
    ValueError: on an unknown prediction or variance, num_steps outside [1, T], bad
      timesteps, a bad shape, an x_T of another shape, or a non-callable model_fn.
  """
  _steps.check_options(prediction=prediction, variance=variance)
  shape = _steps.check_shape(shape)
  _steps.check_array("x_T", x_T, shape)
  _steps.check_key(rng)
  stride = _chain.check_stride(trajectory_stride) if return_trajectory else None
  chain_schedule, timestep_map = _steps.respaced(schedule, num_steps, timesteps)
  return _ddpm(traceable(model_fn, name="model_fn"), chain_schedule, timestep_map, rng, x_T,
               traceable(denoised_fn, name="denoised_fn", optional=True),
               traceable(cond_fn, name="cond_fn", optional=True), shape=shape,
               prediction=prediction, variance=variance, clip_denoised=bool(clip_denoised),
               trajectory_stride=stride)
