"""The SDEs' marginal coefficients from Song et al. 2021, written from the equations
independently of jaxdiff (the test oracle), and `jaxdiff.testing`'s exact targets on them.

Perturbation kernel x_t = alpha_t x0 + sigma_t z with (eq. 29, 33 and the VE sigma(t)):
  VP:     log alpha_t = -t^2 (b1 - b0) / 4 - t b0 / 2,   sigma_t^2 = 1 - alpha_t^2
  sub-VP: same alpha_t,                                  sigma_t = 1 - alpha_t^2
  VE:     alpha_t = 1,                                   sigma_t = s0 (s1 / s0)^t
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import testing

VP = dict(beta_min=0.1, beta_max=20.0)
VE = dict(sigma_min=0.01, sigma_max=50.0)


def coeffs(kind: str, t):
  """(alpha_t, sigma_t) for kind in {"vp", "subvp", "ve"} with DESIGN.md's default constants."""
  if kind == "ve":
    return jnp.ones_like(t), VE["sigma_min"] * (VE["sigma_max"] / VE["sigma_min"]) ** t
  b0, b1 = VP["beta_min"], VP["beta_max"]
  alpha = jnp.exp(-0.25 * t**2 * (b1 - b0) - 0.5 * t * b0)
  if kind == "vp":
    return alpha, jnp.sqrt(1.0 - alpha**2)
  return alpha, 1.0 - alpha**2


def _float_coeffs(kind: str, t: float) -> tuple[float, float]:
  return tuple(float(v) for v in coeffs(kind, np.float64(t)))


def gaussian_marginal(kind: str, mean: np.ndarray, cov: np.ndarray, t: float):
  """Mean and covariance of p_t for Gaussian data N(mean, cov), float64 NumPy."""
  return testing.gaussian_marginal(mean, cov, *_float_coeffs(kind, t))


def gaussian_score(kind: str, mean: np.ndarray, cov: np.ndarray):
  """The exact score(x, t) of Gaussian data under the SDE `kind`; x is [B, d]."""
  return testing.model_fn(testing.GaussianMixture.gaussian(mean, cov),
                          lambda t: coeffs(kind, t), prediction="score")


def pf_ode_map(kind: str, mean, cov, x, t_from: float, t_to: float) -> np.ndarray:
  """Exact probability-flow ODE map from t_from to t_to for Gaussian data (rows of x)."""
  return testing.gaussian_pf_map(mean, cov, _float_coeffs(kind, t_from),
                                 _float_coeffs(kind, t_to), x)


def affine_pushforward(sampler, score_fn, sde, dim: int, **kw):
  """(mean, covariance, evaluations) of a deterministic `jaxdiff.sde_samplers` sampler's output
  for x_T ~ N(0, prior_std^2 I) (`testing.affine_pushforward`)."""
  nfe = []

  def run(x_T):
    out, count = sampler(score_fn, sde, jax.random.PRNGKey(0), x_T.shape, x_T=x_T, **kw)
    nfe.append(int(count))
    return out

  mean, cov = testing.affine_pushforward(run, dim, float(sde.prior_std))
  return mean, cov, nfe[0]


gaussian_kl = testing.gaussian_kl
