"""UniPC, the unified predictor-corrector of Zhao, Bai, Rao, Zhou & Lu 2023 ("UniPC: A unified
predictor-corrector framework for fast sampling of diffusion models"), in data prediction with
B(h) = e^h - 1 ("bh2"), on any process.

With half log-SNRs l = lambda / 2 = log(alpha / sigma), a step from s to t of length
h = l_t - l_s, the data predictions m_0 = x0(x_s, s) and m_i at the p - 1 earlier points
l_{s_i} (r_i = (l_{s_i} - l_s) / h, D_i = (m_i - m_0) / r_i), and hh = -h:

    x_t' = (sigma_t / sigma_s) x_s - alpha_t (e^hh - 1) m_0                       (DDIM)
    UniP-p:  x_t = x_t' - alpha_t B(h) sum_i rho^p_i D_i                           (Alg. 1)
    UniC-p:  x_t^c = x_t' - alpha_t B(h) (sum_i rho^c_i D_i + rho^c_p (m_t - m_0))  (Alg. 2)

where m_t = x0(x_t, t) is evaluated at the predictor's output and reused by the next step, so
the corrector costs no evaluation: N steps take N evaluations (the last step has no corrector).
The rho solve R rho = b with R_kj = r_j^(k - 1) (r_p = 1) and b_k = (k - 1)! phi_{k+1}(hh) /
B(h) (phi_1 = e^hh - 1, phi_{k+1} = phi_k / hh - 1 / k!) (Sec. 3.1, Theorem 3.1); UniP-2
takes rho = 1/2 and UniC-1 rho = 1/2, as in the authors' code. The order p is ``order``
lowered to the points already evaluated (a multistep warm-up), to the steps left (lower order
at the end) and to 1 where h or an earlier step is infinite (from alpha = 0, or to sigma = 0).
The default grid is uniform in lambda (a flow's: uniform in t), ending at t_min.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from jaxdiff.samplers.spec import SamplerSpec, StepInput, batch_time, pair_inputs, scalar

Array = Any
MAX_ORDER = 3


def _coefficients(h: Array, rks: Array, order: int) -> tuple[Array, Array, Array, Array]:
  """(e^hh - 1, B(h), rho of UniP-order, rho of UniC-order) for hh = -h and the ratios ``rks``
  [order - 1] of the earlier points (module docstring)."""
  hh = -h
  h_phi_1 = jnp.expm1(hh)
  b_h = jnp.expm1(hh)
  r = jnp.concatenate([rks, jnp.ones((1,), rks.dtype)])
  h_phi_k, factorial, b = h_phi_1 / hh - 1.0, 1.0, []
  for k in range(1, order + 1):
    b.append(h_phi_k * factorial / b_h)
    factorial *= k + 1
    h_phi_k = h_phi_k / hh - 1.0 / factorial
  b = jnp.stack(b)
  powers = jnp.stack([r ** (k - 1) for k in range(1, order + 1)])
  if order == 1:
    return h_phi_1, b_h, jnp.zeros((0,), h.dtype), jnp.full((1,), 0.5, h.dtype)
  rho_p = (jnp.full((1,), 0.5, h.dtype) if order == 2
           else jnp.linalg.solve(powers[:-1, :-1], b[:-1]))
  return h_phi_1, b_h, rho_p, jnp.linalg.solve(powers, b)


def _weighted(rho: Array, diffs: Array) -> Array:
  """sum_i rho_i D_i over the leading axis of ``diffs``."""
  return jnp.tensordot(rho.astype(diffs.dtype), diffs, axes=1)


def _updates(x: Array, m_s: Array, m_t: Array, models: Array, lams: Array, h: Array,
             inp: StepInput, order: int) -> tuple[Array, Array]:
  """(UniP-order prediction, UniC-order correction) of x at t (module docstring)."""
  l_s = 0.5 * inp.s.log_snr
  rks = (lams[1:order] - l_s) / h
  diffs = (models[1:order] - m_s) / rks.reshape((-1,) + (1,) * x.ndim).astype(x.dtype)
  h_phi_1, b_h, rho_p, rho_c = _coefficients(h, rks, order)
  alpha_t = scalar(inp.t.alpha, x)
  base = scalar(inp.t.sigma / inp.s.sigma, x) * x - alpha_t * scalar(h_phi_1, x) * m_s
  scale = alpha_t * scalar(b_h, x)
  predicted = base - scale * _weighted(rho_p, diffs) if order > 1 else base
  corrected = base - scale * (_weighted(rho_c[:-1], diffs) + scalar(rho_c[-1], x) * (m_t - m_s))
  return predicted, corrected


def _order(state: tuple[Array, Array, Array], inp: StepInput, h: Array,
           opts: Mapping[str, Any]) -> Array:
  """The order of this step: ``order`` lowered to the finite points evaluated so far, the
  steps left, and 1 for an infinite step."""
  _, lams, count = state
  usable = (jnp.arange(MAX_ORDER) < count) & jnp.isfinite(lams)
  usable = usable.at[0].set(True)
  depth = jnp.sum(jnp.cumprod(usable))
  left = opts["num_steps"] - inp.extra["index"]
  order = jnp.minimum(jnp.minimum(opts["order"], depth), left)
  return jnp.where(jnp.isfinite(h), order, 1)


def unipc_step(denoiser: Any, x: Array, state: tuple[Array, Array, Array], inp: StepInput,
               key: Array, opts: Mapping[str, Any]) -> tuple[Array, Any]:
  """One UniPC step from s to t; ``state`` holds the last data predictions (newest first),
  their half log-SNRs and how many were evaluated."""
  del key
  models, lams, count = state
  l_s, l_t = 0.5 * inp.s.log_snr, 0.5 * inp.t.log_snr
  m_s = jax.lax.cond(count == 0, lambda: denoiser(x, batch_time(inp.s.t, x)).x0,
                     lambda: models[0])
  models, lams, count = models.at[0].set(m_s), lams.at[0].set(l_s), jnp.maximum(count, 1)
  h = l_t - l_s
  order = _order((models, lams, count), inp, h, opts)

  def by_order(m_t: Array) -> tuple[Array, Array]:
    outs = [_updates(x, m_s, m_t, models, lams, h, inp, p) for p in range(1, opts["order"] + 1)]
    pick = lambda k: sum(jnp.where(order == p + 1, out[k], 0.0) for p, out in enumerate(outs))
    return pick(0), pick(1)

  predicted, _ = by_order(m_s)

  def correct(_: Any) -> tuple[Array, Any]:
    m_t = denoiser(predicted, batch_time(inp.t.t, x)).x0
    corrected = by_order(m_t)[1]
    shifted = (jnp.concatenate([m_t[None], models[:-1]]),
               jnp.concatenate([l_t[None].astype(lams.dtype), lams[:-1]]), count + 1)
    return corrected, shifted

  last = inp.extra["index"] == opts["num_steps"] - 1
  return jax.lax.cond(last, lambda _: (predicted, (models, lams, count)), correct, None)


def unipc_inputs(process: Any, times: Array, opts: Mapping[str, Any]) -> StepInput:
  """Pair steps with each step's index in the grid."""
  del opts
  inp = pair_inputs(process, times, ends_clean=False)
  return inp.replace(extra={"index": jnp.arange(inp.s.t.shape[0])})


def _initial_state(x: Array) -> tuple[Array, Array, Array]:
  dtype = jnp.result_type(float)
  return (jnp.zeros((MAX_ORDER,) + x.shape, x.dtype), jnp.zeros((MAX_ORDER,), dtype),
          jnp.zeros((), jnp.int32))


def _check_options(process: Any, opts: Mapping[str, Any], num_steps: int) -> None:
  del process, num_steps
  if opts["order"] not in range(1, MAX_ORDER + 1) or isinstance(opts["order"], bool):
    raise ValueError(f"order must be 1, 2 or 3 (UniPC-p), got {opts['order']!r}")


UNIPC = SamplerSpec(
    name="unipc", step=unipc_step, inputs=unipc_inputs, grid="logSNR", continuous_grid="logSNR",
    ends_clean=False, endpoint=True, default_steps=20, continuous_steps=20,
    init_state=_initial_state, markov=False, validate=_check_options, options={"order": 2},
    summary="UniPC-bh2 with the UniC corrector, Zhao et al. 2023 (ends at t_min)")
