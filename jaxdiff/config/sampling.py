"""The samplers a run can use, by name, and what each needs: the one table of the tools.

Every sampler of the runner (`jaxdiff.samplers.SAMPLERS`: ddpm, ddim, dpm_solver_pp_2m,
edm_heun, pc, ald, euler, heun, midpoint) runs on every objective's process, plus:

- "ode": the adaptive probability-flow solve (Tsit5, rtol = atol = 1e-3, diffrax);
- "inpaint": ddpm with the known pixels of an image (inputs "image" and "mask"; RePaint's
  jump_length / resample_count);
- "sdedit": ddpm started from a noised image (input "image"; strength);
- "d3pm", "unmask": the samplers of the discrete objectives "d3pm" and "masked"
  (`jaxdiff.config.categorical`), which take no Gaussian sampler.

Any runner sampler also inpaints when given an image and a mask, and edits (SDEdit) when
given an image alone. `check_fits` asks the runner itself whether a request can run, so the
tools, the config validation and the runner cannot disagree.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections

from jaxdiff import samplers
from jaxdiff.config import categorical, objectives
from jaxdiff.samplers import runner


@dataclasses.dataclass(frozen=True)
class Entry:
  """A name of the tools: the runner sampler it runs and the inputs it needs."""
  sampler: str                          # a name of jaxdiff.samplers.SAMPLERS, or "ode"
  inputs: tuple[str, ...] = ()          # "image", "mask"
  summary: str = ""


SAMPLERS: dict[str, Entry] = {
    **{name: Entry(name, summary=spec.summary) for name, spec in samplers.SAMPLERS.items()},
    "ode": Entry("ode", summary="probability-flow ODE, adaptive Tsit5 (diffrax)"),
    "inpaint": Entry("ddpm", ("image", "mask"), "ddpm keeping the known pixels (RePaint)"),
    "sdedit": Entry("ddpm", ("image",), "ddpm from a noised image (SDEdit)"),
    **{name: Entry(name, summary=summary) for name, summary in categorical.SAMPLERS.items()},
}

# Samplers that need nothing but the model: the choices of config.sample.sampler.
GRID_SAMPLERS = tuple(name for name, entry in SAMPLERS.items() if not entry.inputs)


def default_options(name: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The runner options a run's config sets for sampler ``name``: DDIM's eta, the ancestral
  sampler's variance, ALD's step size and levels (NCSN's ladder: one level per scale), and
  the fewstep sampler's renoise (0 for a progressive-distillation student, 1 otherwise)."""
  sampler = SAMPLERS[name].sampler
  options: dict[str, Any] = {}
  if sampler == "ddim":
    options["eta"] = config.sample.eta
  if sampler == "ddpm" and config.diffusion.objective == "ddpm":
    options["variance"] = config.diffusion.variance
  if sampler == "ald":
    options.update(step_lr=config.sample.ald_step_lr, denoise=True)
  if sampler == "fewstep":  # A distilled student steps deterministically (DDIM).
    options["renoise"] = 0.0 if config.distill.teacher_workdir is not None else 1.0
  return options


def grid_request(name: str, config: ml_collections.ConfigDict,
                 num_steps: Optional[int]) -> dict[str, Any]:
  """The runner's grid arguments for ``num_steps`` (None: the sampler's default); ald's
  steps are per noise level, over the ladder of ``config.diffusion.num_scales`` levels."""
  if SAMPLERS[name].sampler == "ald":
    return {"num_steps": config.diffusion.num_scales, "steps_per_level": num_steps or 100}
  return {"num_steps": num_steps}


def _probe(config: ml_collections.ConfigDict) -> Any:
  """The run's denoiser around a stand-in model (for checks that need no parameters)."""
  learned = bool(config.model.get("learn_sigma", False))
  return objectives.denoiser_from_config(config.diffusion, _stand_in,
                                         learned_variance=learned)


def _stand_in(x: jax.Array, t: jax.Array) -> jax.Array:
  del t
  return jnp.zeros_like(x)


def check_fits(name: str, config: ml_collections.ConfigDict, *,
               num_steps: Optional[int] = None, **options: Any) -> None:
  """Raises ValueError when sampler ``name`` is unknown or cannot sample this run with
  ``num_steps`` (None: its default) and ``options``: the runner's own checks, before any
  compilation."""
  if name not in SAMPLERS:
    raise ValueError(f"sampler {name!r} does not exist; choose one of {', '.join(SAMPLERS)}")
  if categorical.is_categorical(config) or name in categorical.SAMPLERS:
    categorical.check_sampler(name, config, num_steps)
    return
  if SAMPLERS[name].sampler == "ode":
    return
  shape = (1, config.data.image_size, config.data.image_size, config.data.channels)
  request = grid_request(name, config, num_steps)
  runner.prepare(_probe(config), jax.random.PRNGKey(0), shape, sampler=SAMPLERS[name].sampler,
                 **request, **{**default_options(name, config), **options})
