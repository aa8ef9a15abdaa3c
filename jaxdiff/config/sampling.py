"""The one table of samplers, shared by sample.py, the trainer's sample grids and evaluation.

`SAMPLERS[name]` is a `Sampler`: a function of one `Job` (the model, the run's
`config.diffusion`, a key, the starting noise and options) returning images [B, H, W, C],
the training objectives it fits, and the extra inputs it needs.

Discrete chains (objective "ddpm"): ddpm (Ho et al. 2020), ddim (Song, Meng & Ermon 2021),
inpaint (RePaint, Lugmayr et al. 2022), sdedit (Meng et al. 2022).
SDE samplers (objectives "sde_dsm" and, through the discrete bridge
`sde.score_from_eps(model_fn, VPSDE(N=T), schedule=...)`, "ddpm" with eps prediction and
the linear schedule): pc (Song et al. 2021, Algorithm 1), ode (probability flow, eq. 13),
dpm_solver_pp_2m (Lu et al. 2022b), edm_heun (Karras et al. 2022, Algorithm 1).
NCSN (objective "ncsn"): ald, annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).

`num_steps=None` means each sampler's default: the full chain (ddpm, inpaint, sdedit), 50
(ddim), sde.N = num_scales (pc; more than beta_max on VP), 20 (dpm_solver_pp_2m), 18
(edm_heun), and for ald the steps per noise level, 100 by default (Song & Ermon 2019). ode
is an adaptive Tsit5 solve (rtol = atol = 1e-3) whatever num_steps says (as eta is unused
by ddpm): fixed steps uniform in t diverge near t = 0, where the probability-flow velocity
grows as 1 / sigma_t^2.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Optional

import jax
import ml_collections

from jaxdiff import samplers, sde_samplers
from jaxdiff.config import objectives

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Job:
  """Everything a sampler needs for one batch."""
  model_fn: Any                       # model_fn(x_t, t) -> model output (a Partial pytree)
  diffusion: ml_collections.ConfigDict  # the run's config.diffusion
  rng: Array                          # key of the chain's noise
  x_T: Array                          # [B, H, W, C] standard normal starting noise
  num_steps: Optional[int] = None     # None: the sampler's default (module docstring)
  eta: float = 0.0                    # ddim's noise scale
  clip_denoised: bool = True          # discrete samplers: clip predicted x0 to [-1, 1]
  denoised_fn: Any = None             # discrete samplers: map of predicted x0
  step_lr: float = 2e-5               # ald's step size at the smallest sigma
  guide: Optional[Array] = None       # [B, H, W, C] image for inpaint and sdedit
  mask: Optional[Array] = None        # [1, H, W, 1] bool, True = known pixel (inpaint)
  strength: float = 0.5               # sdedit
  jump_length: int = 1                # inpaint (RePaint)
  resample_count: int = 1             # inpaint (RePaint)


@dataclasses.dataclass(frozen=True)
class Sampler:
  """A table entry: `run(job) -> images`, the objectives it fits, the inputs it needs."""
  run: Callable[[Job], Array]
  objectives: tuple[str, ...]
  inputs: tuple[str, ...] = ()   # Job fields it needs besides the model: "guide", "mask"
  discrete: bool = True          # uses the discrete schedule (clip_denoised, denoised_fn)


def _discrete_options(job: Job) -> dict[str, Any]:
  return dict(prediction=job.diffusion.prediction, variance=job.diffusion.variance,
              clip_denoised=job.clip_denoised, denoised_fn=job.denoised_fn)


def _schedule(job: Job) -> Any:
  return objectives.schedule_from_config(job.diffusion)


def _ddpm(job: Job) -> Array:
  return samplers.ddpm(job.model_fn, _schedule(job), job.rng, job.x_T.shape,
                       num_steps=job.num_steps, x_T=job.x_T, **_discrete_options(job))


def _ddim(job: Job) -> Array:
  return samplers.ddim(job.model_fn, _schedule(job), job.rng, job.x_T.shape,
                       num_steps=job.num_steps or 50, eta=job.eta, x_T=job.x_T,
                       **_discrete_options(job))


def _inpaint(job: Job) -> Array:
  return samplers.inpaint(job.model_fn, _schedule(job), job.rng, job.guide, job.mask,
                          num_steps=job.num_steps, jump_length=job.jump_length,
                          resample_count=job.resample_count, x_T=job.x_T,
                          **_discrete_options(job))


def _sdedit(job: Job) -> Array:
  return samplers.sdedit(job.model_fn, _schedule(job), job.rng, job.guide,
                         strength=job.strength, num_steps=job.num_steps,
                         **_discrete_options(job))


def _sde_call(name: str, score_fn: Any, sde: Any, rng: Array, x_T: Array,
              num_steps: Optional[int]) -> Array:
  """One SDE sampler of `jaxdiff.sde_samplers` from x_T (already scaled to the prior)."""
  shape = x_T.shape
  if name == "pc":
    if num_steps:
      sde = sde.replace(N=num_steps)
    return sde_samplers.pc_sampler(score_fn, sde, rng, shape, eps=1.0 / sde.N, x_T=x_T)[0]
  if name == "ode":
    return sde_samplers.probability_flow_sampler(score_fn, sde, rng, shape, solver="tsit5",
                                                 rtol=1e-3, atol=1e-3, x_T=x_T)[0]
  if name == "dpm_solver_pp_2m":
    return sde_samplers.dpm_solver_pp_2m(score_fn, sde, rng, shape, num_steps=num_steps or 20,
                                         x_T=x_T)[0]
  return sde_samplers.edm_heun(score_fn, sde, rng, shape, num_steps=num_steps or 18,
                               x_T=x_T)[0]


@functools.partial(jax.jit, static_argnames=("name", "diffusion", "num_steps"))
def _sde_chain(model_fn: Any, rng: Array, x_T: Array, *, name: str,
               diffusion: ml_collections.FrozenConfigDict,
               num_steps: Optional[int]) -> Array:
  """A score-SDE sampler in one jit whose parameters are traced (reused across params)."""
  sde = objectives.sde_from_config(diffusion)
  score_fn = objectives.continuous_score_fn(diffusion, model_fn)
  return _sde_call(name, score_fn, sde, rng, x_T * sde.prior_std, num_steps)


def _sde_sampler(name: str) -> Callable[[Job], Array]:
  def run(job: Job) -> Array:
    return _sde_chain(job.model_fn, job.rng, job.x_T, name=name,
                      diffusion=ml_collections.FrozenConfigDict(job.diffusion),
                      num_steps=job.num_steps)
  return run


@functools.partial(jax.jit, static_argnames=("diffusion", "num_steps", "step_lr"))
def _ald_chain(model_fn: Any, rng: Array, x_T: Array, *,
               diffusion: ml_collections.FrozenConfigDict, num_steps: Optional[int],
               step_lr: float) -> Array:
  """Annealed Langevin dynamics from sigma_max x_T with the final denoising step."""
  sigmas = objectives.ncsn_sigmas(diffusion)
  score_fn = objectives.ncsn_score_fn(diffusion, model_fn)
  return sde_samplers.annealed_langevin_dynamics(
      score_fn, sigmas, rng, x_T.shape, n_steps_each=num_steps or 100, step_lr=step_lr,
      x_init=x_T * sigmas[-1], denoise=True)[0]


def _ald(job: Job) -> Array:
  return _ald_chain(job.model_fn, job.rng, job.x_T,
                    diffusion=ml_collections.FrozenConfigDict(job.diffusion),
                    num_steps=job.num_steps, step_lr=job.step_lr)


_CONTINUOUS = ("ddpm", "sde_dsm")

SAMPLERS: dict[str, Sampler] = {
    "ddpm": Sampler(_ddpm, ("ddpm",)),
    "ddim": Sampler(_ddim, ("ddpm",)),
    "inpaint": Sampler(_inpaint, ("ddpm",), inputs=("guide", "mask")),
    "sdedit": Sampler(_sdedit, ("ddpm",), inputs=("guide",)),
    **{name: Sampler(_sde_sampler(name), _CONTINUOUS, discrete=False)
       for name in ("pc", "ode", "dpm_solver_pp_2m", "edm_heun")},
    "ald": Sampler(_ald, ("ncsn",), discrete=False),
}

# Samplers that need nothing but the model: the choices of config.sample.sampler.
GRID_SAMPLERS = tuple(name for name, entry in SAMPLERS.items() if not entry.inputs)


def fitting_samplers(diffusion_config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Names of the samplers that can sample a model trained with `config.diffusion`."""
  return tuple(name for name in SAMPLERS if _misfit(name, diffusion_config) is None)


def _misfit(name: str, diffusion_config: ml_collections.ConfigDict) -> Optional[str]:
  """Why sampler `name` cannot sample this run, or None when it can."""
  objective = diffusion_config.objective
  if objective not in SAMPLERS[name].objectives:
    return f"it samples objective(s) {SAMPLERS[name].objectives}, not {objective!r}"
  if objective == "ddpm" and not SAMPLERS[name].discrete:
    if diffusion_config.prediction != "eps" or diffusion_config.schedule != "linear":
      return ("the SDE bridge needs an eps-prediction model on the linear schedule, not "
              f"prediction={diffusion_config.prediction!r}, "
              f"schedule={diffusion_config.schedule!r}")
  return None


def _check_num_steps(name: str, diffusion_config: ml_collections.ConfigDict,
                     num_steps: Optional[int]) -> None:
  """Raises ValueError for a step count that `name` cannot run on this run's SDE."""
  if name == "pc":
    sde = objectives.sde_from_config(diffusion_config)
    steps, beta_max = num_steps or sde.N, getattr(sde, "beta_max", 0.0)
    if beta_max >= steps:
      raise ValueError(f"pc with num_steps={steps} on a VP SDE with beta_max={beta_max}: its "
                       f"discrete betas beta_max / N exceed 1; use num_steps > {beta_max}")


def check_fits(name: str, diffusion_config: ml_collections.ConfigDict, *,
               num_steps: Optional[int] = None) -> None:
  """Raises ValueError when `name` is unknown, cannot sample this run's objective, or cannot
  run `num_steps` steps (None: its default)."""
  if name not in SAMPLERS:
    raise ValueError(f"sampler {name!r} does not exist; choose one of {', '.join(SAMPLERS)}")
  reason = _misfit(name, diffusion_config)
  if reason is not None:
    raise ValueError(f"sampler {name!r} does not fit this run: {reason}; samplers that fit: "
                     f"{', '.join(fitting_samplers(diffusion_config))}")
  _check_num_steps(name, diffusion_config, num_steps)


def run_sampler(name: str, job: Job) -> Array:
  """Images [B, H, W, C] from sampler `name` after checking that it fits `job.diffusion`."""
  check_fits(name, job.diffusion, num_steps=job.num_steps)
  return SAMPLERS[name].run(job)
