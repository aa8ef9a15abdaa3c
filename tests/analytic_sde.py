"""Closed-form marginals and scores of Gaussian and Gaussian-mixture data under the SDEs of
Song et al. 2021, written from the equations independently of jaxdiff (the test oracle).

Perturbation kernel x_t = alpha_t x0 + sigma_t z with (eq. 29, 33 and the VE sigma(t)):
  VP:     log alpha_t = -t^2 (b1 - b0) / 4 - t b0 / 2,   sigma_t^2 = 1 - alpha_t^2
  sub-VP: same alpha_t,                                  sigma_t = 1 - alpha_t^2
  VE:     alpha_t = 1,                                   sigma_t = s0 (s1 / s0)^t
so Gaussian data N(m, C) has marginal N(alpha_t m, alpha_t^2 C + sigma_t^2 I).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

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


def gaussian_marginal(kind: str, mean: np.ndarray, cov: np.ndarray, t: float):
  """Mean and covariance of p_t for Gaussian data N(mean, cov), float64 NumPy."""
  alpha, sigma = (float(v) for v in coeffs(kind, np.float64(t)))
  return alpha * mean, alpha**2 * cov + sigma**2 * np.eye(len(mean))


def gaussian_score(kind: str, mean: np.ndarray, cov: np.ndarray):
  """score(x, t) = -(alpha^2 C + sigma^2 I)^{-1} (x - alpha m) for data N(m, C); x is [B, d].

  Constants become jax arrays here, in the caller's float precision (x64 or not).
  """
  evals, evecs = (jnp.asarray(a) for a in np.linalg.eigh(cov))
  mean = jnp.asarray(mean)

  def score_fn(x, t):
    alpha, sigma = coeffs(kind, t)
    centred = (x - alpha[:, None] * mean) @ evecs
    var = alpha[:, None] ** 2 * evals + sigma[:, None] ** 2
    return (-centred / var) @ evecs.T
  return score_fn


def mixture_logp_and_score(weights, means, std: float, x, alpha, sigma):
  """log p and score of sum_k w_k N(alpha m_k, (alpha^2 std^2 + sigma^2) I) at x [B, d];
  alpha, sigma are [B]."""
  var = (alpha**2 * std**2 + sigma**2)[:, None]
  d = x.shape[1]
  diff = x[:, None, :] - alpha[:, None, None] * means[None]
  logits = (jnp.log(weights)[None] - 0.5 * jnp.sum(diff**2, -1) / var
            - 0.5 * d * jnp.log(2 * jnp.pi * var))
  resp = jax.nn.softmax(logits, axis=1)
  return jax.nn.logsumexp(logits, axis=1), -jnp.sum(resp[..., None] * diff, 1) / var


def pf_ode_map(kind: str, mean, cov, x, t_from: float, t_to: float) -> np.ndarray:
  """Exact probability-flow ODE map from t_from to t_to for Gaussian data (rows of x).

  The PF ODE is linear with a velocity that commutes with C, so it maps N(m_a, S_a) to
  N(m_b, S_b) by x -> m_b + S_b^{1/2} S_a^{-1/2} (x - m_a) (S's share C's eigenvectors).
  """
  m_a, s_a = gaussian_marginal(kind, mean, cov, t_from)
  m_b, s_b = gaussian_marginal(kind, mean, cov, t_to)
  ea, v = np.linalg.eigh(s_a)
  eb = np.diag(v.T @ s_b @ v)
  a = v @ np.diag(np.sqrt(eb / ea)) @ v.T
  return m_b + (np.asarray(x) - m_a) @ a.T


def affine_pushforward(sampler, score_fn, sde, dim: int, **kw):
  """Mean and covariance of a deterministic sampler's output for x_T ~ N(0, prior_std^2 I).

  With a Gaussian's affine score every solver step is affine in x, so the sampler is
  x_T -> c + M x_T: c = sampler(0), M e_i = sampler(e_i) - c; the output is exactly
  N(c, prior_std^2 M M^T) (no Monte Carlo error).
  """
  x_T = np.concatenate([np.zeros((1, dim)), np.eye(dim)])
  out, nfe = sampler(score_fn, sde, jax.random.PRNGKey(0), (dim + 1, dim), x_T=jnp.asarray(x_T),
                     **kw)
  out = np.asarray(out, np.float64)
  m = (out[1:] - out[0]).T
  return out[0], float(sde.prior_std) ** 2 * m @ m.T, int(nfe)


def gaussian_kl(m0, s0, m1, s1) -> float:
  """KL(N(m0, s0) || N(m1, s1)) in nats."""
  d = len(m0)
  s1_inv = np.linalg.inv(s1)
  diff = m1 - m0
  return 0.5 * (np.trace(s1_inv @ s0) + diff @ s1_inv @ diff - d
                + np.linalg.slogdet(s1)[1] - np.linalg.slogdet(s0)[1])
