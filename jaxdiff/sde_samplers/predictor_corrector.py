"""Predictor-corrector sampling of the reverse SDE (Song et al. 2021, Algorithm 1 / App. G).

Time grid (score_sde's): N = sde.N points t_i = linspace(1, eps, N), each followed by a step
dt = -1/N. With eps = 1/N (the default 1e-3 with N = 1000) the points are t_i = (N - i) / N,
exactly the times of the discrete steps N - 1, ..., 0 (`jaxdiff.sde.continuous_to_discrete`),
so the reverse-diffusion predictor walks the discretized (for VP: DDPM's) chain.

Predictors ("euler_maruyama", "reverse_diffusion", "none") and correctors ("langevin", "ald",
"none") are `(key, x, t, dt, reverse_sde, snr) -> (x, x_mean)` functions of one step.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import sde as sde_lib
from jaxdiff.sde_samplers import common
from jaxdiff.sde_samplers.langevin import langevin_update

Array = jax.Array


def euler_maruyama_predictor(key: Array, x: Array, t: Array, dt: float, rsde: Any,
                             snr: float) -> tuple[Array, Array]:
  """x_mean = x + f_rev(x, t) dt, x = x_mean + g sqrt(|dt|) z (Song et al. 2021, App. G)."""
  del snr
  drift, diffusion = rsde.sde(x, t)
  x_mean = x + drift * dt
  noise = jax.random.normal(key, x.shape, x.dtype)
  return x_mean + sde_lib.broadcast_to_x(diffusion, x) * np.sqrt(-dt) * noise, x_mean


def reverse_diffusion_predictor(key: Array, x: Array, t: Array, dt: float, rsde: Any,
                                snr: float) -> tuple[Array, Array]:
  """x_mean = x - (f_i - G_i^2 score), x = x_mean + G_i z (Song et al. 2021, eq. 47)."""
  del dt, snr
  f, g = rsde.discretize(x, t)
  x_mean = x - f
  noise = jax.random.normal(key, x.shape, x.dtype)
  return x_mean + sde_lib.broadcast_to_x(g, x) * noise, x_mean


def _langevin_alpha(rsde: Any, t: Array) -> Array:
  """alpha_i = 1 - beta_i of the discretized VP chain, 1 otherwise (Song et al. 2021, Alg. 4-5)."""
  if isinstance(rsde.forward, sde_lib.VPSDE):
    index = sde_lib.continuous_to_discrete(t, rsde.N)
    return 1.0 - rsde.forward.discrete_betas(index, t.dtype)
  return jnp.ones_like(t)


def langevin_corrector(key: Array, x: Array, t: Array, dt: float, rsde: Any,
                       snr: float) -> tuple[Array, Array]:
  """Langevin corrector with signal-to-noise ratio r (Song et al. 2021, Algorithm 5):
  step = 2 alpha_i (r ||z|| / ||score||)^2, with the norms averaged over the batch as in
  score_sde (per-example norms make the step heavy-tailed in low dimension)."""
  del dt
  score = rsde.score_fn(x, t)
  noise = jax.random.normal(key, x.shape, x.dtype)
  grad_norm = jnp.mean(jnp.linalg.norm(jnp.reshape(score, (x.shape[0], -1)), axis=-1))
  noise_norm = jnp.mean(jnp.linalg.norm(jnp.reshape(noise, (x.shape[0], -1)), axis=-1))
  step = 2.0 * _langevin_alpha(rsde, t) * (snr * noise_norm / grad_norm) ** 2
  return langevin_update(x, score, step, noise)


def ald_corrector(key: Array, x: Array, t: Array, dt: float, rsde: Any,
                  snr: float) -> tuple[Array, Array]:
  """NCSN's annealed Langevin step as a corrector: step = 2 alpha_i (r sigma_t)^2
  (Song et al. 2021, Algorithm 4; Song & Ermon 2019's epsilon proportional to sigma^2)."""
  del dt
  _, sigma = rsde.forward.marginal_coeffs(t)
  step = 2.0 * _langevin_alpha(rsde, t) * (snr * sigma) ** 2
  return langevin_update(x, rsde.score_fn(x, t), step, jax.random.normal(key, x.shape, x.dtype))


def _identity(key: Array, x: Array, t: Array, dt: float, rsde: Any,
              snr: float) -> tuple[Array, Array]:
  del key, t, dt, rsde, snr
  return x, x


PREDICTORS = {"euler_maruyama": euler_maruyama_predictor,
              "reverse_diffusion": reverse_diffusion_predictor, "none": _identity}
CORRECTORS = {"langevin": langevin_corrector, "ald": ald_corrector, "none": _identity}


@functools.partial(jax.jit, static_argnames=("score_fn", "shape", "predictor", "corrector",
                                             "n_steps", "probability_flow", "denoise", "eps"))
def pc_sampler(score_fn: sde_lib.ScoreFn, sde: Any, rng: Array, shape: tuple[int, ...], *,
               predictor: str = "reverse_diffusion", corrector: str = "langevin",
               snr: float = 0.16, n_steps: int = 1, probability_flow: bool = False,
               denoise: bool = True, eps: float = 1e-3,
               x_T: Array | None = None) -> tuple[Array, int]:
  """Predictor-corrector sampler (Song et al. 2021, Algorithm 1): at each of the N = sde.N
  times, n_steps corrector steps then one predictor step; one lax.scan over the N steps.

  predictor="none" with corrector="ald" on a VESDE is NCSN's annealed Langevin dynamics
  driven by the SDE's noise levels. denoise=True returns the last predictor mean (no noise).
  Returns (samples, number of score evaluations).
  """
  common.check_name(predictor, PREDICTORS, "predictor")
  common.check_name(corrector, CORRECTORS, "corrector")
  if n_steps < 0:
    raise ValueError(f"n_steps (corrector steps per time) must be >= 0, got {n_steps}")
  common.validate(score_fn, shape, eps)
  predictor_fn, corrector_fn = PREDICTORS[predictor], CORRECTORS[corrector]
  rsde = sde.reverse(score_fn, probability_flow=probability_flow)
  rng_init, rng_steps = jax.random.split(rng)
  x = common.initial_state(sde, rng_init, shape, x_T)
  dt = -1.0 / sde.N
  times = jnp.linspace(1.0, eps, sde.N, dtype=x.dtype)
  keys = jax.random.split(rng_steps, sde.N)

  def step(carry: tuple[Array, Array], inputs: tuple[Array, Array]) -> tuple[Any, None]:
    x, _ = carry
    t, key = inputs
    t_b = common.batch_time(t, x)
    corrector_keys = jax.random.split(key, n_steps + 1)
    for k in corrector_keys[1:]:
      x, _ = corrector_fn(k, x, t_b, dt, rsde, snr)
    return predictor_fn(corrector_keys[0], x, t_b, dt, rsde, snr), None

  (x, x_mean), _ = jax.lax.scan(step, (x, x), (times, keys))
  per_step = (predictor != "none") + (corrector != "none") * n_steps
  return (x_mean if denoise else x), sde.N * per_step
