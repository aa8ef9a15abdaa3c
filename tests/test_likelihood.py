"""Tests of jaxdiff.likelihood: ODE log-likelihood and bits/dim with exact scores of Gaussians."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxdiff import likelihood
from jaxdiff import sde as sde_lib
from tests import analytic_sde

COV = np.array([[0.6, 0.3], [0.3, 0.9]])
POINTS = np.array([[0.3, -0.2], [1.5, 0.8], [-1.0, 2.0]])
EPS = 1e-5
SDES = {"vp": sde_lib.VPSDE, "subvp": sde_lib.SubVPSDE, "ve": sde_lib.VESDE}


def _log_p(kind, mean, x, t):
  m, s = analytic_sde.gaussian_marginal(kind, mean, COV, t)
  return stats.multivariate_normal(m, s).logpdf(x)


@pytest.mark.parametrize("kind", sorted(SDES))
def test_exact_trace_log_likelihood_equals_the_analytic_density(x64, kind):
  # The ODE computes log p_prior(z) + [log p_eps(x) - log p_1(z)] with z the exact flow of x to
  # t = 1 (pf_ode_map): the prior's mismatch with p_1 is the only difference from log p_eps(x),
  # and it is added to the analytic value here (without it VP is off by 0.4%, VE by 1.2%).
  # The issue asks for 1e-3 relative; with rtol = atol = 1e-7 the measured error is <= 2e-7, so
  # the test asks for 1e-5.
  mean = np.array([0.5, -1.0])
  sde = SDES[kind]()
  score = analytic_sde.gaussian_score(kind, mean, COV)
  logp, z, nfe = likelihood.ode_log_likelihood(score, sde, jnp.asarray(POINTS),
                                               jax.random.PRNGKey(0), trace="exact",
                                               rtol=1e-7, atol=1e-7, eps=EPS)
  chex.assert_shape(logp, (3,))
  z_true = analytic_sde.pf_ode_map(kind, mean, COV, POINTS, EPS, 1.0)
  np.testing.assert_allclose(z, z_true, rtol=1e-4, atol=1e-4 * float(sde.prior_std))
  prior = stats.norm.logpdf(z_true, scale=float(sde.prior_std)).sum(1)
  expected = _log_p(kind, mean, POINTS, EPS) + prior - _log_p(kind, mean, z_true, 1.0)
  np.testing.assert_allclose(logp, expected, rtol=1e-5)
  assert 10 < int(nfe) < 1000


def test_vp_log_likelihood_of_centred_data_is_the_data_density(x64):
  # For zero-mean data p_1 = N(0, I + alpha_1^2 (C - I)) and alpha_1^2 = 4e-5: the prior's
  # mismatch is ~1e-5 nats, so the ODE gives log p_eps(x) directly (1e-3 relative).
  mean = np.zeros(2)
  score = analytic_sde.gaussian_score("vp", mean, COV)
  logp, _, _ = likelihood.ode_log_likelihood(score, sde_lib.VPSDE(), jnp.asarray(POINTS),
                                             jax.random.PRNGKey(0), trace="exact", eps=EPS)
  np.testing.assert_allclose(logp, stats.multivariate_normal(mean, COV).logpdf(POINTS),
                             rtol=1e-3)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_estimate_is_unbiased(x64, probe):
  # 512 copies of one point, one probe each; the mean of the estimates is within 4.5 standard
  # errors of the exact-trace value, and the estimates do vary (the probes are random).
  mean = np.array([0.5, -1.0])
  score = analytic_sde.gaussian_score("vp", mean, COV)
  x = jnp.asarray(np.repeat(POINTS[1:2], 512, axis=0))
  exact, _, _ = likelihood.ode_log_likelihood(score, sde_lib.VPSDE(), x[:1],
                                              jax.random.PRNGKey(0), trace="exact", eps=EPS)
  estimates, _, _ = likelihood.ode_log_likelihood(score, sde_lib.VPSDE(), x,
                                                  jax.random.PRNGKey(1), trace=probe, eps=EPS)
  estimates = np.asarray(estimates)
  se = estimates.std(ddof=1) / np.sqrt(len(estimates))
  assert se > 1e-3
  assert abs(estimates.mean() - float(exact[0])) < 4.5 * se


def test_dequantized_bits_per_dim_bounds_the_discrete_likelihood(x64):
  # Zero-mean Gaussian "pixels" with std ~ 0.3. For y uniform in a bin of width w = 2 / 256,
  # E_u log N(y; 0, S) = log N(c; 0, S) - (w^2 / 12) tr(S^{-1}) / 2 exactly (c = bin centre), so
  # the expected bpd is analytic; the mean over 256 dequantizations is within 4.5 standard
  # errors of it. It upper-bounds the exact -log2 P(bin) / d (Jensen) and is within 1e-4 bits.
  cov = np.diag([0.09, 0.16])
  score = analytic_sde.gaussian_score("vp", np.zeros(2), cov)
  pixels = np.array([100, 180])
  x = jnp.asarray(np.repeat((pixels / 127.5 - 1.0)[None], 256, axis=0))
  bpd, nfe = likelihood.bits_per_dim(score, sde_lib.VPSDE(), x, jax.random.PRNGKey(2),
                                     trace="exact", eps=EPS)
  chex.assert_shape(bpd, (256,))
  w = 2.0 / 256.0
  lo = pixels * w - 1.0
  centre = lo + w / 2
  _, s_eps = analytic_sde.gaussian_marginal("vp", np.zeros(2), cov, EPS)
  e_logp = (stats.multivariate_normal(np.zeros(2), s_eps).logpdf(centre)
            - 0.5 * w**2 / 12.0 * np.trace(np.linalg.inv(s_eps)))
  expected = -e_logp / (2 * np.log(2.0)) + 7.0
  bpd = np.asarray(bpd)
  se = bpd.std(ddof=1) / np.sqrt(len(bpd))
  assert abs(bpd.mean() - expected) < 4.5 * se + 1e-5
  sd = np.sqrt(np.diag(cov))
  mass = stats.norm.cdf((lo + w) / sd) - stats.norm.cdf(lo / sd)
  exact_bpd = -np.sum(np.log2(mass)) / 2
  assert exact_bpd - 1e-5 < expected < exact_bpd + 1e-4
  assert int(nfe) > 0
  plain, _ = likelihood.bits_per_dim(score, sde_lib.VPSDE(), x[:1], jax.random.PRNGKey(2),
                                     trace="exact", dequantize=False, eps=EPS)
  np.testing.assert_allclose(
      plain, -stats.multivariate_normal(np.zeros(2), s_eps).logpdf(np.asarray(x[0]))
      / (2 * np.log(2.0)), rtol=1e-3)


def test_bad_inputs_raise():
  score = analytic_sde.gaussian_score("vp", np.zeros(2), COV)
  x = jnp.zeros((2, 2))
  rng = jax.random.PRNGKey(0)
  sde = sde_lib.VPSDE()
  with pytest.raises(ValueError, match="unknown trace estimator 'hutch'"):
    likelihood.ode_log_likelihood(score, sde, x, rng, trace="hutch")
  with pytest.raises(ValueError, match="unknown ODE solver 'rk45'"):
    likelihood.ode_log_likelihood(score, sde, x, rng, solver="rk45")
  with pytest.raises(ValueError, match=r"eps must lie in \(0, 1\), got 1.0"):
    likelihood.bits_per_dim(score, sde, x, rng, eps=1.0)
  with pytest.raises(ValueError, match="shaped like x"):
    likelihood.ode_log_likelihood(lambda y, t: y[:, :1], sde, x, rng)
