"""Score-based samplers by score_sde's signature: ``sampler(score_fn, sde, rng, shape, ...)``.

Each takes a score model ``score_fn(x, t)`` of an SDE of `jaxdiff.sde` (or of any process of
`jaxdiff.processes`), wraps it as a score-prediction denoiser and runs the chain runner of
`jaxdiff.samplers` (the adaptive probability-flow solve runs in diffrax, `ode`); each returns
``(samples, number of score evaluations)``. NCSN's ``annealed_langevin_dynamics`` takes a
noise-conditional ``score_fn(x, sigma)`` and the sigma ladder instead of an SDE. New code can
call ``jaxdiff.samplers.sample`` directly, with any parameterization and wrapper.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxdiff import denoisers, processes
from jaxdiff import sde as sde_lib
from jaxdiff.samplers import grids, runner
from jaxdiff.samplers.pc import CORRECTORS, PREDICTORS, langevin_update
from jaxdiff.sde_samplers.ode import check_name, get_solver, probability_flow_sampler, solve_ode

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


def _run(score_fn: ScoreFn, process: Any, rng: Array, shape: tuple[int, ...], *, eps: float,
         **kwargs: Any) -> tuple[Array, int]:
  sde_lib.check_eps(eps)
  den = denoisers.make_denoiser(score_fn, process, prediction="score")
  x, _, nfe = runner.run(den, rng, shape, t_min=eps, **kwargs)
  return x, nfe


def pc_sampler(score_fn: ScoreFn, sde: Any, rng: Array, shape: tuple[int, ...], *,
               predictor: str = "reverse_diffusion", corrector: str = "langevin",
               snr: float = 0.16, n_steps: int = 1, probability_flow: bool = False,
               denoise: bool = True, eps: float = 1e-3,
               x_T: Array | None = None) -> tuple[Array, int]:
  """Predictor-corrector sampler (Song et al. 2021, Algorithm 1) over the N = sde.N times
  uniform from 1 to eps: n_steps corrector steps then one predictor step at each.
  predictor="none" with corrector="ald" on a VESDE is NCSN's annealed Langevin dynamics
  driven by the SDE's noise levels. denoise=True returns the last predictor mean."""
  return _run(score_fn, sde, rng, shape, eps=eps, sampler="pc", num_steps=sde.N, x_T=x_T,
              predictor=predictor, corrector=corrector, snr=snr, n_steps=n_steps,
              probability_flow=probability_flow, denoise=denoise)


def dpm_solver_pp_2m(score_fn: ScoreFn, sde: Any, rng: Array, shape: tuple[int, ...], *,
                     num_steps: int = 20, eps: float = 1e-3, time_grid: str = "logSNR",
                     x_T: Array | None = None) -> tuple[Array, int]:
  """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2) from x_T ~ p_1 to t = eps in num_steps
  steps on the time grid "logSNR", "time_uniform" or "time_quadratic"."""
  return _run(score_fn, sde, rng, shape, eps=eps, sampler="dpm_solver_pp_2m",
              num_steps=num_steps, grid=time_grid, x_T=x_T)


def edm_heun(score_fn: ScoreFn, sde: Any, rng: Array, shape: tuple[int, ...], *,
             num_steps: int = 18, eps: float = 1e-3, rho: float = 7.0,
             x_T: Array | None = None) -> tuple[Array, int]:
  """EDM Heun sampler (Karras et al. 2022, Algorithm 1) over num_steps rho-spaced levels
  between sigma_hat(1) and sigma_hat(eps), then to 0: 2 num_steps - 1 evaluations."""
  return _run(score_fn, sde, rng, shape, eps=eps, sampler="edm_heun", num_steps=num_steps,
              x_T=x_T, rho=rho)


def annealed_langevin_dynamics(score_fn: Callable[[Array, Array], Array], sigmas: Array,
                               rng: Array, shape: tuple[int, ...], *, n_steps_each: int = 100,
                               step_lr: float = 2e-5, x_init: Array | None = None,
                               denoise: bool = False) -> tuple[Array, int]:
  """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) with a noise-conditional
  score_fn(x, sigma): for sigma_1 > ... > sigma_L (the ladder is sorted), n_steps_each
  Langevin steps with epsilon_i = step_lr sigma_i^2 / sigma_L^2 each. x_init defaults to
  N(0, sigma_1^2 I); denoise=True adds the final step x + sigma_L^2 s(x, sigma_L)
  (Jolicoeur-Martineau et al. 2021)."""
  levels = jnp.sort(jnp.ravel(jnp.asarray(sigmas)))[::-1]
  if n_steps_each < 1:
    raise ValueError(f"n_steps_each must be >= 1, got {n_steps_each}")
  low, high = ((float(levels[-1]), float(levels[0])) if grids.is_concrete(levels)
               else (levels[-1], levels[0]))
  process = processes.EDMProcess(sigma_min=low, sigma_max=high)
  den = denoisers.make_denoiser(score_fn, process, prediction="score")
  x, _, nfe = runner.run(den, rng, shape, sampler="ald", times=levels, x_T=x_init,
                         steps_per_level=n_steps_each, step_lr=step_lr, denoise=denoise)
  return x, nfe


SAMPLERS = {
    "pc": pc_sampler,
    "ode": probability_flow_sampler,
    "dpm_solver_pp_2m": dpm_solver_pp_2m,
    "edm_heun": edm_heun,
}


def get_sampler(name: str) -> Callable:
  """The SDE sampler called `name`: "pc", "ode", "dpm_solver_pp_2m" or "edm_heun"."""
  check_name(name, SAMPLERS, "SDE sampler")
  return SAMPLERS[name]


def dpm_time_grid(sde: Any, num_steps: int, *, eps: float = 1e-3,
                  kind: str = "logSNR") -> Array:
  """num_steps + 1 decreasing times from 1 to eps (Lu et al. 2022a, App. D.1)."""
  sde_lib.check_eps(eps)
  return grids.default_times(sde, kind, grids.check_num_steps(num_steps) + 1, t_min=eps)


edm_sigmas = grids.karras_sigmas

__all__ = [
    "CORRECTORS", "PREDICTORS", "SAMPLERS", "annealed_langevin_dynamics", "dpm_solver_pp_2m",
    "dpm_time_grid", "edm_heun", "edm_sigmas", "get_sampler", "get_solver", "langevin_update",
    "pc_sampler", "probability_flow_sampler", "solve_ode",
]
