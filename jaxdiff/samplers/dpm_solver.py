"""DPM-Solver++(2M), the multistep second-order solver of the diffusion ODE in data
prediction (Lu, Zhou, Bao, Chen, Li & Zhu 2022b, "DPM-Solver++", Algorithm 2), on any process.

With half log-SNRs l = lambda / 2 = log(alpha / sigma), h_i = l_i - l_{i-1} and
r_i = h_{i-1} / h_i:

    D_i = (1 + 1 / (2 r_i)) x0(x_{i-1}) - 1 / (2 r_i) x0(x_{i-2})
    x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (exp(-h_i) - 1) D_i

and the first step is first order (D_1 = x0(x_0): DPM-Solver++1 is DDIM), as is a step whose
h or h_{i-1} is infinite: a step from alpha = 0 (the noise end of a flow) or to sigma = 0
(a grid ending at the data), where the multistep correction has no finite limit. One model
evaluation per step. Its default grid is uniform in lambda from t_max to t_min (Lu et al.
2022a, Sec. 3.3), and it returns x at t_min.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

from jaxdiff.samplers.spec import SamplerSpec, StepInput, batch_time, scalar

Array = Any


def dpm_solver_2m_step(denoiser: Any, x: Array, state: tuple[Array, Array], inp: StepInput,
                       key: Array, opts: Mapping[str, Any]) -> tuple[Array, Any]:
  """One step of Algorithm 2; ``state`` is (the previous data prediction, its step's h),
  h = 0 before the first step, which makes that step first order."""
  del key, opts
  s, t = inp.s, inp.t
  x0_prev, h_prev = state
  x0 = denoiser(x, batch_time(s.t, x)).x0
  h = 0.5 * (t.log_snr - s.log_snr)
  first = (h_prev == 0) | ~jnp.isfinite(h) | ~jnp.isfinite(h_prev)
  c = jnp.where(first, 0.0, h / (2.0 * jnp.where(first, 1.0, h_prev)))
  d = (1.0 + scalar(c, x)) * x0 - scalar(c, x) * x0_prev
  x = scalar(t.sigma / s.sigma, x) * x - scalar(t.alpha * jnp.expm1(-h), x) * d
  return x, (x0, h)


def _initial_state(x: Array) -> tuple[Array, Array]:
  return jnp.zeros_like(x), jnp.zeros((), jnp.result_type(float))


DPM_SOLVER_PP_2M = SamplerSpec(
    name="dpm_solver_pp_2m", step=dpm_solver_2m_step, grid="logSNR", continuous_grid="logSNR",
    ends_clean=False, endpoint=True, default_steps=20, continuous_steps=20, init_state=_initial_state,
    markov=False, summary="DPM-Solver++(2M), Lu et al. 2022b Algorithm 2 (ends at t_min)")
