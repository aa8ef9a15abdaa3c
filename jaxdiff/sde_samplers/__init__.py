"""Samplers for score-based models of `jaxdiff.sde` SDEs.

Each sampler is jitted and returns (samples, number of score evaluations). The SDE samplers share
the signature `sampler(score_fn, sde, rng, shape, *, ..., x_T=None)` and `get_sampler(name)`
dispatches on their names; NCSN's `annealed_langevin_dynamics` takes a noise-conditional
score_fn(x, sigma) and the sigma ladder instead of an SDE.
"""

from __future__ import annotations

from typing import Callable

from jaxdiff.sde_samplers.common import check_name
from jaxdiff.sde_samplers.dpm_solver import dpm_solver_pp_2m, dpm_time_grid
from jaxdiff.sde_samplers.edm import edm_heun, edm_sigmas
from jaxdiff.sde_samplers.langevin import annealed_langevin_dynamics, langevin_update
from jaxdiff.sde_samplers.ode import get_solver, probability_flow_sampler, solve_ode
from jaxdiff.sde_samplers.predictor_corrector import CORRECTORS, PREDICTORS, pc_sampler

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


__all__ = [
    "CORRECTORS", "PREDICTORS", "SAMPLERS", "annealed_langevin_dynamics", "dpm_solver_pp_2m",
    "dpm_time_grid", "edm_heun", "edm_sigmas", "get_sampler", "get_solver", "langevin_update",
    "pc_sampler", "probability_flow_sampler", "solve_ode",
]
