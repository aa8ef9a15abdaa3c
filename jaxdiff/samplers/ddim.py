"""Denoising diffusion implicit models (Song et al. 2021) and their inversion."""

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


def _alpha_bar(schedule: Schedule, timesteps: Array, k: Array) -> Array:
  """alpha-bar at subsequence position k, with alpha-bar = 1 for k = -1 (clean data)."""
  return jnp.where(k >= 0, schedule.alphas_cumprod[timesteps[jnp.maximum(k, 0)]], 1.0)


def ddim_update(x0: Array, eps: Array, alpha_bar_to: Array, sigma: Array,
                noise: Array) -> Array:
  """sqrt(a) x_0 + sqrt(1 - a - sigma^2) eps + sigma z; Song et al. 2021, eq. 12.

  The direction coefficient is clamped at 0 (it would be imaginary only for eta > 1).
  """
  direction = jnp.sqrt(jnp.maximum(1.0 - alpha_bar_to - sigma ** 2, 0.0))
  return jnp.sqrt(alpha_bar_to) * x0 + direction * eps + sigma * noise


def _x0_eps(model_fn: ModelFn, schedule: Schedule, x: Array, t: Array, *, prediction: str,
            variance: str, clip_denoised: bool, denoised_fn: Optional[Callable[[Array], Array]],
            cond_fn: Optional[ModelFn]) -> tuple[Array, Array]:
  """The model's (x_0, eps) at (x, t), with classifier guidance applied to eps."""
  x0, eps = diffusion.predict_x0_eps(schedule, model_fn(x, t), x, t, prediction=prediction,
                                     variance=variance, clip_denoised=clip_denoised,
                                     denoised_fn=denoised_fn)
  if cond_fn is not None:
    eps = guidance.condition_eps(schedule, eps, t, cond_fn(x, t))
    x0 = diffusion.predict_x0_from_eps(schedule, x, t, eps)
  return x0, eps


def ddim_step(model_fn: ModelFn, schedule: Schedule, timesteps: Array, eta: Array, x: Array,
              k: Array, key: Array, **x0_eps_kw: Any) -> Array:
  """One generalized reverse step from timestep tau_k to tau_{k-1}; Song et al. 2021, eq. 12.

  sigma = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev) (eq. 16): eta = 0 is
  deterministic DDIM, eta = 1 the DDPM posterior variance on this subsequence. At k = 0,
  a_prev = 1 and the step returns the predicted x_0.
  """
  t = jnp.full((x.shape[0],), timesteps[k], jnp.int32)
  x0, eps = _x0_eps(model_fn, schedule, x, t, **x0_eps_kw)
  a_t = _alpha_bar(schedule, timesteps, k)
  a_prev = _alpha_bar(schedule, timesteps, k - 1)
  sigma = eta * jnp.sqrt((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev))
  return ddim_update(x0, eps, a_prev, sigma.astype(x.dtype),
                     jax.random.normal(key, x.shape, x.dtype))


def ddim_inverse_step(model_fn: ModelFn, schedule: Schedule, timesteps: Array, x: Array,
                      k: Array, *, prediction: str, variance: str,
                      fixed_point_iterations: int = 0) -> Array:
  """Inverts the eta = 0 step tau_k -> tau_{k-1}: maps x at tau_{k-1} to x at tau_k.

  Solving Song et al. 2021, eq. 12 (sigma = 0) for its input gives x_{tau_k} =
  sqrt(a_t) x_0 + sqrt(1 - a_t) eps with x_0 = (x - sqrt(1 - a_prev) eps) / sqrt(a_prev)
  and eps = eps_theta(x_{tau_k}, tau_k), which depends on the unknown output. The first
  guess evaluates eps at the current state, eps_theta(x_{tau_{k-1}}, tau_k) (the reverse
  Euler step of the DDIM ODE, Sec. 4.3, eq. 14); each fixed-point iteration re-evaluates
  eps at the latest guess, converging to the exact inverse for a smooth eps_theta.
  """
  t = jnp.full((x.shape[0],), timesteps[k], jnp.int32)
  a_prev = _alpha_bar(schedule, timesteps, k - 1)
  a_t = _alpha_bar(schedule, timesteps, k)
  zero = jnp.zeros((), x.dtype)

  def solve(_: Any, guess: Array) -> Array:
    _, eps = diffusion.predict_x0_eps(schedule, model_fn(guess, t), guess, t,
                                      prediction=prediction, variance=variance,
                                      clip_denoised=False)
    x0 = (x - jnp.sqrt(1.0 - a_prev) * eps) / jnp.sqrt(a_prev)
    return ddim_update(x0, eps, a_t, zero, zero)

  return jax.lax.fori_loop(0, fixed_point_iterations + 1, solve, x)


@functools.partial(jax.jit, static_argnames=("shape", "prediction", "variance", "clip_denoised",
                                             "trajectory_stride"))
def _ddim(model: Traceable, schedule: Schedule, timesteps: Array, eta: Array, rng: Array,
          x_T: Optional[Array], denoised_fn: Optional[Traceable], cond_fn: Optional[Traceable],
          *, shape: tuple[int, ...], prediction: str, variance: str, clip_denoised: bool,
          trajectory_stride: Optional[int]) -> Array | tuple[Array, Array]:
  key_T, key_steps = jax.random.split(rng)
  if x_T is None:
    x_T = jax.random.normal(key_T, shape, schedule.betas.dtype)
  num_steps = timesteps.shape[0]
  step = functools.partial(ddim_step, unwrap(model), schedule, timesteps, eta,
                           prediction=prediction, variance=variance,
                           clip_denoised=clip_denoised, denoised_fn=unwrap(denoised_fn),
                           cond_fn=unwrap(cond_fn))
  xs = (jnp.arange(num_steps - 1, -1, -1, dtype=jnp.int32),
        jax.random.split(key_steps, num_steps))
  return _chain.run_chain(lambda x, inp: step(x, *inp), x_T, xs,
                          trajectory_stride=trajectory_stride)


def _check_eta(eta: float | Array) -> Array:
  if not isinstance(eta, jax.core.Tracer):
    value = float(eta)
    if not value >= 0.0:
      raise ValueError(f"eta must be >= 0 (0 = deterministic DDIM, 1 = DDPM-like), got {eta!r}")
  return jnp.asarray(eta)


def ddim(model_fn: ModelFn, schedule: Schedule, rng: Optional[Array], shape: Sequence[int], *,
         num_steps: int = 50, eta: float | Array = 0.0,
         timesteps: Optional[Sequence[int]] = None, prediction: str = "eps",
         clip_denoised: bool = True, x_T: Optional[Array] = None,
         variance: str = "fixed_small",
         denoised_fn: Optional[Callable[[Array], Array]] = None,
         cond_fn: Optional[ModelFn] = None, return_trajectory: bool = False,
         trajectory_stride: int = 1) -> Array | tuple[Array, Array]:
  """DDIM sampling, Song et al. 2021, eq. 12 with sigma of eq. 16, on a timestep subsequence.

  For tau_{S-1} > ... > tau_0 the chain is x_{tau_{k-1}} = sqrt(a_prev) x0_hat +
  sqrt(1 - a_prev - sigma^2) eps_hat + sigma z, ending at x0_hat of tau_0. One
  ``lax.scan`` inside one jit; ``eta`` is traced, so changing it does not recompile.

  Args:
    model_fn: ``model_fn(x_t, t) -> output``; ``t`` is int32 [B], original timesteps.
    schedule: the schedule the model was trained with (T steps); may be traced.
    rng: a jax.random key; may be None when ``x_T`` is given and eta == 0.
    shape: [B, ...] of the samples.
    num_steps: S evenly strided steps, ``space_timesteps(T, "ddimS")``; ignored when
      ``timesteps`` is given.
    eta: >= 0; 0 is deterministic given x_T, 1 matches the DDPM posterior variance.
    timesteps: strictly ascending original timesteps to visit instead.
    prediction: "eps" | "x0" | "v" | "mean".
    clip_denoised: clip the predicted x_0 to [-1, 1] (eps is recomputed from it).
    x_T: start from this noise [shape] (shard it over the batch axis to run sharded).
    variance: only used to split a learned-variance model's 2C output channels.
    denoised_fn: map applied to the predicted x_0 before clipping (dynamic thresholding).
    cond_fn: classifier guidance term (Dhariwal & Nichol 2021, Algorithm 2).
    return_trajectory: also return x_T, the state after every ``trajectory_stride``-th
      step, and x_0: ``[1 + ceil(S / stride), *shape]``.
    trajectory_stride: see ``return_trajectory``.

  Raises:
    ValueError: on eta < 0, num_steps outside [1, T], bad timesteps, an unknown
      prediction or variance, a bad shape or x_T, or a missing rng.
  """
  _steps.check_options(prediction=prediction, variance=variance)
  shape = _steps.check_shape(shape)
  _steps.check_array("x_T", x_T, shape)
  eta = _check_eta(eta)
  if rng is None:
    if x_T is None or isinstance(eta, jax.core.Tracer) or float(eta) != 0.0:
      raise ValueError("rng may be None only when x_T is given and eta == 0")
    rng = jax.random.PRNGKey(0)
  _steps.check_key(rng)
  stride = _chain.check_stride(trajectory_stride) if return_trajectory else None
  steps = _steps.strided_timesteps(schedule.num_timesteps, num_steps=num_steps,
                                   timesteps=timesteps)
  return _ddim(traceable(model_fn, name="model_fn"), schedule, steps, eta, rng, x_T,
               traceable(denoised_fn, name="denoised_fn", optional=True),
               traceable(cond_fn, name="cond_fn", optional=True), shape=shape,
               prediction=prediction, variance=variance, clip_denoised=bool(clip_denoised),
               trajectory_stride=stride)


@functools.partial(jax.jit, static_argnames=("prediction", "variance", "fixed_point_iterations"))
def _ddim_invert(model: Traceable, schedule: Schedule, timesteps: Array, x0: Array, *,
                 prediction: str, variance: str, fixed_point_iterations: int) -> Array:
  step = functools.partial(ddim_inverse_step, unwrap(model), schedule, timesteps,
                           prediction=prediction, variance=variance,
                           fixed_point_iterations=fixed_point_iterations)
  return _chain.run_chain(step, x0, jnp.arange(timesteps.shape[0], dtype=jnp.int32))


def ddim_invert(model_fn: ModelFn, schedule: Schedule, x0: Array, *, num_steps: int = 50,
                timesteps: Optional[Sequence[int]] = None, prediction: str = "eps",
                variance: str = "fixed_small", fixed_point_iterations: int = 0) -> Array:
  """DDIM inversion: the deterministic map x_0 -> x_T inverting eta = 0 :func:`ddim`.

  Runs :func:`ddim_inverse_step` for k = 0, ..., S-1 on the same subsequence that
  ``ddim(..., num_steps=, timesteps=)`` uses (Song et al. 2021, Sec. 4.3; Dhariwal &
  Nichol 2021, App. F). With ``fixed_point_iterations=0`` (one model call per step, the
  usual inversion) it is exact up to the first-order error of evaluating eps at the
  current instead of the next state; each iteration re-evaluates eps at the new state
  (one more model call per step), so that ``ddim(x_T=ddim_invert(x0), eta=0,
  clip_denoised=False)`` reconstructs x0 ever more closely when eps_theta is smooth.

  Raises:
    ValueError: on num_steps outside [1, T], bad timesteps, an unknown prediction or
      variance, fixed_point_iterations < 0, or an x0 without a batch axis.
  """
  if isinstance(fixed_point_iterations, bool) or not isinstance(fixed_point_iterations, int) \
      or fixed_point_iterations < 0:
    raise ValueError(f"fixed_point_iterations must be an int >= 0, got "
                     f"{fixed_point_iterations!r}")
  _steps.check_options(prediction=prediction, variance=variance)
  x0 = jnp.asarray(x0)
  _steps.check_shape(x0.shape)
  steps = _steps.strided_timesteps(schedule.num_timesteps, num_steps=num_steps,
                                   timesteps=timesteps)
  return _ddim_invert(traceable(model_fn, name="model_fn"), schedule, steps, x0,
                      prediction=prediction, variance=variance,
                      fixed_point_iterations=fixed_point_iterations)
