"""Few-step sampling of distilled models: multistep consistency sampling and its DDIM limit.

A step from s to t (or the clean end) takes the model's data prediction x0 = f(x_s, s) and
noises it afresh to t (Song et al. 2023, Algorithm 1, with alpha_t, sigma_t of any process):

    x_t = alpha_t x0 + sigma_t (sqrt(1 - r^2) eps_hat + r z),

so ``renoise`` r = 1 is multistep consistency sampling (the consistency model's output is
the data, and every step restarts the trajectory from fresh noise; Song et al. add noise of
std sqrt(t^2 - sigma_min^2), which differs from sigma_t by sigma_min^2 / (2 t)), and r = 0 is
the deterministic DDIM step a progressively distilled student was trained for (Salimans & Ho
2022). The default grid is "nested" (`jaxdiff.samplers.grids`): the times a progressive
distillation round trains on; a run's native step count is its config's.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from jaxdiff.samplers.spec import SamplerSpec, StepInput, batch_time, scalar

Array = Any


def fewstep_step(denoiser: Any, x: Array, state: Array, inp: StepInput, key: Array,
                 opts: Mapping[str, Any]) -> tuple[Array, Array]:
  """One step from s to t (module docstring)."""
  out = denoiser(x, batch_time(inp.s.t, x))
  r = jnp.asarray(opts["renoise"], x.dtype)
  noise = jax.random.normal(key, x.shape, x.dtype)
  direction = jnp.sqrt(1.0 - r**2) * out.eps + r * noise
  return scalar(inp.t.alpha, x) * out.x0 + scalar(inp.t.sigma, x) * direction, state


def check_renoise(process: Any, opts: Mapping[str, Any], num_steps: int) -> None:
  """Raises ValueError unless renoise lies in [0, 1]."""
  del process, num_steps
  if "renoise" in opts and not 0.0 <= float(opts["renoise"]) <= 1.0:
    raise ValueError(f"renoise must lie in [0, 1] (1 = consistency sampling, 0 = DDIM), got "
                     f"{float(opts['renoise'])!r}")


FEWSTEP = SamplerSpec(
    name="fewstep", step=fewstep_step, grid="nested", continuous_grid="nested",
    options={"renoise": 1.0}, default_steps=1, continuous_steps=1, stochastic=True,
    noise_option="renoise", validate=check_renoise,
    summary="few-step: multistep consistency sampling (renoise 1), distilled DDIM (renoise 0)")
