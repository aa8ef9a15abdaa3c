"""The samplers of a model trained on a discrete schedule, by the signatures of DESIGN.md.

``ddpm``, ``ddim``, ``ddim_invert``, ``inpaint`` and ``sdedit`` take ``model_fn(x_t, t)``
(int32 [B] original timesteps of ``schedule``) and the schedule, build the denoiser of
`jaxdiff.denoisers` with its wrappers from their options, and run the chain runner
(`jaxdiff.samplers.runner`) on the schedule's strided timesteps. Their options:

- ``prediction``: "eps" | "x0" | "v" | "score" | "mean"; ``variance`` (ddpm): "fixed_small",
  "fixed_large", "learned", "learned_range" (a learned variance means 2C output channels);
- ``clip_denoised``: clip the predicted x0 to [-1, 1] (`denoisers.clip`); ``denoised_fn``: a
  map of x0 before the clip (e.g. dynamic thresholding, `denoisers.map_x0`);
- ``cond_fn``: classifier guidance (`classifier_guidance`): the ancestral samplers shift
  their mean by variance * cond_fn (Dhariwal & Nichol 2021, Algorithm 1), DDIM shifts eps
  (Algorithm 2, `denoisers.classifier_guidance`).

As in Ho et al.'s code, the ancestral samplers use a "mean" model's predicted mean as it is:
clipping and ``denoised_fn`` change only the x0 that DDIM uses.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxdiff import denoisers
from jaxdiff.samplers import checks, ddim as ddim_lib, grids, runner
from jaxdiff.samplers.ancestral import check_variance
from jaxdiff.samplers.spec import pair_inputs
from jaxdiff.schedules import Schedule

Array = Any
ModelFn = Callable[[Array, Array], Array]


def data_range_maps(denoiser: Any, *, clip_denoised: bool,
                    x0_fn: Optional[Callable[[Array], Array]], ancestral: bool) -> Any:
  """``denoiser`` with ``x0_fn`` (e.g. dynamic thresholding) and then clipping of x0 applied;
  a "mean" model on the ancestral sampler keeps its mean, as in Ho et al.'s code."""
  if ancestral and denoiser.prediction == "mean":
    return denoiser
  if x0_fn is not None:
    denoiser = denoisers.map_x0(denoiser, x0_fn)
  return denoisers.clip(denoiser) if clip_denoised else denoiser


def _denoiser(model_fn: ModelFn, schedule: Schedule, *, prediction: str, variance: str,
              clip_denoised: bool, denoised_fn: Optional[Callable[[Array], Array]],
              eps_cond_fn: Optional[ModelFn] = None, ancestral: bool = False) -> Any:
  """make_denoiser with the x0 maps and classifier guidance the options ask for."""
  check_variance(variance)
  den = denoisers.make_denoiser(model_fn, schedule, prediction=prediction,
                                learned_variance=variance.startswith("learned"))
  den = data_range_maps(den, clip_denoised=clip_denoised, x0_fn=denoised_fn,
                        ancestral=ancestral)
  if eps_cond_fn is not None:
    den = denoisers.classifier_guidance(den, eps_cond_fn)
  return den


def ddpm(model_fn: ModelFn, schedule: Schedule, rng: Array, shape: Sequence[int], *,
         num_steps: Optional[int] = None, prediction: str = "eps",
         variance: str = "fixed_small", clip_denoised: bool = True, x_T: Optional[Array] = None,
         return_trajectory: bool = False, timesteps: Optional[Sequence[int]] = None,
         trajectory_stride: int = 1, denoised_fn: Optional[Callable[[Array], Array]] = None,
         cond_fn: Optional[ModelFn] = None) -> Array | tuple[Array, Array]:
  """Ancestral sampling, Ho et al. 2020, Algorithm 2, on the full or a respaced chain.

  ``num_steps=None`` runs all T steps; N keeps ``space_timesteps(T, "ddimN")``;
  ``timesteps`` (ascending originals) instead. With ``return_trajectory`` also returns
  x_T, the state after every ``trajectory_stride``-th step and x_0. Other options: module
  docstring. Raises ValueError on bad input (before compiling).
  """
  den = _denoiser(model_fn, schedule, prediction=prediction, variance=variance,
                  clip_denoised=clip_denoised, denoised_fn=denoised_fn, ancestral=True)
  return runner.sample(den, rng, shape, sampler="ddpm", num_steps=num_steps,
                       timesteps=timesteps, x_T=x_T, variance=variance, mean_shift_fn=cond_fn,
                       trajectory_stride=trajectory_stride if return_trajectory else None)


def ddim(model_fn: ModelFn, schedule: Schedule, rng: Optional[Array], shape: Sequence[int], *,
         num_steps: int = 50, eta: float | Array = 0.0,
         timesteps: Optional[Sequence[int]] = None, prediction: str = "eps",
         clip_denoised: bool = True, x_T: Optional[Array] = None,
         variance: str = "fixed_small", denoised_fn: Optional[Callable[[Array], Array]] = None,
         cond_fn: Optional[ModelFn] = None, return_trajectory: bool = False,
         trajectory_stride: int = 1) -> Array | tuple[Array, Array]:
  """DDIM, Song et al. 2021, eq. 12 with the noise of eq. 16, on ``num_steps`` evenly
  strided timesteps (or the given ascending ``timesteps``). ``eta`` is traced (sweeping it
  does not recompile); ``rng`` may be None for eta = 0 from a given ``x_T``. ``variance``
  only tells a learned-variance model's 2C channels apart. Raises ValueError on bad input.
  """
  den = _denoiser(model_fn, schedule, prediction=prediction, variance=variance,
                  clip_denoised=clip_denoised, denoised_fn=denoised_fn, eps_cond_fn=cond_fn)
  return runner.sample(den, rng, shape, sampler="ddim", num_steps=None if timesteps is not None else num_steps,
                       timesteps=timesteps, x_T=x_T, eta=eta,
                       trajectory_stride=trajectory_stride if return_trajectory else None)


def inpaint(model_fn: ModelFn, schedule: Schedule, rng: Array, x_known: Array, mask: Array, *,
            num_steps: Optional[int] = None, prediction: str = "eps",
            variance: str = "fixed_small", clip_denoised: bool = True, jump_length: int = 1,
            resample_count: int = 1, x_T: Optional[Array] = None,
            timesteps: Optional[Sequence[int]] = None,
            denoised_fn: Optional[Callable[[Array], Array]] = None,
            cond_fn: Optional[ModelFn] = None) -> Array:
  """Ancestral sampling of the unknown region given known pixels (``mask`` nonzero, same
  rank as ``x_known``, each dim equal or 1); ``resample_count > 1`` adds RePaint's
  resampling with jumps of ``jump_length`` steps (Lugmayr et al. 2022, Algorithm 1). The
  known pixels of the output equal ``x_known`` exactly. Raises ValueError on bad input."""
  den = _denoiser(model_fn, schedule, prediction=prediction, variance=variance,
                  clip_denoised=clip_denoised, denoised_fn=denoised_fn, ancestral=True)
  return runner.sample(den, rng, sampler="ddpm", num_steps=num_steps, timesteps=timesteps,
                       x_T=x_T, known=jnp.asarray(x_known), mask=mask,
                       jump_length=jump_length, resample_count=resample_count,
                       variance=variance, mean_shift_fn=cond_fn)


def sdedit(model_fn: ModelFn, schedule: Schedule, rng: Array, x0: Array, *, strength: float,
           num_steps: Optional[int] = None, prediction: str = "eps",
           variance: str = "fixed_small", clip_denoised: bool = True,
           denoised_fn: Optional[Callable[[Array], Array]] = None,
           cond_fn: Optional[ModelFn] = None,
           timesteps: Optional[Sequence[int]] = None) -> Array:
  """SDEdit (Meng et al. 2022, Algorithm 1): of the N-step chain, the guide image is noised to
  the start of its last n = ceil(strength N) steps (Ho et al. eq. 4), which ancestral
  sampling then runs. ``strength`` in (0, 1]. Raises ValueError on bad input."""
  den = _denoiser(model_fn, schedule, prediction=prediction, variance=variance,
                  clip_denoised=clip_denoised, denoised_fn=denoised_fn, ancestral=True)
  return runner.sample(den, rng, sampler="ddpm", num_steps=num_steps, timesteps=timesteps,
                       start=jnp.asarray(x0), strength=strength, variance=variance,
                       mean_shift_fn=cond_fn)


@functools.partial(jax.jit, static_argnames=("timesteps", "fixed_point_iterations"))
def _ddim_invert(den: Any, x0: Array, *, timesteps: tuple[int, ...],
                 fixed_point_iterations: int) -> Array:
  inputs = pair_inputs(den.process, jnp.asarray(timesteps[::-1], jnp.int32), ends_clean=True)

  def step(carry: tuple[Array], k: Array) -> tuple[Array]:
    inp = jax.tree_util.tree_map(lambda a: a[k], inputs)
    return (ddim_lib.ddim_inverse_step(den, carry[0], inp,
                                       fixed_point_iterations=fixed_point_iterations),)

  (x,), _ = runner.run_chain(step, (x0,), jnp.arange(len(timesteps) - 1, -1, -1))
  return x


def ddim_invert(model_fn: ModelFn, schedule: Schedule, x0: Array, *, num_steps: int = 50,
                timesteps: Optional[Sequence[int]] = None, prediction: str = "eps",
                variance: str = "fixed_small", fixed_point_iterations: int = 0) -> Array:
  """DDIM inversion: the deterministic map x_0 -> x_T inverting eta = 0 :func:`ddim` on the
  same timesteps (Song et al. 2021, Sec. 4.3; Dhariwal & Nichol 2021, App. F), one model call
  per step plus one per fixed-point iteration (`ddim.ddim_inverse_step`), so that
  ``ddim(x_T=ddim_invert(x0), eta=0, clip_denoised=False)`` reconstructs x0 ever more closely
  for a smooth model. Raises ValueError on bad input."""
  if isinstance(fixed_point_iterations, bool) or not isinstance(fixed_point_iterations, int) \
      or fixed_point_iterations < 0:
    raise ValueError(f"fixed_point_iterations must be an int >= 0, got "
                     f"{fixed_point_iterations!r}")
  den = _denoiser(model_fn, schedule, prediction=prediction, variance=variance,
                  clip_denoised=False, denoised_fn=None)
  x0 = jnp.asarray(x0)
  checks.check_shape(x0.shape)
  kept = grids.strided_timesteps(schedule.num_timesteps,
                                 num_steps=None if timesteps is not None else num_steps, timesteps=timesteps)
  return _ddim_invert(den, x0, timesteps=tuple(int(k) for k in kept),
                      fixed_point_iterations=fixed_point_iterations)
