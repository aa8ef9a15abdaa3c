"""Probability-flow ODE solved with diffrax (Song et al. 2021, eq. 13; Kidger 2021, diffrax).

Solvers: "dopri5" and "tsit5" (adaptive, PID step-size control with rtol / atol) and "heun",
"euler" (fixed step, num_steps steps). `solve_ode` reports the number of vector-field
evaluations: diffrax's Dopri5 and Tsit5 are 7-stage first-same-as-last Runge-Kutta pairs
(1 evaluation at the start, then 6 per attempted step, rejected ones included), Heun costs 2
per step and Euler 1. `probability_flow_sampler` solves adaptively here and hands the
fixed-step solvers to the chain runner (`jaxdiff.samplers`, samplers "heun" and "euler").
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import diffrax
import jax
import jax.numpy as jnp

from jaxdiff import denoisers, sde as sde_lib
from jaxdiff.processes import ScoreFn
from jaxdiff.samplers import runner

Array = jax.Array

# name -> (solver class, adaptive, evaluations at the start, evaluations per step)
SOLVERS = {
    "dopri5": (diffrax.Dopri5, True, 1, 6),
    "tsit5": (diffrax.Tsit5, True, 1, 6),
    "heun": (diffrax.Heun, False, 0, 2),
    "euler": (diffrax.Euler, False, 0, 1),
}


def check_name(name: str, valid: Any, what: str) -> None:
  """Raises ValueError for a name that is not one of `valid`, listing the valid ones."""
  if name not in valid:
    raise ValueError(f"unknown {what} {name!r}; valid names are {sorted(valid)}")


def check_solver(solver: str, num_steps: int | None) -> None:
  """Raises ValueError for an unknown solver name or a fixed-step solver without num_steps."""
  check_name(solver, SOLVERS, "ODE solver")
  if not SOLVERS[solver][1] and (num_steps is None or num_steps < 1):
    raise ValueError(f"fixed-step solver {solver!r} needs num_steps >= 1, got {num_steps}")


def get_solver(name: str) -> diffrax.AbstractSolver:
  """A fresh diffrax solver by name: "dopri5", "tsit5", "heun" or "euler"."""
  check_name(name, SOLVERS, "ODE solver")
  return SOLVERS[name][0]()


def solve_ode(vector_field: Callable[[Array, Any], Any], y0: Any, *, t0: float, t1: float,
              solver: str = "tsit5", rtol: float = 1e-5, atol: float = 1e-5,
              num_steps: int | None = None, max_steps: int = 16384) -> tuple[Any, Array]:
  """Solves dy/dt = vector_field(t, y) from t0 to t1 (either direction) with a diffrax solver.

  Adaptive solvers start from dt0 = (t1 - t0) / 100 and adapt; fixed-step ones take num_steps
  equal steps. Returns (y(t1), number of vector-field evaluations).
  """
  check_solver(solver, num_steps)
  _, adaptive, nfe_start, nfe_per_step = SOLVERS[solver]
  if adaptive:
    controller = diffrax.PIDController(rtol=rtol, atol=atol)
    dt0 = (t1 - t0) / 100.0
  else:
    controller = diffrax.ConstantStepSize()
    dt0 = (t1 - t0) / num_steps
  term = diffrax.ODETerm(lambda t, y, args: vector_field(t, y))
  sol = diffrax.diffeqsolve(term, get_solver(solver), t0, t1, dt0, y0,
                            stepsize_controller=controller, saveat=diffrax.SaveAt(t1=True),
                            max_steps=max_steps)
  y1 = jax.tree_util.tree_map(lambda leaf: leaf[-1], sol.ys)
  return y1, nfe_start + nfe_per_step * sol.stats["num_steps"]


def probability_flow_drift(score_fn: ScoreFn, process: Any) -> Callable[[Array, Array], Array]:
  """f(x, t) - g(t)^2 score(x, t) / 2, the probability-flow ODE's velocity (Song et al. 2021,
  eq. 13), with a scalar t. ``score_fn`` may also be a denoiser (`jaxdiff.denoisers`): the
  drift is then its velocity alpha' x0 + sigma' eps (`jaxdiff.denoisers.velocity`), the same
  field, finite where alpha = 0 (t = 1 of a flow), where a score says nothing of x0."""
  if denoisers.is_denoiser(score_fn):
    return lambda t, x: denoisers.velocity(score_fn, x, jnp.full((x.shape[0],), t, x.dtype))
  rsde = process.reverse(score_fn, probability_flow=True)

  def drift(t: Array, x: Array) -> Array:
    return rsde.sde(x, jnp.full((x.shape[0],), t, x.dtype))[0]
  return drift


def validate(score_fn: ScoreFn, shape: tuple[int, ...], eps: float, process: Any = None) -> None:
  """Raises ValueError for an end time eps outside (0, 1) of an SDE (or outside
  [t_min, t_max) of another process) or a score_fn (or denoiser) whose output is not shaped
  as x."""
  if process is None or isinstance(process, sde_lib.SDES):
    sde_lib.check_eps(eps)
  elif not float(process.t_min) <= eps < float(process.t_max):
    raise ValueError(f"eps must lie in [{process.t_min}, {process.t_max}), got {eps}")
  x = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
  t = jax.ShapeDtypeStruct((shape[0],), jnp.float32)
  if denoisers.is_denoiser(score_fn):
    sde_lib.check_score_fn(lambda y, u: score_fn(y, u).x0, x, t)
  else:
    sde_lib.check_score_fn(score_fn, x, t)


@functools.partial(jax.jit, static_argnames=("solver", "rtol", "atol", "eps"))
def _adaptive(score: denoisers.Traceable, process: Any, x: Array, *, solver: str, rtol: float,
              atol: float, eps: float) -> tuple[Array, Array]:
  field = score.fn if denoisers.is_denoiser(score.fn) else score
  return solve_ode(probability_flow_drift(field, process), x, t0=process.t_max, t1=eps,
                   solver=solver, rtol=rtol, atol=atol)


def probability_flow_sampler(score_fn: ScoreFn, sde: Any, rng: Array, shape: tuple[int, ...], *,
                             solver: str = "tsit5", rtol: float = 1e-5, atol: float = 1e-5,
                             num_steps: int | None = None, eps: float = 1e-3,
                             x_T: Array | None = None) -> tuple[Array, Array]:
  """Samples by solving the probability-flow ODE (Song et al. 2021, eq. 13) from t_max to eps,
  starting at x_T ~ p_T (``score_fn``: a score function or a denoiser, see
  `probability_flow_drift`). Adaptive solvers treat the whole batch as one ODE state (one shared
  step size); "heun" and "euler" run `num_steps` fixed steps in the chain runner. The score's
  arrays (a `jax.tree_util.Partial`'s parameters) are traced: new parameters do not
  recompile. Returns (samples at t = eps, number of score evaluations).
  """
  check_solver(solver, num_steps)
  validate(score_fn, shape, eps, sde)
  if not SOLVERS[solver][1]:
    den = score_fn if denoisers.is_denoiser(score_fn) else denoisers.make_denoiser(
        score_fn, sde, prediction="score")
    x, _, nfe = runner.run(den, rng, shape, sampler=solver, num_steps=num_steps, t_min=eps,
                           x_T=x_T)
    return x, nfe
  if x_T is None:
    x_T = sde.prior_sampling(rng, shape)
  elif tuple(x_T.shape) != tuple(shape):
    raise ValueError(f"x_T has shape {x_T.shape}, expected {tuple(shape)}")
  return _adaptive(denoisers.traceable(score_fn, name="score_fn"), sde, x_T, solver=solver,
                   rtol=rtol, atol=atol, eps=eps)
