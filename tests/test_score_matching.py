"""Tests of jaxdiff.score_matching against closed forms and against each other (Hyvarinen 2005;
Vincent 2011; Song & Ermon 2019; Song et al. 2019; Song et al. 2021)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import integrate, stats

from jaxdiff import score_matching as sm
from jaxdiff import sde as sde_lib
from tests import analytic_sde

MEAN = np.array([1.0, -0.5])
COV = np.array([[1.0, 0.6], [0.6, 0.8]])
A = np.array([[-1.2, 0.4], [0.3, -0.7]])
B = np.array([0.2, -0.1])


def _tanh_model(x):
  """s(x) = A tanh(x) + b; its Jacobian is A diag(1 - tanh(x)^2)."""
  return jnp.tanh(x) @ A.T + B


def _gaussian_data(n, seed=0):
  return jnp.asarray(np.random.default_rng(seed).multivariate_normal(MEAN, COV, size=n))


def _mean_and_se(values):
  values = np.asarray(values, np.float64)
  return values.mean(), values.std(ddof=1) / np.sqrt(len(values))


def test_explicit_score_matching_matches_closed_form(x64):
  x = _gaussian_data(64)
  loss = sm.explicit_score_matching_loss(_tanh_model, x)
  chex.assert_shape(loss, (64,))
  xn = np.asarray(x)
  trace = (1.0 - np.tanh(xn) ** 2) @ np.diag(A)
  expected = trace + 0.5 * np.sum((np.tanh(xn) @ A.T + B) ** 2, axis=1)
  np.testing.assert_allclose(loss, expected, rtol=1e-12)


@pytest.mark.parametrize("projection,variance_reduction",
                         [("gaussian", False), ("rademacher", False), ("gaussian", True)])
def test_sliced_score_matching_has_the_explicit_expectation(x64, projection, variance_reduction):
  # SSM is unbiased for ESM on every x (E[v v^T] = I): the per-example difference has mean 0.
  # 4000 examples x 4 projections; tolerance 4.5 standard errors of the mean difference.
  x = _gaussian_data(4000, seed=1)
  esm = sm.explicit_score_matching_loss(_tanh_model, x)
  ssm = sm.sliced_score_matching_loss(_tanh_model, x, jax.random.PRNGKey(0), num_projections=4,
                                      projection=projection,
                                      variance_reduction=variance_reduction)
  chex.assert_shape(ssm, (4000,))
  diff_mean, diff_se = _mean_and_se(ssm - esm)
  assert abs(diff_mean) < 4.5 * diff_se
  assert diff_se > 0  # SSM is an estimate, not the exact value: the test has power


def _fit_linear_score(loss_fn, x, steps=600):
  """Minimizes mean loss_fn(s, x, key) over linear models s(x) = W x + b with Adam."""
  opt = optax.adam(optax.cosine_decay_schedule(0.05, steps))
  params = (jnp.zeros((2, 2)), jnp.zeros(2))

  def objective(p, key):
    return jnp.mean(loss_fn(lambda y: y @ p[0].T + p[1], x, key))

  def step(carry, key):
    p, state = carry
    grads = jax.grad(objective)(p, key)
    updates, state = opt.update(grads, state)
    return (optax.apply_updates(p, updates), state), None

  keys = jax.random.split(jax.random.PRNGKey(4), steps)
  (params, _), _ = jax.jit(lambda: jax.lax.scan(step, (params, opt.init(params)), keys))()
  return np.asarray(params[0]), np.asarray(params[1])


@pytest.mark.parametrize("objective", ["explicit", "sliced", "denoising"])
def test_minimizer_on_gaussian_data_is_the_true_score(x64, objective):
  # Linear model s(x) = W x + b on n = 4000 draws of N(m, C). The true score is W = -C^{-1},
  # b = C^{-1} m; for DSM at sigma it is that of N(m, C + sigma^2 I) (Vincent 2011).
  # Sampling error of the sample precision: relative ~ sqrt(2 / n) ~ 2.2% per entry, so 0.12 on
  # entries of size <= 2.2 is about 3 standard errors, plus SGD noise for the stochastic ones.
  x = _gaussian_data(4000, seed=5)
  sigma = 0.1
  losses = {
      "explicit": lambda s, x, key: sm.explicit_score_matching_loss(s, x),
      "sliced": lambda s, x, key: sm.sliced_score_matching_loss(s, x, key, num_projections=2),
      "denoising": lambda s, x, key: sm.denoising_score_matching_loss(s, x, key, sigma=sigma),
  }
  w, b = _fit_linear_score(losses[objective], x)
  cov = COV + (sigma**2 * np.eye(2) if objective == "denoising" else 0.0)
  precision = np.linalg.inv(cov)
  np.testing.assert_allclose(w, -precision, atol=0.12)
  np.testing.assert_allclose(b, precision @ MEAN, atol=0.12)
  if objective == "explicit":  # deterministic: the minimizer is exactly the sample precision
    sample_precision = np.linalg.inv(np.cov(np.asarray(x).T, bias=True))
    np.testing.assert_allclose(w, -sample_precision, atol=2e-3)


def test_denoising_minus_explicit_on_noisy_data_is_model_independent(x64):
  # Vincent 2011, eq. 11: DSM(s) = ESM_{q_sigma}(s) + C(sigma). For two models the per-example
  # difference [DSM(s1) - DSM(s2)] - [ESM(s1)(x~) - ESM(s2)(x~)] has mean 0.
  x = _gaussian_data(8000, seed=6)
  sigma = 0.5
  rng = jax.random.PRNGKey(7)
  x_noisy = x + sigma * jax.random.normal(rng, x.shape, x.dtype)  # the noise DSM draws

  def linear(y):
    return -3.0 * y + 1.0

  dsm = [sm.denoising_score_matching_loss(s, x, rng, sigma=sigma) for s in (_tanh_model, linear)]
  esm = [sm.explicit_score_matching_loss(s, x_noisy) for s in (_tanh_model, linear)]
  diff_mean, diff_se = _mean_and_se((dsm[0] - dsm[1]) - (esm[0] - esm[1]))
  assert abs(diff_mean) < 4.5 * diff_se
  gap_mean, gap_se = _mean_and_se(dsm[0] - dsm[1])
  assert abs(gap_mean) > 10 * gap_se  # the models differ: the check is not vacuous


def test_ncsn_loss_expectation_at_the_exact_score(x64):
  # Data N(0, diag(v)); the exact noise-conditional score is -x~ / (v + sigma^2), for which
  # E ||sigma s + z||^2 / 2 = sum_d v_d / (2 (v_d + sigma^2)); levels are uniform.
  v = np.array([0.5, 2.0])
  sigmas = sde_lib.geometric_sigmas(0.05, 5.0, 8)
  n = 20000
  x = jnp.asarray(np.random.default_rng(8).normal(size=(n, 2)) * np.sqrt(v))

  def score(y, sigma):
    return -y / (v + sigma[:, None] ** 2)

  loss = sm.ncsn_loss(score, x, jax.random.PRNGKey(9), sigmas=sigmas)
  chex.assert_shape(loss, (n,))
  s2 = np.asarray(sigmas)[:, None] ** 2
  expected = np.mean(np.sum(v / (2.0 * (v + s2)), axis=1))
  mean, se = _mean_and_se(loss)
  assert abs(mean - expected) < 4.5 * se
  # A shrunk score is worse: paired with the same noise, the excess has mean
  # mean_i sum_d sigma_i^2 / (8 (v_d + sigma_i^2)) > 0 for s -> s / 2.
  wrong = sm.ncsn_loss(lambda y, s: 0.5 * score(y, s), x, jax.random.PRNGKey(9), sigmas=sigmas)
  excess, excess_se = _mean_and_se(wrong - loss)
  assert abs(excess - np.mean(np.sum(s2 / (8.0 * (v + s2)), axis=1))) < 4.5 * excess_se


@pytest.mark.parametrize("likelihood_weighting", [False, True])
def test_continuous_dsm_expectation_at_the_exact_score(x64, likelihood_weighting):
  # Data N(m, diag(v)) under the VP SDE with its exact score s: E_z ||sigma_t s + z||^2 =
  # sum_d alpha_t^2 v_d / S_t, S_t = alpha_t^2 v_d + sigma_t^2; the likelihood weighting
  # multiplies by g(t)^2 / sigma_t^2. Expectation over t ~ U(eps, 1) by quadrature. eps = 0.01
  # keeps the likelihood-weighted integrand (~ 1 / t near 0) at finite variance.
  sde = sde_lib.VPSDE()
  m, v = np.array([0.5, -1.0]), np.array([0.3, 1.5])
  eps, n = 1e-2, 40000
  x0 = jnp.asarray(np.random.default_rng(10).normal(size=(n, 2)) * np.sqrt(v) + m)
  score = analytic_sde.gaussian_score("vp", m, np.diag(v))
  loss = sm.continuous_dsm_loss(score, sde, x0, jax.random.PRNGKey(11), eps=eps,
                                likelihood_weighting=likelihood_weighting)

  def integrand(t):
    alpha, sigma = (float(c) for c in analytic_sde.coeffs("vp", np.float64(t)))
    weight = (0.1 + t * 19.9) / sigma**2 if likelihood_weighting else 1.0
    return 0.5 * weight * np.sum(alpha**2 * v / (alpha**2 * v + sigma**2))

  expected = integrate.quad(integrand, eps, 1.0, limit=200)[0] / (1.0 - eps)
  mean, se = _mean_and_se(loss)
  assert abs(mean - expected) < 4.5 * se
  reduced = sm.continuous_dsm_loss(score, sde, x0, jax.random.PRNGKey(11), eps=eps,
                                   likelihood_weighting=likelihood_weighting, reduce_mean=True)
  np.testing.assert_allclose(reduced, loss / 2.0, rtol=1e-12)


@pytest.mark.parametrize("kind", ["vp", "ve"])
@pytest.mark.parametrize("likelihood_weighting", [False, True])
def test_continuous_dsm_per_example_formula(x64, kind, likelihood_weighting):
  # The loss is not jitted, so the score function sees the concrete (x_t, t) it is called with;
  # z = (x_t - alpha_t x0) / sigma_t recovers the noise, and each example's loss must equal
  # lambda(t) ||s + z / sigma_t||^2 / 2 with lambda = sigma_t^2 or g(t)^2 (Song et al. 2021,
  # eq. 7); t must be U(eps, 1) and z standard normal (Kolmogorov-Smirnov, p > 1e-3).
  sde = sde_lib.VPSDE() if kind == "vp" else sde_lib.VESDE()
  n, eps = 2000, 1e-3
  x0 = jnp.asarray(np.random.default_rng(12).normal(size=(n, 2)))
  seen = {}

  def score(x_t, t):
    seen["x_t"], seen["t"] = np.asarray(x_t), np.asarray(t)
    return jnp.tanh(x_t) * t[:, None]

  loss = sm.continuous_dsm_loss(score, sde, x0, jax.random.PRNGKey(13), eps=eps,
                                likelihood_weighting=likelihood_weighting)
  t, x_t = seen["t"], seen["x_t"]
  alpha, sigma = (np.asarray(c) for c in analytic_sde.coeffs(kind, t))
  z = (x_t - alpha[:, None] * np.asarray(x0)) / sigma[:, None]
  if not likelihood_weighting:
    weight = sigma**2
  elif kind == "vp":
    weight = 0.1 + t * 19.9
  else:
    weight = sigma**2 * 2.0 * np.log(50.0 / 0.01)
  s = np.tanh(x_t) * t[:, None]
  expected = 0.5 * weight * np.sum((s + z / sigma[:, None]) ** 2, axis=1)
  np.testing.assert_allclose(loss, expected, rtol=1e-10)
  assert t.min() >= eps and t.max() <= 1.0
  assert stats.kstest(t, stats.uniform(eps, 1.0 - eps).cdf).pvalue > 1e-3
  assert stats.kstest(z.ravel(), "norm").pvalue > 1e-3


def test_ncsn_loss_per_example_formula_and_uniform_levels(x64):
  # As above: recover each example's sigma and z = (x~ - x) / sigma; the loss is
  # ||sigma s + z||^2 / 2 (lambda = sigma^2), and the 8 levels are drawn uniformly (counts of
  # 4000 draws within 4.5 binomial standard errors of 500).
  sigmas = np.asarray(sde_lib.geometric_sigmas(0.1, 10.0, 8))
  n = 4000
  x = jnp.asarray(np.random.default_rng(14).normal(size=(n, 3)))
  seen = {}

  def score(x_noisy, sigma):
    seen["x"], seen["sigma"] = np.asarray(x_noisy), np.asarray(sigma)
    return -x_noisy / (1.0 + sigma[:, None])

  loss = sm.ncsn_loss(score, x, jax.random.PRNGKey(15), sigmas=jnp.asarray(sigmas))
  sigma, x_noisy = seen["sigma"], seen["x"]
  z = (x_noisy - np.asarray(x)) / sigma[:, None]
  expected = 0.5 * np.sum((sigma[:, None] * -x_noisy / (1.0 + sigma[:, None]) + z) ** 2, axis=1)
  np.testing.assert_allclose(loss, expected, rtol=1e-10)
  levels = np.argmin(np.abs(np.log(sigma)[:, None] - np.log(sigmas)[None]), axis=1)
  np.testing.assert_allclose(sigmas[levels], sigma, rtol=1e-12)
  counts = np.bincount(levels, minlength=8)
  assert np.all(np.abs(counts - n / 8) < 4.5 * np.sqrt(n * (1 / 8) * (7 / 8)))
  assert stats.kstest(z.ravel(), "norm").pvalue > 1e-3


def test_bad_inputs_raise():
  x = jnp.zeros((4, 3))
  rng = jax.random.PRNGKey(0)

  def bad_score(y):
    return y[:, :2]

  with pytest.raises(ValueError, match="shaped like x"):
    sm.explicit_score_matching_loss(bad_score, x)
  with pytest.raises(ValueError, match="shaped like x"):
    sm.sliced_score_matching_loss(bad_score, x, rng)
  with pytest.raises(ValueError, match="unknown projection 'uniform'"):
    sm.sliced_score_matching_loss(lambda y: y, x, rng, projection="uniform")
  with pytest.raises(ValueError, match="sigma must be positive"):
    sm.denoising_score_matching_loss(lambda y: y, x, rng, sigma=0.0)
  with pytest.raises(ValueError, match="eps must lie in"):
    sm.continuous_dsm_loss(lambda y, t: y, sde_lib.VESDE(), x, rng, eps=1.5)
  with pytest.raises(ValueError, match="shaped like x"):
    sm.ncsn_loss(lambda y, s: y[:, :1], x, rng, sigmas=jnp.array([1.0, 0.1]))
