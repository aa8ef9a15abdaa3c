"""Log-likelihood and bits/dim through the probability-flow ODE (Song et al. 2021, App. D.2).

Along the ODE dx/dt = f~(x, t) = f(x, t) - g(t)^2 score(x, t) / 2 (eq. 13), the instantaneous
change of variables (Chen et al. 2018, Thm. 1) gives

    log p_eps(x(eps)) = log p_1(x(1)) + int_eps^1 div f~(x(t), t) dt          (eq. 39)

solved forward from t = eps to t_max = 1 (of an SDE or a flow) as one augmented ODE. The divergence is the exact Jacobian trace
(one forward-mode pass per dimension: small dimension) or the Skilling-Hutchinson estimate
E_v[v^T (df~/dx) v] with one Rademacher or Gaussian probe v per example, fixed over the solve
(Grathwohl et al. 2019, FFJORD).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import denoisers, sde as sde_lib
from jaxdiff.sde_samplers.ode import (check_name, check_solver, probability_flow_drift, solve_ode,
                                      validate)

Array = jax.Array

TRACES = ("exact", "gaussian", "rademacher")


def _exact_divergence(drift: Any, t: Array, x: Array) -> Array:
  """tr(d drift / dx) per example from its exact per-example Jacobian, shape [B]."""
  def single(xi_flat: Array) -> Array:
    return jnp.ravel(drift(t, jnp.reshape(xi_flat, (1,) + x.shape[1:]))[0])
  jac = jax.vmap(jax.jacfwd(single))(jnp.reshape(x, (x.shape[0], -1)))
  return jnp.trace(jac, axis1=1, axis2=2)


def _hutchinson_divergence(drift: Any, t: Array, x: Array, probe: Array) -> Array:
  """v^T (d drift / dx) v per example, an unbiased estimate of the divergence (E[v v^T] = I)."""
  _, jv = jax.jvp(lambda y: drift(t, y), (x,), (probe,))
  return jnp.sum(jnp.reshape(probe * jv, (x.shape[0], -1)), axis=1)


def ode_log_likelihood(score_fn: sde_lib.ScoreFn, sde: Any, x: Array, rng: Array, *,
                       trace: str = "rademacher", solver: str = "dopri5", rtol: float = 1e-5,
                       atol: float = 1e-5, num_steps: int | None = None,
                       eps: float = 1e-5) -> tuple[Array, Array, Array]:
  """log p_eps(x) in nats per example through the probability-flow ODE (Song et al. 2021,
  eq. 39) from t = eps to the process's t_max, with trace "exact", or Skilling-Hutchinson with
  "rademacher" / "gaussian" probes.

  ``score_fn(x, t)`` is a score model, or a denoiser of `jaxdiff.denoisers` (whose velocity
  alpha' x0 + sigma' eps is the drift; a flow model integrates to t = 1 exactly, where its
  prior N(0, I) is the exact marginal); ``sde`` is any process of `jaxdiff.processes`. Its
  arrays (a `jax.tree_util.Partial`'s parameters) are traced: new parameters do not recompile.

  Returns (logp [B], z = x(t_max), number of score evaluations; the exact trace costs d
  forward-mode passes per evaluation).
  """
  check_name(trace, TRACES, "trace estimator")
  check_solver(solver, num_steps)
  validate(score_fn, x.shape, eps, sde)
  return _log_likelihood(denoisers.traceable(score_fn, name="score_fn"), sde, x, rng,
                         trace=trace, solver=solver, rtol=rtol, atol=atol, num_steps=num_steps,
                         eps=eps)


@functools.partial(jax.jit, static_argnames=("trace", "solver", "rtol", "atol", "num_steps",
                                             "eps"))
def _log_likelihood(score: denoisers.Traceable, sde: Any, x: Array, rng: Array, *, trace: str,
                    solver: str, rtol: float, atol: float, num_steps: int | None,
                    eps: float) -> tuple[Array, Array, Array]:
  field = score.fn if denoisers.is_denoiser(score.fn) else score
  drift = probability_flow_drift(field, sde)
  if trace == "gaussian":
    probe = jax.random.normal(rng, x.shape, x.dtype)
  else:
    probe = jax.random.rademacher(rng, x.shape, x.dtype)

  def augmented(t: Array, state: tuple[Array, Array]) -> tuple[Array, Array]:
    y, _ = state
    if trace == "exact":
      return drift(t, y), _exact_divergence(drift, t, y)
    return drift(t, y), _hutchinson_divergence(drift, t, y, probe)

  init = (x, jnp.zeros((x.shape[0],), x.dtype))
  (z, delta_logp), nfe = solve_ode(augmented, init, t0=eps, t1=sde.t_max, solver=solver,
                                   rtol=rtol, atol=atol, num_steps=num_steps)
  return sde.prior_logp(z) + delta_logp, z, nfe


def bits_per_dim(score_fn: sde_lib.ScoreFn, sde: Any, x: Array, rng: Array, *,
                 dequantize: bool = True, trace: str = "rademacher", solver: str = "dopri5",
                 rtol: float = 1e-5, atol: float = 1e-5, num_steps: int | None = None,
                 eps: float = 1e-5) -> tuple[Array, Array]:
  """Bits/dim of images x in [-1, 1] on the 256-level grid (Song et al. 2021, App. D.2).

  With uniform dequantization (Theis et al. 2016; Ho et al. 2020) pixel k = 127.5 (x + 1) becomes
  y = 2 (k + u) / 256 - 1, u ~ U[0, 1)^d, and -log P(k) <= -E_u log p(y) + d log 128, so

      bpd = -log p(y) / (d ln 2) + 7

  is an upper bound in expectation over u. dequantize=False gives -log p(x) / (d ln 2) for
  continuous data. ``score_fn`` and ``sde`` as in `ode_log_likelihood`. Returns (bpd [B],
  number of score evaluations).
  """
  rng_u, rng_probe = jax.random.split(rng)
  dim = np.prod(x.shape[1:])
  if dequantize:
    k = jnp.round((x + 1.0) * 127.5)
    y = 2.0 * (k + jax.random.uniform(rng_u, x.shape, x.dtype)) / 256.0 - 1.0
    offset = np.log2(128.0)
  else:
    y, offset = x, 0.0
  logp, _, nfe = ode_log_likelihood(score_fn, sde, y, rng_probe, trace=trace, solver=solver,
                                    rtol=rtol, atol=atol, num_steps=num_steps, eps=eps)
  return -logp / (dim * np.log(2.0)) + offset, nfe
