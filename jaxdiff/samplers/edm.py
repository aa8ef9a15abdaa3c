"""EDM's Heun sampler (Karras, Aittala, Aila & Laine 2022, Algorithms 1 and 2) on any process.

For a kernel x_t = alpha_t x_0 + sigma_t eps, the scaled state x_hat = x / alpha_t at the
noise level sigma_hat = sigma_t / alpha_t = exp(-lambda / 2) follows EDM's ODE (Karras et al.
2022, eq. 1 and Table 1 with s(t) = alpha_t):

    d x_hat / d sigma_hat = (x_hat - D(x_hat; sigma_hat)) / sigma_hat,

with the denoiser D = x0_hat of `jaxdiff.denoisers`. The default grid is eq. 5 (rho = 7)
between sigma_hat(t_max) and sigma_hat(t_min), then sigma_hat = 0: N - 1 Heun steps and a
final Euler step, 2N - 1 evaluations. With S_churn > 0 it is Algorithm 2: each level with
S_tmin <= sigma_hat <= S_tmax is first raised to sigma_hat (1 + gamma), gamma =
min(S_churn / N, sqrt(2) - 1), by fresh noise of scale S_noise.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from jaxdiff.samplers.spec import SamplerSpec, StepInput, batch_time, scalar

Array = Any


def _slope(denoiser: Any, x_hat: Array, time: Array, sigma_hat: Array) -> Array:
  """(x_hat - D(x_hat; sigma_hat)) / sigma_hat, D evaluated at the process time ``time``."""
  alpha = scalar(denoiser.process.alpha(time), x_hat)
  x0 = denoiser(alpha * x_hat, batch_time(time, x_hat)).x0
  return (x_hat - x0) / scalar(sigma_hat, x_hat)


def edm_step(denoiser: Any, x: Array, state: Array, inp: StepInput, key: Array,
             opts: Mapping[str, Any]) -> tuple[Array, Array]:
  """One step of Algorithm 2 (Algorithm 1 when S_churn = 0) from s to t, in x's own scale."""
  s, t = inp.s, inp.t
  sigma_hat, sigma_next = s.sigma / s.alpha, t.sigma / t.alpha
  x_hat = x / scalar(s.alpha, x)
  in_range = (sigma_hat >= opts["s_tmin"]) & (sigma_hat <= opts["s_tmax"])
  gamma = jnp.where(in_range, jnp.minimum(opts["s_churn"] / opts["num_steps"],
                                          jnp.sqrt(2.0) - 1.0), 0.0)
  raised = sigma_hat * (1.0 + gamma)
  time = jnp.where(gamma > 0, denoiser.process.t_from_log_snr(-2.0 * jnp.log(raised)), s.t)
  noise = jax.random.normal(key, x.shape, x.dtype)
  # sqrt(raised^2 - sigma_hat^2), written so that gamma = 0 gives exactly 0.
  churn = sigma_hat * jnp.sqrt(gamma * (2.0 + gamma)) * opts["s_noise"]
  x_hat = x_hat + scalar(churn, x) * noise
  d = _slope(denoiser, x_hat, time, raised)
  euler = x_hat + scalar(sigma_next - raised, x) * d

  def heun(_: Any) -> Array:
    d_next = _slope(denoiser, euler, t.t, sigma_next)
    return x_hat + scalar(sigma_next - raised, x) * 0.5 * (d + d_next)

  x_hat = jax.lax.cond(t.sigma > 0, heun, lambda _: euler, None)
  return scalar(t.alpha, x) * x_hat, state


def _check_options(process: Any, opts: Mapping[str, Any], num_steps: int) -> None:
  del process, num_steps
  for name in ("rho", "s_noise"):
    if name in opts and not float(opts[name]) > 0:
      raise ValueError(f"{name} must be positive, got {float(opts[name])}")
  if "s_churn" in opts and not float(opts["s_churn"]) >= 0:
    raise ValueError(f"s_churn must be >= 0, got {float(opts['s_churn'])}")


EDM_HEUN = SamplerSpec(
    name="edm_heun", step=edm_step, grid="karras",
    continuous_grid="karras", own_grid=True, default_steps=18, continuous_steps=18, stochastic=True,
    noise_option="s_churn", validate=_check_options,
    options={"rho": 7.0, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": float("inf"),
             "s_noise": 1.0},
    nfe=lambda steps, opts: 2 * steps - 1,
    summary="EDM Heun, Karras et al. 2022 Algorithm 1 (S_churn > 0: Algorithm 2)")
