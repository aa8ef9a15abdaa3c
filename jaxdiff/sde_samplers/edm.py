"""EDM's deterministic Heun sampler (Karras, Aittala, Aila & Laine 2022, Algorithm 1).

For a kernel x_t = alpha_t x0 + sigma_t z, the scaled state x_hat = x / alpha_t at noise level
sigma_hat = sigma_t / alpha_t = exp(-lambda_t) follows EDM's ODE (Karras et al. 2022, eq. 1 /
Table 1 with s(t) = alpha_t):

    d x_hat / d sigma_hat = (x_hat - D(x_hat; sigma_hat)) / sigma_hat,

with the denoiser D(x_hat; sigma_hat) = x0_theta(alpha_t x_hat, t) from the score (Tweedie).
Noise levels (eq. 5, rho = 7): sigma_i = (s_max^{1/rho} + i / (N - 1) (s_min^{1/rho} -
s_max^{1/rho}))^rho for i < N, sigma_N = 0, with s_max = sigma_hat(1), s_min = sigma_hat(eps)
by default; each level's time is sde.t_from_log_snr(-log sigma_i). N - 1 Heun steps and a
final Euler step to sigma = 0 (which returns D): 2N - 1 score evaluations.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff import sde as sde_lib
from jaxdiff.sde_samplers import common

Array = jax.Array


def edm_sigmas(sigma_min: Array | float, sigma_max: Array | float, num_steps: int, *,
               rho: float = 7.0) -> Array:
  """The N noise levels of Karras et al. 2022, eq. 5 (without the final 0), decreasing."""
  if num_steps < 2:
    raise ValueError(f"num_steps must be >= 2, got {num_steps}")
  if not rho > 0:
    raise ValueError(f"rho must be positive, got {rho}")
  frac = jnp.linspace(0.0, 1.0, num_steps)
  inv_max, inv_min = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
  return (inv_max + frac * (inv_min - inv_max)) ** rho


@functools.partial(jax.jit, static_argnames=("score_fn", "shape", "num_steps", "eps", "rho"))
def edm_heun(score_fn: sde_lib.ScoreFn, sde: Any, rng: Array, shape: tuple[int, ...], *,
             num_steps: int = 18, eps: float = 1e-3, rho: float = 7.0,
             x_T: Array | None = None) -> tuple[Array, int]:
  """EDM Heun sampler (Karras et al. 2022, Algorithm 1) over the rho-spaced levels between
  sigma_hat(1) and sigma_hat(eps); one lax.scan over the N - 1 Heun steps, then the Euler step
  to sigma = 0. Returns (denoised samples, number of score evaluations = 2N - 1)."""
  common.validate(score_fn, shape, eps)
  x = common.initial_state(sde, rng, shape, x_T)
  bounds = jnp.exp(-sde.log_snr(jnp.array([eps, 1.0], x.dtype)))
  sigmas = edm_sigmas(bounds[0], bounds[1], num_steps, rho=rho).astype(x.dtype)
  times = sde.t_from_log_snr(-jnp.log(sigmas))
  x0_fn = common.data_prediction(score_fn, sde)

  def denoise(x_hat: Array, i: Array) -> Array:
    t = common.batch_time(times[i], x_hat)
    alpha, _ = sde.marginal_coeffs(t)
    return x0_fn(sde_lib.broadcast_to_x(alpha, x_hat) * x_hat, t)

  def step(x_hat: Array, i: Array) -> tuple[Array, None]:
    d = (x_hat - denoise(x_hat, i)) / sigmas[i]
    x_euler = x_hat + (sigmas[i + 1] - sigmas[i]) * d
    d_next = (x_euler - denoise(x_euler, i + 1)) / sigmas[i + 1]
    return x_hat + (sigmas[i + 1] - sigmas[i]) * 0.5 * (d + d_next), None

  alpha_1, _ = sde.marginal_coeffs(jnp.ones((shape[0],), x.dtype))
  x_hat, _ = jax.lax.scan(step, x / sde_lib.broadcast_to_x(alpha_1, x),
                          jnp.arange(num_steps - 1))
  return denoise(x_hat, num_steps - 1), 2 * num_steps - 1
