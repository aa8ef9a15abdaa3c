"""Langevin dynamics and NCSN's annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1)."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from jaxdiff import sde as sde_lib

Array = jax.Array


def langevin_update(x: Array, score: Array, step_size: Array, noise: Array) -> tuple[Array, Array]:
  """One Langevin step x + delta score + sqrt(2 delta) z (Song & Ermon 2019, eq. 4 with
  delta = epsilon / 2); step_size delta is per example, shape [B]. Returns (x_new, x_mean)."""
  delta = sde_lib.broadcast_to_x(step_size, x)
  x_mean = x + delta * score
  return x_mean + jnp.sqrt(2.0 * delta) * noise, x_mean


@functools.partial(jax.jit, static_argnames=("score_fn", "shape", "n_steps_each", "denoise"))
def annealed_langevin_dynamics(score_fn: Callable[[Array, Array], Array], sigmas: Array,
                               rng: Array, shape: tuple[int, ...], *, n_steps_each: int = 100,
                               step_lr: float = 2e-5, x_init: Array | None = None,
                               denoise: bool = False) -> tuple[Array, int]:
  """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) with a noise-conditional
  score_fn(x, sigma) (sigma of shape [B]): for sigma_1 > ... > sigma_L (the ladder is sorted
  descending), n_steps_each Langevin steps with epsilon_i = step_lr sigma_i^2 / sigma_L^2.

  A one-level ladder is plain Langevin dynamics with epsilon = step_lr. x_init defaults to
  N(0, sigma_1^2 I); denoise=True adds the final step x + sigma_L^2 s(x, sigma_L)
  (Jolicoeur-Martineau et al. 2021). One lax.scan over the L * n_steps_each steps.
  Returns (samples, number of score evaluations).
  """
  sigmas = jnp.sort(jnp.ravel(jnp.asarray(sigmas)))[::-1]
  if n_steps_each < 1:
    raise ValueError(f"n_steps_each must be >= 1, got {n_steps_each}")
  rng_init, rng_steps = jax.random.split(rng)
  if x_init is None:
    x_init = sigmas[0] * jax.random.normal(rng_init, shape)
  elif tuple(x_init.shape) != tuple(shape):
    raise ValueError(f"x_init has shape {x_init.shape}, expected {tuple(shape)}")
  sde_lib.check_score_fn(score_fn, x_init, jnp.ones((shape[0],), x_init.dtype))
  level_sigmas = jnp.repeat(sigmas, n_steps_each).astype(x_init.dtype)
  keys = jax.random.split(rng_steps, level_sigmas.shape[0])

  def step(x: Array, inputs: tuple[Array, Array]) -> tuple[Array, None]:
    sigma, key = inputs
    sigma_b = jnp.full((shape[0],), sigma)
    delta = 0.5 * step_lr * (sigma / sigmas[-1]) ** 2
    x, _ = langevin_update(x, score_fn(x, sigma_b), jnp.full((shape[0],), delta),
                           jax.random.normal(key, shape, x.dtype))
    return x, None

  x, _ = jax.lax.scan(step, x_init, (level_sigmas, keys))
  nfe = level_sigmas.shape[0]
  if denoise:
    sigma_last = jnp.full((shape[0],), sigmas[-1], x.dtype)
    x = x + sde_lib.broadcast_to_x(sigma_last**2, x) * score_fn(x, sigma_last)
    nfe += 1
  return x, nfe
