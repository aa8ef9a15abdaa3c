"""Samplers of the categorical chains, each one ``lax.scan`` (the runner's `run_chain`).

- `d3pm_sample`: ancestral sampling of a D3PM model (Austin et al. 2021): x_T from the
  kernel's stationary distribution (all masks for the absorbing kernel), then T draws
  x_{t-1} ~ p(x_{t-1} | x_t) of the x0-parameterized reverse (eq. 4), the last one from the
  model's p(x_0 | x_1) (Austin et al.'s code takes its argmax instead; drawing keeps the
  samples those of the model whose bound is measured).
- `unmask_sample`: the ancestral sampler of masked diffusion (MD4, Shi et al. 2024, Alg. 2;
  MDLM, Sahoo et al. 2024) on N uniform steps from t = 1 to 0: from t to s < t each masked
  position is unmasked with probability (alpha_s - alpha_t) / (1 - alpha_t), to a draw from
  the model's prediction; unmasked positions stay. Positions of ``x_T`` given unmasked are
  kept (conditional generation, infilling).

Compilation: the model (a ``jax.tree_util.Partial(apply_fn, params)`` or any pytree
callable, wrapped in `jaxdiff.denoisers.Traceable`), the kernel and the masking schedule are
traced, so new parameters reuse the compiled chain; shapes, step counts and the trajectory
stride are static. Bad input is a one-line ValueError before anything compiles.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxdiff import denoisers
from jaxdiff.discrete import checks
from jaxdiff.discrete.kernels import Kernel
from jaxdiff.discrete.masked import MaskingSchedule
from jaxdiff.discrete.posterior import p_logits
from jaxdiff.samplers import checks as sampler_checks
from jaxdiff.samplers.runner import run_chain

Array = Any
ModelFn = Callable[[Array, Array], Array]


def _start(shape: Optional[Sequence[int]], x_T: Optional[Array], num_tokens: int
           ) -> tuple[int, ...]:
  """The batch shape of a request (from shape= or x_T=), x_T's tokens checked."""
  if shape is None and x_T is None:
    raise ValueError("give shape= or x_T= to take the shape from")
  shape = sampler_checks.check_shape(jnp.shape(x_T) if shape is None else shape)
  if x_T is not None:
    if tuple(jnp.shape(x_T)) != shape:
      raise ValueError(f"x_T has shape {tuple(jnp.shape(x_T))}, expected {shape}")
    checks.check_tokens("x_T", x_T, num_tokens)
  return shape


def _stride(trajectory_stride: Optional[int]) -> Optional[int]:
  if trajectory_stride is None:
    return None
  return sampler_checks.check_positive_int("trajectory_stride", trajectory_stride)


def _result(x: Array, frames: Optional[Array]) -> Array | tuple[Array, Array]:
  return x if frames is None else (x, frames)


@functools.partial(jax.jit, static_argnames=("shape", "trajectory_stride"))
def _d3pm_chain(model_fn: denoisers.Traceable, kernel: Kernel, rng: Array,
                x_T: Optional[Array], *, shape: tuple[int, ...],
                trajectory_stride: Optional[int]) -> tuple[Array, Optional[Array]]:
  init_key, chain_key = jax.random.split(rng)
  if x_T is None and kernel.kind == "absorbing":
    x_T = jnp.full(shape, kernel.absorbing_state, jnp.int32)
  elif x_T is None:
    x_T = jax.random.randint(init_key, shape, 0, kernel.num_classes)
  steps = kernel.num_timesteps

  def step(carry: tuple[Array], inputs: tuple[Array, Array]) -> tuple[Array]:
    t, key = inputs
    t = jnp.full(shape[:1], t, jnp.int32)
    logits = p_logits(kernel, model_fn(carry[0], t), carry[0], t)
    return (jax.random.categorical(key, logits, axis=-1).astype(jnp.int32),)

  xs = (jnp.arange(steps - 1, -1, -1), jax.random.split(chain_key, steps))
  (x,), frames = run_chain(step, (x_T.astype(jnp.int32),), xs,
                           trajectory_stride=trajectory_stride)
  return x, frames


def d3pm_sample(model_fn: ModelFn, kernel: Kernel, rng: Array,
                shape: Optional[Sequence[int]] = None, *, x_T: Optional[Array] = None,
                trajectory_stride: Optional[int] = None) -> Array | tuple[Array, Array]:
  """Ancestral samples (int32 tokens [B, ...]) of a D3PM model (module docstring).

  ``model_fn(x_t, t) -> logits [B, ..., K]`` of x_0 (t int32 [B]); ``x_T`` starts the chain
  instead of a draw of the stationary distribution; with ``trajectory_stride`` k also
  returns the states x_T, every k-th step and x_0 ([1 + ceil(T / k), B, ...]).
  """
  shape = _start(shape, x_T, kernel.num_classes)
  sampler_checks.check_key(rng)
  stride = _stride(trajectory_stride)
  checks.check_logits(model_fn, shape, jnp.int32, kernel.num_classes)
  x, frames = _d3pm_chain(denoisers.traceable(model_fn, name="model_fn"), kernel, rng, x_T,
                          shape=shape, trajectory_stride=stride)
  return _result(x, frames)


@functools.partial(jax.jit,
                   static_argnames=("shape", "num_classes", "num_steps", "trajectory_stride"))
def _unmask_chain(model_fn: denoisers.Traceable, schedule: MaskingSchedule, rng: Array,
                  x_T: Optional[Array], *, shape: tuple[int, ...], num_classes: int,
                  num_steps: int, trajectory_stride: Optional[int]
                  ) -> tuple[Array, Optional[Array]]:
  x = jnp.full(shape, num_classes, jnp.int32) if x_T is None else x_T.astype(jnp.int32)
  dtype = jnp.result_type(float)

  def step(carry: tuple[Array], inputs: tuple[Array, Array]) -> tuple[Array]:
    i, key = inputs
    t, s = i / num_steps, (i - 1) / num_steps
    draw_key, unmask_key = jax.random.split(key)
    x = carry[0]
    logits = model_fn(x, jnp.full(shape[:1], t, dtype))
    draw = jax.random.categorical(draw_key, logits, axis=-1).astype(jnp.int32)
    unmask = jax.random.uniform(unmask_key, shape, dtype) < schedule.discrete_weight(s, t)
    return (jnp.where((x == num_classes) & unmask, draw, x),)

  xs = (jnp.arange(num_steps, 0, -1).astype(dtype), jax.random.split(rng, num_steps))
  (x,), frames = run_chain(step, (x,), xs, trajectory_stride=trajectory_stride)
  return x, frames


def unmask_sample(model_fn: ModelFn, schedule: MaskingSchedule, rng: Array,
                  shape: Optional[Sequence[int]] = None, *, num_classes: int,
                  num_steps: int = 100, x_T: Optional[Array] = None,
                  trajectory_stride: Optional[int] = None) -> Array | tuple[Array, Array]:
  """Samples (int32 tokens [B, ...] in [0, K)) of a masked-diffusion model in ``num_steps``
  uniform steps (module docstring).

  ``model_fn(x_t, t) -> logits [B, ..., K]`` of x_0 (x_t tokens in [0, K], K the mask; t
  float [B] in (0, 1]); ``x_T``: a start in [0, K] whose unmasked tokens are kept (default
  all masks); ``trajectory_stride`` as in `d3pm_sample`.
  """
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
  shape = _start(shape, x_T, num_classes + 1)
  num_steps = sampler_checks.check_positive_int("num_steps", num_steps)
  sampler_checks.check_key(rng)
  stride = _stride(trajectory_stride)
  checks.check_logits(model_fn, shape, jnp.result_type(float), num_classes)
  x, frames = _unmask_chain(denoisers.traceable(model_fn, name="model_fn"), schedule, rng,
                            x_T, shape=shape, num_classes=num_classes, num_steps=num_steps,
                            trajectory_stride=stride)
  return _result(x, frames)
