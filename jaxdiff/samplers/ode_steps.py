"""Fixed-step solvers of the probability-flow ODE (Song et al. 2021, eq. 13) on any process.

For x_t = alpha_t x_0 + sigma_t eps the probability-flow ODE is

    dx / dt = f(t) x - g(t)^2 / 2 score(x, t) = alpha'(t) x0_hat(x, t) + sigma'(t) eps_hat(x, t),

with f = alpha' / alpha and g^2 = 2 sigma sigma' - 2 f sigma^2 of the forward SDE
(`jaxdiff.processes.GaussianProcess.sde`); the second form (the expected velocity of the
interpolant, Lipman et al. 2023, eq. 8 and 20; Albergo & Vanden-Eijnden 2023) equals the first
for every denoiser (x = alpha x0_hat + sigma eps_hat) and stays finite where alpha = 0, so on a
flow (`jaxdiff.processes.FlowProcess`) these are exactly the flow-matching ODE solvers, with
velocity eps_hat - x0_hat on the linear interpolant. They run from t_max to t_min on a grid
uniform in time (uniform in lambda on a discrete `Schedule`, whose interpolated coefficients
change fastest near t = 0): Euler (one evaluation per step), Heun (two; the trapezoidal
corrector of Karras et al. 2022, Algorithm 1, in t) and the explicit midpoint rule (two). They
return x at t_min. (The adaptive solve is `jaxdiff.sde_samplers.ode`.)
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

from jaxdiff.denoisers import velocity
from jaxdiff.samplers.spec import SamplerSpec, StepInput, batch_time, pair_inputs, scalar

Array = Any


def ode_inputs(process: Any, times: Array, opts: Mapping[str, Any]) -> StepInput:
  """Pair steps with the midpoint time of each step."""
  del opts
  inp = pair_inputs(process, times, ends_clean=False)
  times = jnp.asarray(times, jnp.result_type(float))
  return inp.replace(extra={"t_mid": 0.5 * (times[:-1] + times[1:])})


def _velocity(denoiser: Any, x: Array, time: Array) -> Array:
  """The probability-flow velocity at one time (module docstring)."""
  return velocity(denoiser, x, batch_time(time, x))


def _first_slope(denoiser: Any, x: Array, inp: StepInput) -> tuple[Array, Array]:
  """The step length t - s and the velocity at the start of the step."""
  return scalar(inp.t.t - inp.s.t, x), _velocity(denoiser, x, inp.s.t)


def euler_step(denoiser: Any, x: Array, state: Array, inp: StepInput, key: Array,
               opts: Mapping[str, Any]) -> tuple[Array, Array]:
  """x_t = x_s + (t - s) v(x_s, s)."""
  del key, opts
  dt, v = _first_slope(denoiser, x, inp)
  return x + dt * v, state


def heun_step(denoiser: Any, x: Array, state: Array, inp: StepInput, key: Array,
              opts: Mapping[str, Any]) -> tuple[Array, Array]:
  """x_t = x_s + (t - s) (v(x_s, s) + v(x_euler, t)) / 2."""
  del key, opts
  dt, v = _first_slope(denoiser, x, inp)
  v_next = _velocity(denoiser, x + dt * v, inp.t.t)
  return x + 0.5 * dt * (v + v_next), state


def midpoint_step(denoiser: Any, x: Array, state: Array, inp: StepInput, key: Array,
                  opts: Mapping[str, Any]) -> tuple[Array, Array]:
  """x_t = x_s + (t - s) v(x_s + (t - s) / 2 v(x_s, s), (s + t) / 2)."""
  del key, opts
  dt, v = _first_slope(denoiser, x, inp)
  return x + dt * _velocity(denoiser, x + 0.5 * dt * v, inp.extra["t_mid"]), state


def _ode_spec(name: str, step: Any, per_step: int, summary: str) -> SamplerSpec:
  return SamplerSpec(name=name, step=step, inputs=ode_inputs, grid="logSNR",
                     ends_clean=False, endpoint=True, continuous_steps=100, default_steps=100,
                     nfe=lambda steps, opts: per_step * steps, summary=summary)


EULER = _ode_spec("euler", euler_step, 1, "probability-flow ODE, Euler steps uniform in t")
HEUN = _ode_spec("heun", heun_step, 2, "probability-flow ODE, Heun steps uniform in t")
MIDPOINT = _ode_spec("midpoint", midpoint_step, 2,
                     "probability-flow ODE, explicit midpoint steps uniform in t")
