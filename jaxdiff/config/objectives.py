"""Training objectives from `config.diffusion`: the one place that maps a config to a loss.

`make_loss_fn(config.diffusion)` returns `loss_fn(model_fn, x0, rng) -> [B]`, the
per-example loss of `config.diffusion.objective`:

- "ddpm": `jaxdiff.losses.diffusion_loss` on the discrete schedule (Ho et al. 2020's
  L_simple by default); the U-Net gets the integer timestep.
- "sde_dsm": continuous-time denoising score matching (Song et al. 2021, eq. 7) for the SDE
  `config.diffusion.sde`. The U-Net predicts the noise: score(x, t) = -model(x, t * 999) /
  sigma_t (score_sde's time input for continuous VP models, `SDE_TIME_SCALE`), so the
  sinusoidal embedding sees the same range as a T = 1000 DDPM.
- "ncsn": the noise-conditional score network (Song & Ermon 2019, eq. 5-6) over the
  geometric ladder `ncsn_sigmas`; the U-Net gets the index i of sigma_i in the ascending
  ladder as its timestep and score(x, sigma_i) = model(x, i) / sigma_i.
- "flow": conditional flow matching (`jaxdiff.flow`) on the interpolant
  `config.diffusion.interpolant` (`jaxdiff.processes.FlowProcess`, t in [0, 1]) with the
  training-time distribution `time_distribution` (uniform, logit-normal, mode; `time_shift`);
  the U-Net predicts the velocity at time input t * 999.
- "edm": EDM's preconditioned denoiser and loss (`jaxdiff.edm`; Karras et al. 2022, Table
  1) on the sigma axis (`jaxdiff.processes.EDMProcess(sigma_min, sigma_max)`), with
  `sigma_data`, ln(sigma) ~ N(p_mean, p_std^2); the U-Net is F, called at c_in x with time
  input c_noise * 999 = 999 ln(sigma) / 4.
- "consistency_training": a consistency model trained without a teacher (Song et al. 2023,
  Algorithm 3; improved CT of Song & Dhariwal 2024 by default): `jaxdiff.consistency`, on
  `processes.EDMProcess(sigma_min, sigma_max)`; the target network is the model itself under
  a stop-gradient (iCT's mu = 0), and N(k) follows the step k (a `CurriculumLoss`).
- "consistency_distillation": the same model and choices, with x_hat_{t_n} one ODE step
  (`config.diffusion.cd_solver`) of a trained teacher of any objective (Song et al. 2023,
  Algorithm 2): `consistency_loss_fn(config, teacher=denoiser)`, built by the trainer from
  `config.distill.teacher_workdir` (`jaxdiff.job.distill`).
- "d3pm", "masked": discrete-state diffusion on categories (`jaxdiff.config.categorical`);
  they have no Gaussian process or denoiser.

`process_from_config` and `denoiser_from_config` give the samplers the run's noise process
(`jaxdiff.processes`) and its model as a denoiser (`jaxdiff.denoisers`); the model wrappers
(time scaling, NCSN's ladder index) are the same for the losses and the samplers, so training
and sampling cannot disagree on them.
"""

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxdiff import consistency, denoisers, edm, flow, losses, processes, schedules
from jaxdiff import score_matching
from jaxdiff import sde as sde_lib
from jaxdiff.config import categorical

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
LossFn = Callable[[ModelFn, jax.Array, jax.Array], jax.Array]

OBJECTIVES = ("ddpm", "sde_dsm", "ncsn", "flow", "edm", "consistency_training",
              "consistency_distillation") + categorical.OBJECTIVES
CONSISTENCY = ("consistency_training", "consistency_distillation")
CURRICULA = ("ict", "ct")
CT_METRICS = ("pseudo_huber", "l2")
SDES = ("vpsde", "subvpsde", "vesde")  # config.diffusion.sde for "sde_dsm" (jaxdiff.sde)
SDE_TIME_SCALE = 999.0


def schedule_from_config(diffusion_config: ml_collections.ConfigDict) -> schedules.Schedule:
  """The noise schedule named by `config.diffusion.schedule` with `num_timesteps` steps."""
  return schedules.make_schedule(diffusion_config.schedule, diffusion_config.num_timesteps)


def sde_from_config(diffusion_config: ml_collections.ConfigDict) -> Any:
  """The SDE of a run (Song et al. 2021, Sec. 3.4).

  `config.diffusion.sde` with its parameters and N = `num_scales` steps.
  """
  vesde = diffusion_config.sde == "vesde"
  ranges = ("sigma_min", "sigma_max") if vesde else ("beta_min", "beta_max")
  return sde_lib.get_sde(diffusion_config.sde, N=diffusion_config.num_scales,
                         **{name: diffusion_config[name] for name in ranges})


def process_from_config(diffusion_config: ml_collections.ConfigDict) -> Any:
  """The run's noise process: the discrete schedule ("ddpm"), the SDE ("sde_dsm"), the sigma
  axis `processes.EDMProcess(sigma_min, sigma_max)` ("ncsn": NCSN's ladder; "edm"), or the
  interpolant `processes.FlowProcess(interpolant)` ("flow")."""
  objective = diffusion_config.objective
  if objective == "ddpm":
    return schedule_from_config(diffusion_config)
  if objective in ("ncsn", "edm") or objective in CONSISTENCY:
    return processes.EDMProcess(sigma_min=diffusion_config.sigma_min,
                                sigma_max=diffusion_config.sigma_max)
  if objective == "flow":
    return processes.FlowProcess(interpolant=diffusion_config.interpolant)
  return sde_from_config(diffusion_config)


def denoiser_from_config(diffusion_config: ml_collections.ConfigDict, model_fn: ModelFn,
                         *, learned_variance: bool = False,
                         process: Any = None) -> denoisers.Denoiser:
  """The denoiser of a trained model on the run's process (`process_from_config`, or the
  given `process`, e.g. an imported model's schedule).

  "ddpm": `config.diffusion.prediction` at integer (or, for the continuous samplers,
  fractional) timesteps; "sde_dsm": eps at t * 999; "ncsn": the score model(x, i) / sigma_i
  at the nearest ladder level i; "flow": the velocity at t * 999; "edm": the preconditioned
  x0 (`edm_model_fn`).
  """
  objective = diffusion_config.objective
  if objective in categorical.OBJECTIVES:
    raise ValueError(f"objective {objective!r} is discrete-state: it has no Gaussian denoiser "
                     "(see jaxdiff.config.categorical)")
  process = process_from_config(diffusion_config) if process is None else process
  if objective == "ddpm":
    return denoisers.make_denoiser(model_fn, process, prediction=diffusion_config.prediction,
                                   learned_variance=learned_variance)
  if objective == "ncsn":
    return denoisers.make_denoiser(ncsn_score_fn(diffusion_config, model_fn), process,
                                   prediction="score")
  if objective == "edm":
    return denoisers.make_denoiser(edm_model_fn(diffusion_config, model_fn), process,
                                   prediction="x0")
  if objective in CONSISTENCY:
    return denoisers.make_denoiser(consistency_model_fn(diffusion_config, model_fn), process,
                                   prediction="x0")
  prediction = "velocity" if objective == "flow" else "eps"
  return denoisers.make_denoiser(jax.tree_util.Partial(_continuous_output, model_fn), process,
                                 prediction=prediction)


def ncsn_sigmas(diffusion_config: ml_collections.ConfigDict) -> jax.Array:
  """NCSN's ascending geometric noise ladder (Song & Ermon 2019, Sec. 4.2), `num_scales` long."""
  return sde_lib.geometric_sigmas(diffusion_config.sigma_min, diffusion_config.sigma_max,
                                  diffusion_config.num_scales)


def _continuous_output(model_fn: ModelFn, x: jax.Array, t: jax.Array) -> jax.Array:
  """The output of a continuous-time model (noise, velocity or EDM's F), called at
  t * SDE_TIME_SCALE (the first C channels of its output)."""
  return model_fn(x, t * SDE_TIME_SCALE)[..., :x.shape[-1]]


def edm_model_fn(diffusion_config: ml_collections.ConfigDict, model_fn: ModelFn) -> ModelFn:
  """The x0 prediction D(x; sigma) of an "edm" model: `jaxdiff.edm.precondition` of the
  network F(c_in x, c_noise * 999)."""
  return edm.precondition(jax.tree_util.Partial(_continuous_output, model_fn),
                          sigma_data=diffusion_config.sigma_data,
                          process=process_from_config(diffusion_config))


def continuous_score_fn(diffusion_config: ml_collections.ConfigDict,
                        model_fn: ModelFn) -> sde_lib.ScoreFn:
  """score(x, t) = -model(x, t * 999) / sigma_t of an "sde_dsm" model, t in [eps, 1]
  (Song et al. 2021, eq. 28)."""
  sde = sde_from_config(diffusion_config)
  return sde_lib.score_from_eps(jax.tree_util.Partial(_continuous_output, model_fn), sde)


def sigma_index(sigmas: jax.Array, sigma: jax.Array) -> jax.Array:
  """int32 index [B] of each sigma in the ladder `sigmas` (the nearest in log scale)."""
  distance = jnp.abs(jnp.log(sigmas)[None, :] - jnp.log(sigma)[:, None])
  return jnp.argmin(distance, axis=1).astype(jnp.int32)


def _ncsn_score(model_fn: ModelFn, sigmas: jax.Array, x: jax.Array,
                sigma: jax.Array) -> jax.Array:
  return model_fn(x, sigma_index(sigmas, sigma)) / sde_lib.broadcast_to_x(sigma, x)


def ncsn_score_fn(diffusion_config: ml_collections.ConfigDict,
                  model_fn: ModelFn) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """score(x, sigma) = model(x, i) / sigma_i of an "ncsn" model, sigma [B] from the ladder."""
  return jax.tree_util.Partial(_ncsn_score, model_fn, ncsn_sigmas(diffusion_config))


def flow_time_options(diffusion_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The keyword arguments of `jaxdiff.flow.sample_time` that `config.diffusion` sets."""
  return dict(distribution=diffusion_config.time_distribution, loc=diffusion_config.logit_mean,
              scale=diffusion_config.logit_std, mode_scale=diffusion_config.mode_scale,
              shift=diffusion_config.time_shift)


def consistency_model_fn(diffusion_config: ml_collections.ConfigDict,
                         model_fn: ModelFn) -> jax.tree_util.Partial:
  """f(x, sigma) of a "consistency_training" network (`jaxdiff.consistency`)."""
  return consistency.consistency_model_fn(model_fn, sigma_data=diffusion_config.sigma_data,
                                          sigma_min=diffusion_config.sigma_min)


@dataclasses.dataclass(frozen=True)
class CurriculumLoss:
  """A loss that depends on the training step k: ``fn(model_fn, x0, rng, step)``; the
  training step calls ``at_step(k)`` for the usual `LossFn`."""

  fn: Callable[..., jax.Array]

  def at_step(self, step: jax.Array) -> LossFn:
    return functools.partial(self.fn, step=step)


def _consistency_loss(diffusion_config: ml_collections.ConfigDict, teacher: Any,
                      model_fn: ModelFn, x0: jax.Array, rng: jax.Array, *,
                      step: jax.Array) -> jax.Array:
  """Consistency training (no teacher) or distillation at step k (module docstring), [B]."""
  c = diffusion_config
  ict = c.curriculum == "ict"
  curriculum = consistency.ict_num_scales if ict else consistency.ct_num_scales
  num = curriculum(step, total_steps=c.curriculum_steps, s0=c.ct_s0, s1=c.ct_s1)
  bounds = consistency.padded_boundaries(num, size=c.ct_s1 + 1, sigma_min=c.sigma_min,
                                         sigma_max=c.sigma_max, rho=c.rho)
  probs = consistency.interval_probs(bounds, lognormal=ict, p_mean=c.ct_p_mean,
                                     p_std=c.ct_p_std)
  if c.ct_metric == "pseudo_huber":
    dim = math.prod(x0.shape[1:])
    metric = functools.partial(consistency.pseudo_huber, c=consistency.huber_constant(dim))
  else:
    metric = consistency.squared_l2
  f = consistency_model_fn(c, model_fn)
  return consistency.consistency_loss(f, f, x0, rng, boundaries=bounds, probs=probs,
                                      weights=consistency.ict_weights(bounds) if ict else None,
                                      metric=metric, teacher=teacher, solver=c.cd_solver)


def consistency_loss_fn(diffusion_config: ml_collections.ConfigDict, *,
                        teacher: Any = None) -> CurriculumLoss:
  """The loss of "consistency_training" (teacher None) or "consistency_distillation" (the
  teacher's denoiser, of any process)."""
  return CurriculumLoss(functools.partial(_consistency_loss, diffusion_config, teacher))


def make_loss_fn(diffusion_config: ml_collections.ConfigDict) -> LossFn | CurriculumLoss:
  """`loss_fn(model_fn, x0, rng) -> per-example loss [B]` for `config.diffusion.objective`."""
  objective = diffusion_config.objective
  if objective in categorical.OBJECTIVES:
    return categorical.make_loss_fn(diffusion_config)
  if objective == "ddpm":
    schedule = schedule_from_config(diffusion_config)
    options = dict(prediction=diffusion_config.prediction,
                   loss_type=diffusion_config.loss_type, weighting=diffusion_config.weighting,
                   variance=diffusion_config.variance,
                   min_snr_gamma=diffusion_config.min_snr_gamma)
    return lambda model_fn, x0, rng: losses.diffusion_loss(model_fn, schedule, x0, rng,
                                                           **options)
  if objective == "sde_dsm":
    sde = sde_from_config(diffusion_config)
    return lambda model_fn, x0, rng: score_matching.continuous_dsm_loss(
        continuous_score_fn(diffusion_config, model_fn), sde, x0, rng,
        eps=diffusion_config.sde_eps,
        likelihood_weighting=diffusion_config.likelihood_weighting)
  if objective == "ncsn":
    sigmas = ncsn_sigmas(diffusion_config)
    return lambda model_fn, x0, rng: score_matching.ncsn_loss(
        ncsn_score_fn(diffusion_config, model_fn), x0, rng, sigmas=sigmas)
  if objective == "flow":
    process = process_from_config(diffusion_config)
    times = flow_time_options(diffusion_config)
    return lambda model_fn, x0, rng: flow.flow_matching_loss(
        jax.tree_util.Partial(_continuous_output, model_fn), x0, rng, process=process, **times)
  if objective == "edm":
    options = dict(sigma_data=diffusion_config.sigma_data, p_mean=diffusion_config.p_mean,
                   p_std=diffusion_config.p_std)
    return lambda model_fn, x0, rng: edm.edm_loss(
        jax.tree_util.Partial(_continuous_output, model_fn), x0, rng, **options)
  if objective == "consistency_training":
    return consistency_loss_fn(diffusion_config)
  if objective == "consistency_distillation":
    raise ValueError("config.diffusion.objective='consistency_distillation' needs its teacher: "
                     "build the loss with consistency_loss_fn(config, teacher=denoiser).")
  raise ValueError(f"config.diffusion.objective={objective!r} is not one of {OBJECTIVES}.")
