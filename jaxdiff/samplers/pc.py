"""Predictor-corrector sampling of the reverse SDE (Song et al. 2021, Algorithm 1 / App. G)
and NCSN's annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1), on any process.

Predictors ("euler_maruyama", "reverse_diffusion", "none") and correctors ("langevin", "ald",
"none") are ``(key, x, t, dt, reverse_sde, snr) -> (x, x_mean)`` functions of one step, on
the reverse SDE of the process with the denoiser's score -eps / sigma_t. The default grid is
score_sde's: N times uniform from t_max to t_min with dt their spacing (for an SDE, t_min
defaults to 1 / N: the times of its N-step discrete chain; for a `Schedule`, its timesteps).
"reverse_diffusion" walks the process's own discretization (`discretize`): score_sde's for
the SDEs, the chain's own steps for a `Schedule`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import sde as sde_lib
from jaxdiff.processes import FlowProcess, broadcast_to_x
from jaxdiff.samplers import grids
from jaxdiff.samplers.spec import SamplerSpec, StepInput, batch_time
from jaxdiff.schedules import Schedule

Array = Any


def langevin_update(x: Array, score: Array, step_size: Array, noise: Array) -> tuple[Array, Array]:
  """One Langevin step x + delta score + sqrt(2 delta) z (Song & Ermon 2019, eq. 4 with
  delta = epsilon / 2); step_size delta is per example, shape [B]. Returns (x_new, x_mean)."""
  delta = broadcast_to_x(step_size, x)
  x_mean = x + delta * score
  return x_mean + jnp.sqrt(2.0 * delta) * noise, x_mean


def euler_maruyama_predictor(key: Array, x: Array, t: Array, dt: Any, rsde: Any,
                             snr: Any) -> tuple[Array, Array]:
  """x_mean = x + f_rev(x, t) dt, x = x_mean + g sqrt(|dt|) z (Song et al. 2021, App. G)."""
  del snr
  drift, diffusion = rsde.sde(x, t)
  x_mean = x + drift * dt
  noise = jax.random.normal(key, x.shape, x.dtype)
  return x_mean + broadcast_to_x(diffusion, x) * jnp.sqrt(-dt) * noise, x_mean


def reverse_diffusion_predictor(key: Array, x: Array, t: Array, dt: Any, rsde: Any,
                                snr: Any) -> tuple[Array, Array]:
  """x_mean = x - (f_i - G_i^2 score), x = x_mean + G_i z (Song et al. 2021, eq. 47)."""
  del dt, snr
  f, g = rsde.discretize(x, t)
  x_mean = x - f
  noise = jax.random.normal(key, x.shape, x.dtype)
  return x_mean + broadcast_to_x(g, x) * noise, x_mean


def _langevin_alpha(rsde: Any, t: Array) -> Array:
  """alpha_i = 1 - beta_i of a discretized VP chain (VPSDE or a Schedule), 1 otherwise
  (Song et al. 2021, Algorithms 4-5)."""
  forward = rsde.forward
  if isinstance(forward, sde_lib.VPSDE):
    index = sde_lib.continuous_to_discrete(t, rsde.N)
    return 1.0 - forward.discrete_betas(index, t.dtype)
  if isinstance(forward, Schedule):
    index = jnp.clip(jnp.round(t).astype(jnp.int32), 0, forward.num_timesteps - 1)
    return forward.alphas[index].astype(t.dtype)
  return jnp.ones_like(t)


def langevin_corrector(key: Array, x: Array, t: Array, dt: Any, rsde: Any,
                       snr: Any) -> tuple[Array, Array]:
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


def ald_corrector(key: Array, x: Array, t: Array, dt: Any, rsde: Any,
                  snr: Any) -> tuple[Array, Array]:
  """NCSN's annealed Langevin step as a corrector: step = 2 alpha_i (r sigma_t)^2
  (Song et al. 2021, Algorithm 4; Song & Ermon 2019's epsilon proportional to sigma^2)."""
  del dt
  _, sigma = rsde.forward.marginal_coeffs(t)
  step = 2.0 * _langevin_alpha(rsde, t) * (snr * sigma) ** 2
  return langevin_update(x, rsde.score_fn(x, t), step, jax.random.normal(key, x.shape, x.dtype))


def _identity(key: Array, x: Array, t: Array, dt: Any, rsde: Any,
              snr: Any) -> tuple[Array, Array]:
  del key, t, dt, rsde, snr
  return x, x


PREDICTORS = {"euler_maruyama": euler_maruyama_predictor,
              "reverse_diffusion": reverse_diffusion_predictor, "none": _identity}
CORRECTORS = {"langevin": langevin_corrector, "ald": ald_corrector, "none": _identity}


def score_fn_of(denoiser: Any) -> Any:
  """score(x, t) = -eps(x, t) / sigma_t of a denoiser (Song et al. 2021, eq. 28)."""
  def score(x: Array, t: Array) -> Array:
    sigma = broadcast_to_x(denoiser.process.sigma(t), x).astype(x.dtype)
    return -denoiser(x, t).eps / sigma
  return score


def _with_chain_length(process: Any, num_steps: int) -> Any:
  """An SDE discretized into ``num_steps`` steps (its field N); other processes as they are."""
  if any(field.name == "N" for field in dataclasses.fields(process)):
    return process.replace(N=num_steps)
  return process


def pc_step(denoiser: Any, x: Array, state: Array, inp: StepInput, key: Array,
            opts: Mapping[str, Any]) -> tuple[Array, Array]:
  """``n_steps`` corrector steps at t_k, then one predictor step to t_k + dt; the state is
  the predictor's mean (returned when ``denoise``)."""
  del state
  process = _with_chain_length(denoiser.process, opts["num_steps"])
  rsde = process.reverse(score_fn_of(denoiser), probability_flow=opts["probability_flow"])
  time = batch_time(inp.s.t, x)
  keys = jax.random.split(key, opts["n_steps"] + 1)
  corrector, predictor = CORRECTORS[opts["corrector"]], PREDICTORS[opts["predictor"]]
  for k in keys[1:]:
    x, _ = corrector(k, x, time, inp.extra["dt"], rsde, opts["snr"])
  return predictor(keys[0], x, time, inp.extra["dt"], rsde, opts["snr"])


def pc_inputs(process: Any, times: Array, opts: Mapping[str, Any]) -> StepInput:
  """One step at each time, to the next one (the last continues by the same dt)."""
  del opts
  dt = jnp.diff(times) if times.shape[0] > 1 else -jnp.asarray(times, float)
  dt = jnp.concatenate([dt, dt[-1:]]).astype(jnp.result_type(float))
  ends = times.astype(dt.dtype) + dt
  start = grids.points(process, times.astype(dt.dtype), ends_clean=False)
  end = grids.points(process, ends, ends_clean=False)
  return StepInput(s=start, t=end, transition_variance=jnp.zeros_like(dt), extra={"dt": dt})


def _pc_finalize(denoiser: Any, x: Array, state: Array, inp: StepInput,
                 opts: Mapping[str, Any]) -> Array:
  del denoiser, inp
  return state if opts["denoise"] else x


def pc_nfe(steps: int, opts: Mapping[str, Any]) -> int:
  """Predictor and corrector evaluations: N ((predictor != none) + n_steps (corrector != none))."""
  return steps * ((opts["predictor"] != "none") + opts["n_steps"] * (opts["corrector"] != "none"))


PC = SamplerSpec(
    name="pc", step=pc_step, inputs=pc_inputs, grid="time_uniform", ends_clean=False,
    init_state=lambda x: x, finalize=_pc_finalize, stochastic=True, markov=False, nfe=pc_nfe,
    default_t_min=lambda process, steps: (process.t_max / steps if isinstance(
        process, sde_lib.SDES + (FlowProcess,)) else process.t_min),
    validate=lambda process, opts, steps: check_pc_options(process, opts, steps),
    options={"predictor": "reverse_diffusion", "corrector": "langevin", "snr": 0.16,
             "n_steps": 1, "probability_flow": False, "denoise": True},
    summary="predictor-corrector, Song et al. 2021 Algorithm 1 (score_sde's grid)")


def ald_step(denoiser: Any, x: Array, state: Array, inp: StepInput, key: Array,
             opts: Mapping[str, Any]) -> tuple[Array, Array]:
  """``steps_per_level`` Langevin steps at the level sigma_i with epsilon_i = step_lr
  sigma_i^2 / sigma_L^2 (Song & Ermon 2019, Algorithm 1; delta = epsilon / 2)."""
  score_fn = score_fn_of(denoiser)
  time = batch_time(inp.s.t, x)
  delta = jnp.full((x.shape[0],), 0.5 * opts["step_lr"] * inp.extra["ratio2"], x.dtype)

  def langevin(x: Array, k: Array) -> tuple[Array, None]:
    noise = jax.random.normal(k, x.shape, x.dtype)
    return langevin_update(x, score_fn(x, time), delta, noise)[0], None

  x, _ = jax.lax.scan(langevin, x, jax.random.split(key, opts["steps_per_level"]))
  return x, state


def ald_inputs(process: Any, times: Array, opts: Mapping[str, Any]) -> StepInput:
  """One step per noise level sigma_i (staying at it), with (sigma_i / sigma_L)^2."""
  del opts
  pts = grids.points(process, times, ends_clean=False)
  extra = {"ratio2": (pts.sigma / pts.sigma[-1]) ** 2}
  return StepInput(s=pts, t=pts, transition_variance=jnp.zeros_like(pts.sigma), extra=extra)


def _ald_finalize(denoiser: Any, x: Array, state: Array, inp: StepInput,
                  opts: Mapping[str, Any]) -> Array:
  """With ``denoise``, the final step x + sigma_L^2 score(x, sigma_L) of Jolicoeur-Martineau
  et al. 2021, i.e. the denoiser's x0 for alpha = 1."""
  del state
  if not opts["denoise"]:
    return x
  return denoiser(x, batch_time(inp.s.t, x)).x0


ALD = SamplerSpec(
    name="ald", step=ald_step, inputs=ald_inputs, grid="logSNR", continuous_grid="logSNR",
    own_grid=True,
    ends_clean=False, continuous_steps=10, finalize=_ald_finalize, stochastic=True,
    markov=False, nfe=lambda steps, opts: steps * opts["steps_per_level"] + opts["denoise"],
    options={"steps_per_level": 100, "step_lr": 2e-5, "denoise": False},
    summary="annealed Langevin dynamics, Song & Ermon 2019 Algorithm 1 (geometric levels)")


def check_pc_options(process: Any, opts: Mapping[str, Any], num_steps: int) -> None:
  """Raises ValueError for unknown predictors / correctors, n_steps < 0, or a
  reverse-diffusion predictor without a discretization that fits the grid."""
  for name, table in (("predictor", PREDICTORS), ("corrector", CORRECTORS)):
    if opts[name] not in table:
      raise ValueError(f"unknown {name} {opts[name]!r}; valid names are {sorted(table)}")
  if opts["n_steps"] < 0:
    raise ValueError(f"n_steps (corrector steps per time) must be >= 0, got {opts['n_steps']}")
  if opts["predictor"] == "reverse_diffusion":
    if not hasattr(process, "discretize"):
      raise ValueError(f"predictor 'reverse_diffusion' needs a process with a discretization "
                       f"(a Schedule or an SDE), not a {type(process).__name__}; use "
                       "'euler_maruyama'")
    if isinstance(process, Schedule) and num_steps != process.num_timesteps:
      raise ValueError(f"predictor 'reverse_diffusion' walks the schedule's own "
                       f"{process.num_timesteps} steps; num_steps={num_steps} needs "
                       "predictor='euler_maruyama'")
  if isinstance(process, FlowProcess) and process.t_max == 1.0:
    raise ValueError("pc runs the reverse SDE, whose drift d log alpha / dt is infinite at "
                     "t = 1 of a flow (alpha = 0); use FlowProcess(t_max=0.999) or another "
                     "sampler")
  if isinstance(process, sde_lib.VPSDE) and grids.is_concrete(process.beta_max) \
      and float(np.max(process.beta_max)) >= num_steps and opts["predictor"] != "none":
    raise ValueError(f"pc with num_steps={num_steps} on a VP SDE with beta_max="
                     f"{float(np.max(process.beta_max))}: its discrete betas beta_max / N reach "
                     f"1 and the chain returns NaN; use num_steps > {process.beta_max}")
