"""DPM-Solver++(2M), the multistep second-order solver of the diffusion ODE in data prediction
(Lu, Zhou, Bao, Chen, Li & Zhu 2022b, "DPM-Solver++", Algorithm 2), for any SDE whose kernel is
x_t = alpha_t x0 + sigma_t z (VP, sub-VP, VE), with x0_theta from the score by Tweedie.

With lambda_i = log(alpha_i / sigma_i), h_i = lambda_i - lambda_{i-1}, r_i = h_{i-1} / h_i:

    D_i = (1 + 1 / (2 r_i)) x0_theta(x_{i-1}, t_{i-1}) - 1 / (2 r_i) x0_theta(x_{i-2}, t_{i-2})
    x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (exp(-h_i) - 1) D_i

and the first step is first order (D_1 = x0_theta(x_0, t_0), DPM-Solver++1 = DDIM). One score
evaluation per step. Time grids from t_0 = 1 to t_M = eps (Lu et al. 2022a, Sec. 3.3 / App. D):
"logSNR" (uniform in lambda; the recommended one), "time_uniform", "time_quadratic"
(sqrt(t) uniform).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff import sde as sde_lib
from jaxdiff.sde_samplers import common

Array = jax.Array

TIME_GRIDS = ("logSNR", "time_uniform", "time_quadratic")


def dpm_time_grid(sde: Any, num_steps: int, *, eps: float = 1e-3,
                  kind: str = "logSNR") -> Array:
  """num_steps + 1 decreasing times from 1 to eps (Lu et al. 2022a, App. D.1)."""
  common.check_name(kind, TIME_GRIDS, "time grid")
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  sde_lib.check_eps(eps)
  if kind == "logSNR":
    ends = sde.log_snr(jnp.array([1.0, eps]))
    return sde.t_from_log_snr(jnp.linspace(ends[0], ends[1], num_steps + 1))
  if kind == "time_uniform":
    return jnp.linspace(1.0, eps, num_steps + 1)
  return jnp.linspace(1.0, jnp.sqrt(eps), num_steps + 1) ** 2


@functools.partial(jax.jit, static_argnames=("score_fn", "shape", "num_steps", "eps",
                                             "time_grid"))
def dpm_solver_pp_2m(score_fn: sde_lib.ScoreFn, sde: Any, rng: Array, shape: tuple[int, ...], *,
                     num_steps: int = 20, eps: float = 1e-3, time_grid: str = "logSNR",
                     x_T: Array | None = None) -> tuple[Array, int]:
  """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2) from x_T ~ p_1 to t = eps in num_steps
  steps; one lax.scan. Returns (samples at eps, number of score evaluations = num_steps)."""
  common.validate(score_fn, shape, eps)
  times = dpm_time_grid(sde, num_steps, eps=eps, kind=time_grid)
  x = common.initial_state(sde, rng, shape, x_T)
  times = times.astype(x.dtype)
  x0_fn = common.data_prediction(score_fn, sde)
  lam = sde.log_snr(times)
  alphas, sigmas = sde.marginal_coeffs(times)
  h = lam[1:] - lam[:-1]
  h_prev = jnp.concatenate([h[:1], h[:-1]])
  first = jnp.arange(num_steps) == 0
  c = jnp.where(first, 0.0, h / (2.0 * h_prev))  # 1 / (2 r_i); 0 on the first-order step

  def step(carry: tuple[Array, Array], i: Array) -> tuple[tuple[Array, Array], None]:
    x, x0_prev = carry
    x0 = x0_fn(x, common.batch_time(times[i], x))
    d = (1.0 + c[i]) * x0 - c[i] * x0_prev
    x = (sigmas[i + 1] / sigmas[i]) * x - alphas[i + 1] * jnp.expm1(-h[i]) * d
    return (x, x0), None

  (x, _), _ = jax.lax.scan(step, (x, jnp.zeros_like(x)), jnp.arange(num_steps))
  return x, num_steps
