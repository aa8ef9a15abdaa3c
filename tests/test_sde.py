"""Tests of jaxdiff.sde: the VP / sub-VP / VE SDEs against their equations (Song et al. 2021)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxdiff import sde as sde_lib
from jaxdiff.schedules import make_schedule
from tests import analytic_sde

KINDS = {"vp": sde_lib.VPSDE, "subvp": sde_lib.SubVPSDE, "ve": sde_lib.VESDE}
TIMES = np.array([1e-3, 0.05, 0.3, 0.7, 1.0])


def _drift_coef_and_g2(kind, t):
  """f(x, t) = c(t) x and g(t)^2 written from Song et al. 2021, eq. 11, 12 and 30."""
  b0, b1 = 0.1, 20.0
  beta = b0 + t * (b1 - b0)
  if kind == "vp":
    return -0.5 * beta, beta
  if kind == "subvp":
    return -0.5 * beta, beta * (1.0 - np.exp(-2.0 * (b0 * t + 0.5 * (b1 - b0) * t**2)))
  s0, s1 = 0.01, 50.0
  return 0.0 * t, (s0 * (s1 / s0) ** t) ** 2 * 2.0 * np.log(s1 / s0)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_drift_diffusion_and_marginals_match_equations(x64, kind):
  sde = KINDS[kind]()
  x = np.linspace(-2.0, 2.0, 10).reshape(5, 2)
  t = jnp.asarray(TIMES)
  drift, diffusion = sde.sde(jnp.asarray(x), t)
  coef, g2 = _drift_coef_and_g2(kind, TIMES)
  chex.assert_shape(drift, (5, 2))
  chex.assert_shape(diffusion, (5,))
  np.testing.assert_allclose(drift, coef[:, None] * x, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(diffusion**2, g2, rtol=1e-12)
  mean, std = sde.marginal_prob(jnp.asarray(x), t)
  alpha, sigma = analytic_sde.coeffs(kind, TIMES)
  np.testing.assert_allclose(mean, np.asarray(alpha)[:, None] * x, rtol=1e-12)
  np.testing.assert_allclose(std, sigma, rtol=1e-12)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_marginals_solve_the_moment_equations(x64, kind):
  # For a linear SDE dx = c(t) x dt + g dw the kernel's moments obey dm/dt = c m and
  # d(sigma^2)/dt = 2 c sigma^2 + g^2 (Sarkka & Solin 2019, eq. 5.51). This ties marginal_prob
  # to sde() with no closed form: derivatives by forward-mode AD.
  sde = KINDS[kind]()
  x0 = jnp.ones((len(TIMES), 1))
  t = jnp.asarray(TIMES)

  def moments(tt):
    mean, std = sde.marginal_prob(x0, tt)
    return mean[:, 0], std**2

  (mean, var), (dmean, dvar) = jax.jvp(moments, (t,), (jnp.ones_like(t),))
  coef, g2 = _drift_coef_and_g2(kind, TIMES)
  np.testing.assert_allclose(dmean, coef * mean, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(dvar, 2.0 * coef * var + g2, rtol=1e-10)


def test_vp_marginal_variance_matches_discrete_linear_schedule(x64):
  n = 1000
  ab = np.asarray(make_schedule("linear", n, dtype=jnp.float64).alphas_cumprod)
  betas = np.asarray(make_schedule("linear", n, dtype=jnp.float64).betas)
  t = (np.arange(n) + 1.0) / n  # step i <-> t_i = (i + 1) / N (sde.continuous_to_discrete)
  _, std = sde_lib.VPSDE(N=n).marginal_prob(jnp.ones((n, 1)), jnp.asarray(t))
  # log alphas_cumprod_i = sum log(1 - beta_j) differs from -int_0^{t_i} beta by at most
  # sum beta_j^2 (from -log(1 - b) - b <= b^2 for b <= 1/2) plus the Riemann error of the
  # midpoint-shifted sum, (beta_max - beta_min) (i + 1) / (2 N^2); so
  # |sigma_t^2 - (1 - ab_i)| <= ab_i (exp(bound_i) - 1).
  bound = np.cumsum(betas**2) + 19.9 * (np.arange(n) + 1) / (2.0 * n**2)
  diff = np.abs(np.asarray(std) ** 2 - (1.0 - ab))
  assert np.all(diff <= ab * np.expm1(bound))
  assert diff.max() < 1e-3


def test_vp_discretization_is_ddpm_chain(x64):
  n = 1000
  schedule = make_schedule("linear", n, dtype=jnp.float64)
  sde = sde_lib.VPSDE(N=n)
  t = jnp.asarray((np.arange(n) + 1.0) / n)
  x = jnp.linspace(-1.0, 1.0, n)[:, None]
  f, g = sde.discretize(x, t)
  betas = np.asarray(schedule.betas)
  np.testing.assert_allclose(g**2, betas, rtol=1e-12)
  # x_{i+1} = x + f + G z = sqrt(1 - beta_i) x + sqrt(beta_i) z: DDPM's q(x_{i+1} | x_i).
  np.testing.assert_allclose(x + f, np.sqrt(1.0 - betas)[:, None] * np.asarray(x), rtol=1e-12)


def test_ve_discretization_telescopes_to_marginal_variance(x64):
  sde = sde_lib.VESDE(N=50)
  t = jnp.asarray((np.arange(50) + 1.0) / 50)
  _, g = sde.discretize(jnp.zeros((50, 1)), t)
  sigmas = 0.01 * (50.0 / 0.01) ** (np.arange(50) / 49.0)
  np.testing.assert_allclose(np.cumsum(np.asarray(g) ** 2), sigmas**2, rtol=1e-10)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_marginal_variance_matches_monte_carlo(kind):
  # Euler-Maruyama paths from x0 = 1 with 1000 midpoint steps (bias O(dt) ~ 1e-3 relative) and
  # n = 40000 paths: the sample variance has relative standard error sqrt(2 / n) = 0.7% and the
  # mean a standard error of std / sqrt(n); tolerances are 4.5 standard errors plus 0.5%.
  sde = KINDS[kind]()
  n, steps = 40000, 1000
  dt = 1.0 / steps
  check_at = {249: 0.25, 599: 0.6, 999: 1.0}

  def step(x, inputs):
    i, key = inputs
    t_mid = jnp.full((1,), (i + 0.5) * dt)
    drift, g = sde.sde(x, t_mid)
    x = x + drift * dt + g * jnp.sqrt(dt) * jax.random.normal(key, x.shape)
    return x, x[:, 0]

  keys = jax.random.split(jax.random.PRNGKey(0), steps)
  _, path = jax.jit(lambda: jax.lax.scan(step, jnp.ones((n, 1)), (jnp.arange(steps), keys)))()
  for i, t in check_at.items():
    mean, std = sde.marginal_prob(jnp.ones((1, 1)), jnp.array([t]))
    var = float(std[0]) ** 2
    samples = np.asarray(path[i], np.float64)
    assert abs(samples.var() / var - 1.0) < 4.5 * np.sqrt(2.0 / n) + 5e-3
    assert abs(samples.mean() - float(mean[0, 0])) < 4.5 * np.sqrt(var / n) + 5e-3 * np.sqrt(var)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_prior_sampling_and_logp(x64, kind):
  sde = KINDS[kind]()
  std = 50.0 if kind == "ve" else 1.0
  z = sde.prior_sampling(jax.random.PRNGKey(1), (20000, 3))
  chex.assert_shape(z, (20000, 3))
  # 60000 draws: the sample std has relative standard error 1 / sqrt(2 * 60000) = 0.3%.
  assert abs(float(jnp.std(z)) / std - 1.0) < 0.012
  pts = np.array([[0.1, -0.3, 2.0], [1.5, 0.0, -40.0]])
  np.testing.assert_allclose(sde.prior_logp(jnp.asarray(pts)),
                             stats.norm.logpdf(pts, scale=std).sum(1), rtol=1e-12)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_log_snr_inverse(x64, kind):
  sde = KINDS[kind]()
  t = jnp.asarray(TIMES)
  alpha, sigma = analytic_sde.coeffs(kind, TIMES)
  lam = sde.log_snr(t)  # the full log-SNR log(alpha^2 / sigma^2) (Kingma et al. 2021, eq. 3)
  np.testing.assert_allclose(lam, 2.0 * np.log(np.asarray(alpha) / np.asarray(sigma)),
                             rtol=1e-12)
  np.testing.assert_allclose(sde.t_from_log_snr(lam), TIMES, rtol=1e-8)


@pytest.mark.parametrize("probability_flow", [False, True])
def test_reverse_sde_and_probability_flow(x64, probability_flow):
  sde = sde_lib.VPSDE()
  x = jnp.asarray([[0.5, -1.0], [2.0, 0.25]])
  t = jnp.asarray([0.2, 0.9])

  def score_fn(x, t):
    return -x * t[:, None] ** 2

  rsde = sde.reverse(score_fn, probability_flow=probability_flow)
  drift, g = rsde.sde(x, t)
  coef, g2 = _drift_coef_and_g2("vp", np.asarray(t))
  weight = 0.5 if probability_flow else 1.0
  expected = coef[:, None] * x - weight * g2[:, None] * np.asarray(score_fn(x, t))
  np.testing.assert_allclose(drift, expected, rtol=1e-12)
  np.testing.assert_allclose(g, 0.0 if probability_flow else np.sqrt(g2), rtol=1e-12)
  f_disc, g_disc = rsde.discretize(x, t)
  f_fwd, g_fwd = sde.discretize(x, t)
  np.testing.assert_allclose(
      f_disc, f_fwd - weight * g_fwd[:, None] ** 2 * score_fn(x, t), rtol=1e-12)
  assert rsde.N == sde.N


def test_sde_is_a_pytree_under_jit_and_vmap():
  def std_at(sde, t):
    return sde.marginal_prob(jnp.ones((t.shape[0], 2)), t)[1]

  t = jnp.array([0.1, 0.5])
  out = jax.jit(std_at)(sde_lib.VPSDE(beta_min=0.2, beta_max=10.0), t)
  np.testing.assert_allclose(out, std_at(sde_lib.VPSDE(beta_min=0.2, beta_max=10.0), t),
                             rtol=1e-6)
  stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), sde_lib.VESDE(sigma_max=10.0),
                                   sde_lib.VESDE(sigma_max=20.0))
  batched = jax.vmap(std_at, in_axes=(0, None))(stacked, t)
  chex.assert_shape(batched, (2, 2))
  np.testing.assert_allclose(batched[:, 1], 0.01 * (np.array([10.0, 20.0]) / 0.01) ** 0.5,
                             rtol=1e-5)


def test_score_from_eps_continuous(x64):
  sde = sde_lib.VPSDE()
  x = jnp.asarray([[0.3, -0.2], [1.0, 2.0]])
  t = jnp.asarray([0.01, 0.8])

  def eps_model(x, t):
    return x + t[:, None]

  score = sde_lib.score_from_eps(eps_model, sde)(x, t)
  _, sigma = analytic_sde.coeffs("vp", np.asarray(t))
  np.testing.assert_allclose(score, -(np.asarray(x) + np.asarray(t)[:, None])
                             / np.asarray(sigma)[:, None], rtol=1e-12)


def test_score_from_eps_discrete_maps_time_to_steps(x64):
  n = 1000
  schedule = make_schedule("linear", n, dtype=jnp.float64)
  seen = []

  def eps_model(x, timesteps):
    assert timesteps.dtype == jnp.int32
    seen.append(timesteps)
    return jnp.ones_like(x)

  t = jnp.asarray([1e-3, 0.0004, 0.5, 0.7, 0.7996, 0.9996, 1.0])
  score = sde_lib.score_from_eps(eps_model, sde_lib.VPSDE(N=n), schedule=schedule)(
      jnp.zeros((7, 1)), t)
  # The nearest t_i = (i + 1) / N: round(t N) - 1, clipped to [0, N). (score_sde's
  # floor(t (N - 1)) would give 798 and 998 for 0.7996 and 0.9996.)
  expected_steps = np.array([0, 0, 499, 699, 799, 999, 999])
  np.testing.assert_array_equal(seen[0], expected_steps)
  ab = np.asarray(schedule.alphas_cumprod)[expected_steps]
  np.testing.assert_allclose(score[:, 0], -1.0 / np.sqrt(1.0 - ab), rtol=1e-12)


def test_get_sde_and_errors():
  assert isinstance(sde_lib.get_sde("VPSDE", beta_max=10.0), sde_lib.VPSDE)
  assert sde_lib.get_sde("vesde").sigma_max == 50.0
  with pytest.raises(ValueError, match="unknown SDE 'ddpm'.*subvpsde"):
    sde_lib.get_sde("ddpm")
  with pytest.raises(ValueError, match="beta_min, beta_max"):
    sde_lib.VPSDE(beta_min=1.0, beta_max=0.5)
  with pytest.raises(ValueError, match="sigma_min, sigma_max"):
    sde_lib.VESDE(sigma_min=-1.0)
  with pytest.raises(ValueError, match="N .*positive int"):
    sde_lib.SubVPSDE(N=0)
  sde = sde_lib.VPSDE()
  with pytest.raises(ValueError, match=r"t must lie in \[0.0, 1.0\].*1.5"):
    sde.sde(jnp.zeros((2, 3)), jnp.array([0.5, 1.5]))
  with pytest.raises(ValueError, match=r"t must lie in .*-0.1"):
    sde.marginal_prob(jnp.zeros((1, 3)), jnp.array([-0.1]))
  with pytest.raises(ValueError, match=r"t must lie in \[0.001, 1.0\], got values in \[0.0"):
    sde_lib.check_time(jnp.array([0.0, 0.5]), eps=1e-3)
  with pytest.raises(ValueError, match=r"t must lie in .*2.0"):
    sde_lib.score_from_eps(lambda x, t: x, sde)(jnp.zeros((1, 3)), jnp.array([2.0]))
  with pytest.raises(ValueError, match=r"shape \[B\]"):
    sde.discretize(jnp.zeros((1, 3)), jnp.array(0.5))
  with pytest.raises(ValueError, match="shaped like x"):
    sde_lib.check_score_fn(lambda x, t: x[:, :1], jnp.zeros((2, 3)), jnp.ones((2,)))
