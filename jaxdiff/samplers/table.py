"""The one sampler table: every sampler the runner knows, by name."""

from __future__ import annotations

from jaxdiff.samplers import ancestral, ddim, dpm_solver, edm, fewstep, ode_steps, pc, unipc
from jaxdiff.samplers.spec import SamplerSpec

SAMPLERS: dict[str, SamplerSpec] = {spec.name: spec for spec in (
    ancestral.DDPM, ddim.DDIM, dpm_solver.DPM_SOLVER_PP_2M, edm.EDM_HEUN, pc.PC, pc.ALD,
    ode_steps.EULER, ode_steps.HEUN, ode_steps.MIDPOINT, unipc.UNIPC, fewstep.FEWSTEP)}
