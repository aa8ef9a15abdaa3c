"""Fixed-step solvers of the probability-flow ODE (Song et al. 2021, eq. 13) on any process.

    dx / dt = f(t) x - g(t)^2 / 2 score(x, t) = f(t) x + g(t)^2 / (2 sigma_t) eps(x, t),

with f and g of the process's forward SDE (`jaxdiff.processes.GaussianProcess.sde`), from
t_max to t_min on a grid uniform in time (uniform in lambda on a discrete `Schedule`, whose
interpolated coefficients change fastest near t = 0): Euler (one evaluation per step), Heun
(two; the trapezoidal corrector of Karras et al. 2022, Algorithm 1, in t) and the explicit
midpoint rule (two). They return x at t_min. (The adaptive solve is
`jaxdiff.sde_samplers.ode`.)
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

from jaxdiff.samplers.spec import SamplerSpec, StepInput, batch_time, pair_inputs, scalar

Array = Any


def _drift_and_g2(process: Any, times: Array) -> tuple[Array, Array]:
  """f(t) and g(t)^2 of the forward SDE at ``times``."""
  drift, g = process.sde(jnp.ones_like(times, jnp.result_type(float)), times)
  return drift, g**2


def ode_inputs(process: Any, times: Array, opts: Mapping[str, Any]) -> StepInput:
  """Pair steps with f and g^2 at both ends and at the midpoint of each step."""
  del opts
  inp = pair_inputs(process, times, ends_clean=False)
  times = jnp.asarray(times, jnp.result_type(float))
  middle = 0.5 * (times[:-1] + times[1:])
  extra = {}
  for name, at in (("s", times[:-1]), ("t", times[1:]), ("mid", middle)):
    extra[f"f_{name}"], extra[f"g2_{name}"] = _drift_and_g2(process, at)
  extra["t_mid"] = middle
  return inp.replace(extra=extra)


def _velocity(denoiser: Any, x: Array, time: Array, f: Array, g2: Array) -> Array:
  """The probability-flow velocity at one time (module docstring)."""
  time = batch_time(time, x)
  sigma = scalar(denoiser.process.sigma(time[0]), x)
  return scalar(f, x) * x + scalar(g2, x) / (2.0 * sigma) * denoiser(x, time).eps


def _first_slope(denoiser: Any, x: Array, inp: StepInput) -> tuple[Array, Array]:
  """The step length t - s and the velocity at the start of the step."""
  dt = scalar(inp.t.t - inp.s.t, x)
  return dt, _velocity(denoiser, x, inp.s.t, inp.extra["f_s"], inp.extra["g2_s"])


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
  v_next = _velocity(denoiser, x + dt * v, inp.t.t, inp.extra["f_t"], inp.extra["g2_t"])
  return x + 0.5 * dt * (v + v_next), state


def midpoint_step(denoiser: Any, x: Array, state: Array, inp: StepInput, key: Array,
                  opts: Mapping[str, Any]) -> tuple[Array, Array]:
  """x_t = x_s + (t - s) v(x_s + (t - s) / 2 v(x_s, s), (s + t) / 2)."""
  del key, opts
  dt, v = _first_slope(denoiser, x, inp)
  e = inp.extra
  return x + dt * _velocity(denoiser, x + 0.5 * dt * v, e["t_mid"], e["f_mid"],
                            e["g2_mid"]), state


def _ode_spec(name: str, step: Any, per_step: int, summary: str) -> SamplerSpec:
  return SamplerSpec(name=name, step=step, inputs=ode_inputs, grid="logSNR",
                     ends_clean=False, endpoint=True, continuous_steps=100, default_steps=100,
                     nfe=lambda steps, opts: per_step * steps, summary=summary)


EULER = _ode_spec("euler", euler_step, 1, "probability-flow ODE, Euler steps uniform in t")
HEUN = _ode_spec("heun", heun_step, 2, "probability-flow ODE, Heun steps uniform in t")
MIDPOINT = _ode_spec("midpoint", midpoint_step, 2,
                     "probability-flow ODE, explicit midpoint steps uniform in t")
