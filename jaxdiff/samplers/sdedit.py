"""SDEdit: image editing by noising then denoising (Meng et al. 2022)."""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxdiff import diffusion
from jaxdiff.samplers import _steps
from jaxdiff.samplers._traceable import Traceable, traceable, unwrap
from jaxdiff.samplers.ancestral import ancestral_chain
from jaxdiff.schedules import Schedule

Array = Any
ModelFn = Callable[[Array, Array], Array]


@functools.partial(jax.jit, static_argnames=("num_run", "prediction", "variance",
                                             "clip_denoised"))
def _sdedit(model: Traceable, schedule: Schedule, timestep_map: Array, rng: Array, x0: Array,
            denoised_fn: Optional[Traceable], cond_fn: Optional[Traceable], *, num_run: int,
            prediction: str, variance: str, clip_denoised: bool) -> Array:
  key_start, key_steps = jax.random.split(rng)
  t_start = jnp.full((x0.shape[0],), num_run - 1, jnp.int32)
  x = diffusion.q_sample(schedule, x0, t_start,
                         jax.random.normal(key_start, x0.shape, x0.dtype))
  return ancestral_chain(unwrap(model), schedule, timestep_map, x, key_steps,
                         num_steps=num_run, prediction=prediction, variance=variance,
                         clip_denoised=clip_denoised, denoised_fn=unwrap(denoised_fn),
                         cond_fn=unwrap(cond_fn))


def sdedit(model_fn: ModelFn, schedule: Schedule, rng: Array, x0: Array, *, strength: float,
           num_steps: Optional[int] = None, prediction: str = "eps",
           variance: str = "fixed_small", clip_denoised: bool = True,
           denoised_fn: Optional[Callable[[Array], Array]] = None,
           cond_fn: Optional[ModelFn] = None,
           timesteps: Optional[Sequence[int]] = None) -> Array:
  """SDEdit (Meng et al. 2022, Algorithm 1) with the discrete VP chain of Ho et al. 2020.

  Of the N-step chain, the last n = ceil(strength * N) steps are run: the guide image
  is noised to x_{n-1} ~ q(x_{n-1} | x_0 = x0) (Ho et al. eq. 4), then denoised by
  ancestral sampling (:func:`ddpm`'s step). Small strength stays close to x0 (faithful),
  strength 1 starts from (almost) pure noise (realistic). One ``lax.scan`` in one jit.

  Args:
    model_fn: ``model_fn(x_t, t) -> output``; ``t`` is int32 [B], original timesteps.
    schedule: the model's schedule (T steps).
    rng: a jax.random key.
    x0: guide images [B, ...].
    strength: t_0 of Meng et al., in (0, 1].
    num_steps: None for all T steps, or N for the respaced chain ``"ddimN"``.
    prediction, variance, clip_denoised, denoised_fn, cond_fn, timesteps: as in
      :func:`ddpm`.

  Raises:
    ValueError: on strength outside (0, 1], num_steps outside [1, T], an unknown
      prediction or variance, or x0 without a batch axis.
  """
  _steps.check_options(prediction=prediction, variance=variance)
  if isinstance(strength, bool) or not isinstance(strength, (int, float)) \
      or not 0.0 < strength <= 1.0:
    raise ValueError(f"strength must be a float in (0, 1], got {strength!r}")
  x0 = jnp.asarray(x0)
  _steps.check_shape(x0.shape)
  _steps.check_key(rng)
  chain_schedule, timestep_map = _steps.respaced(schedule, num_steps, timesteps)
  num_run = max(1, math.ceil(strength * timestep_map.shape[0]))
  return _sdedit(traceable(model_fn, name="model_fn"), chain_schedule, timestep_map, rng, x0,
                 traceable(denoised_fn, name="denoised_fn", optional=True),
                 traceable(cond_fn, name="cond_fn", optional=True), num_run=num_run,
                 prediction=prediction, variance=variance, clip_denoised=bool(clip_denoised))
