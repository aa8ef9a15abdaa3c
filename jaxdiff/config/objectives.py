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

The score functions built here serve both the losses and the samplers
(`jaxdiff.config.sampling`), so training and sampling cannot disagree on them.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxdiff import losses, schedules, score_matching
from jaxdiff import sde as sde_lib

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
LossFn = Callable[[ModelFn, jax.Array, jax.Array], jax.Array]

OBJECTIVES = ("ddpm", "sde_dsm", "ncsn")
SDES = ("vpsde", "subvpsde", "vesde")  # config.diffusion.sde for "sde_dsm" (jaxdiff.sde)
SDE_TIME_SCALE = 999.0


def schedule_from_config(diffusion_config: ml_collections.ConfigDict) -> schedules.Schedule:
  """The noise schedule named by `config.diffusion.schedule` with `num_timesteps` steps."""
  return schedules.make_schedule(diffusion_config.schedule, diffusion_config.num_timesteps)


def sde_from_config(diffusion_config: ml_collections.ConfigDict) -> Any:
  """The SDE of a run (Song et al. 2021, Sec. 3.4).

  "sde_dsm": `config.diffusion.sde` with its parameters and N = `num_scales` steps. "ddpm":
  VPSDE(N=T), whose discretization is the linear DDPM chain (eq. 10) that
  `continuous_score_fn` bridges to. "ncsn" has no SDE (see `ncsn_sigmas`).
  """
  objective = diffusion_config.objective
  if objective == "ddpm":
    return sde_lib.VPSDE(N=diffusion_config.num_timesteps)
  if objective != "sde_dsm":
    raise ValueError(f"objective {objective!r} has no SDE; expected 'ddpm' or 'sde_dsm'.")
  vesde = diffusion_config.sde == "vesde"
  ranges = ("sigma_min", "sigma_max") if vesde else ("beta_min", "beta_max")
  return sde_lib.get_sde(diffusion_config.sde, N=diffusion_config.num_scales,
                         **{name: diffusion_config[name] for name in ranges})


def ncsn_sigmas(diffusion_config: ml_collections.ConfigDict) -> jax.Array:
  """NCSN's ascending geometric noise ladder (Song & Ermon 2019, Sec. 4.2), `num_scales` long."""
  return sde_lib.geometric_sigmas(diffusion_config.sigma_min, diffusion_config.sigma_max,
                                  diffusion_config.num_scales)


def _eps_channels(model_fn: ModelFn, x: jax.Array, t: jax.Array) -> jax.Array:
  """The eps prediction: the first C channels of the output (all of them unless the model
  also learns its variance)."""
  return model_fn(x, t)[..., :x.shape[-1]]


def _continuous_eps(model_fn: ModelFn, x: jax.Array, t: jax.Array) -> jax.Array:
  """The noise prediction of a continuous-time model, called at t * SDE_TIME_SCALE."""
  return _eps_channels(model_fn, x, t * SDE_TIME_SCALE)


def continuous_score_fn(diffusion_config: ml_collections.ConfigDict,
                        model_fn: ModelFn) -> sde_lib.ScoreFn:
  """score(x, t) for t in [eps, 1] of a "ddpm" or "sde_dsm" model (Song et al. 2021, eq. 28).

  "sde_dsm": -model(x, t * 999) / sigma_t. "ddpm" (eps prediction): the discrete bridge
  `sde.score_from_eps(model_fn, VPSDE(N=T), schedule=schedule)`.
  """
  sde = sde_from_config(diffusion_config)
  if diffusion_config.objective == "sde_dsm":
    return sde_lib.score_from_eps(jax.tree_util.Partial(_continuous_eps, model_fn), sde)
  if diffusion_config.prediction != "eps":
    raise ValueError(f"config.diffusion.prediction={diffusion_config.prediction!r}: the SDE "
                     "samplers need an eps-prediction model ('eps').")
  return sde_lib.score_from_eps(jax.tree_util.Partial(_eps_channels, model_fn), sde,
                                schedule=schedule_from_config(diffusion_config))


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


def make_loss_fn(diffusion_config: ml_collections.ConfigDict) -> LossFn:
  """`loss_fn(model_fn, x0, rng) -> per-example loss [B]` for `config.diffusion.objective`."""
  objective = diffusion_config.objective
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
  raise ValueError(f"config.diffusion.objective={objective!r} is not one of {OBJECTIVES}.")
