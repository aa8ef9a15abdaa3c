"""Samplers: one chain runner over one table of step functions, for every noise process.

``sample(denoiser, rng, shape, sampler=NAME, ...)`` runs any sampler of ``SAMPLERS`` on a
denoiser (`jaxdiff.denoisers.make_denoiser(model_fn, process, prediction=...)`) of any
process (a discrete `Schedule`, an SDE of `jaxdiff.sde`, `jaxdiff.processes.EDMProcess`):

- ``ddpm``: ancestral sampling (Ho et al. 2020, Algorithm 2); ``ddim``: DDIM (Song et al.
  2021, eq. 12, any eta); ``dpm_solver_pp_2m``: DPM-Solver++(2M) (Lu et al. 2022b);
  ``edm_heun``: EDM's Heun sampler (Karras et al. 2022, Algorithms 1 and 2); ``pc``:
  predictor-corrector (Song et al. 2021, Algorithm 1); ``ald``: annealed Langevin dynamics
  (Song & Ermon 2019); ``euler``, ``heun``, ``midpoint``: fixed-step solvers of the
  probability-flow ODE (Song et al. 2021, eq. 13).

Every sampler accepts ``num_steps``, an explicit grid (``timesteps`` of a Schedule,
``times`` of the process, or EDM ``sigmas``), inpainting (``known``, ``mask``, RePaint's
``jump_length`` / ``resample_count``), SDEdit (``start``, ``strength``) and trajectories;
denoiser wrappers (`jaxdiff.denoisers.clip`, ``map_x0`` with ``dynamic_threshold``,
``classifier_guidance``) and model wrappers (``classifier_free_guidance``) compose with all
of them. The whole chain is one ``lax.scan`` in one ``jax.jit``; a new parameter set (a
``jax.tree_util.Partial(apply_fn, params)`` model) reuses the compiled program, and every
sampler also runs inside a caller's own jit. A batch-sharded ``x_T`` runs sharded.

The DESIGN.md functions ``ddpm``, ``ddim``, ``ddim_invert``, ``inpaint`` and ``sdedit``
take ``model_fn(x_t, t)`` (int32 [B] original timesteps) and a schedule; see
`jaxdiff.samplers.discrete`.
"""

from jaxdiff.samplers.discrete import ddim, ddim_invert, ddpm, inpaint, sdedit
from jaxdiff.samplers.grids import GRID_KINDS, karras_sigmas
from jaxdiff.samplers.guidance import classifier_free_guidance, classifier_guidance
from jaxdiff.samplers.runner import sample
from jaxdiff.samplers.table import SAMPLERS
from jaxdiff.samplers.thresholding import dynamic_threshold

__all__ = [
    "GRID_KINDS",
    "SAMPLERS",
    "classifier_free_guidance",
    "classifier_guidance",
    "ddim",
    "ddim_invert",
    "ddpm",
    "dynamic_threshold",
    "inpaint",
    "karras_sigmas",
    "sample",
    "sdedit",
]
