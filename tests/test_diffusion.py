"""Forward process and reverse-model parameterizations against float64 derivations."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import diffusion
from jaxdiff.schedules import make_schedule

SHAPE = (4, 3, 5, 2)
T_IDX = np.array([0, 1, 37, 99])


def _np_schedule(T=100):
  """alpha-bar and the betas of a linear schedule, in float64 from Ho et al. Sec. 4."""
  betas = np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T)
  return betas, np.cumprod(1 - betas)


def _bcast(v):
  return np.asarray(v)[:, None, None, None]


@pytest.fixture
def sched64(x64):
  return make_schedule("linear", 100, dtype=jnp.float64)


def _data(seed=0):
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, SHAPE), rng.standard_normal(SHAPE)


def test_closed_form_marginal_equals_chained_one_step_kernel(sched64):
  """q(x_t | x_0) from iterating x_s = sqrt(1 - beta_s) x_{s-1} + sqrt(beta_s) eps_s."""
  betas, _ = _np_schedule()
  x0, _ = _data()
  t = jnp.asarray(T_IDX)
  mean, var, logvar = diffusion.q_mean_variance(sched64, jnp.asarray(x0), t)
  for i, ti in enumerate(T_IDX):
    m, v = 1.0, 0.0
    for s in range(ti + 1):
      m *= math.sqrt(1 - betas[s])
      v = (1 - betas[s]) * v + betas[s]
    np.testing.assert_allclose(np.asarray(mean)[i], m * x0[i], rtol=1e-10)
    np.testing.assert_allclose(np.asarray(var)[i], v, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(logvar)[i], math.log(v), rtol=1e-10)
  chex.assert_shape([mean, var, logvar], SHAPE)


def test_posterior_is_product_of_gaussians(sched64):
  """q(x_{t-1} | x_t, x_0) ~ q(x_t | x_{t-1}) q(x_{t-1} | x_0), completed square (Bayes)."""
  betas, ab = _np_schedule()
  x0, noise = _data(1)
  x_t = _bcast(np.sqrt(ab[T_IDX])) * x0 + _bcast(np.sqrt(1 - ab[T_IDX])) * noise
  mean, var, logvar = diffusion.q_posterior_mean_variance(
      sched64, jnp.asarray(x0), jnp.asarray(x_t), jnp.asarray(T_IDX))
  for i, t in enumerate(T_IDX):
    if t == 0:  # x_{-1} is x_0 itself: a point mass.
      np.testing.assert_allclose(np.asarray(mean)[i], x0[i], rtol=1e-10)
      np.testing.assert_allclose(np.asarray(var)[i], 0.0, atol=1e-300)
      continue
    prior_mean, prior_var = math.sqrt(ab[t - 1]) * x0[i], 1 - ab[t - 1]
    lik_scale, lik_var = math.sqrt(1 - betas[t]), betas[t]
    precision = 1 / prior_var + lik_scale ** 2 / lik_var
    post_var = 1 / precision
    post_mean = post_var * (prior_mean / prior_var + lik_scale * x_t[i] / lik_var)
    np.testing.assert_allclose(np.asarray(mean)[i], post_mean, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(var)[i], post_var, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(logvar)[i], math.log(post_var), rtol=1e-9)
  chex.assert_shape([mean, var, logvar], SHAPE)


def test_q_sample_monte_carlo_moments():
  s = make_schedule("cosine", 100)
  n = 200_000
  x0 = jnp.full((n, 1), 0.7)
  t = jnp.full((n,), 40)
  noise = jax.random.normal(jax.random.PRNGKey(0), (n, 1))
  x = np.asarray(diffusion.q_sample(s, x0, t, noise), dtype=np.float64)
  ab = float(s.alphas_cumprod[40])
  # Sample mean: standard error sqrt((1 - ab) / n) ~ 1.5e-3 at most; allow 5 SE.
  assert abs(x.mean() - math.sqrt(ab) * 0.7) < 5 * math.sqrt((1 - ab) / n)
  # Sample variance of a Gaussian: SE = var * sqrt(2 / n); allow 5 SE.
  assert abs(x.var() - (1 - ab)) < 5 * (1 - ab) * math.sqrt(2 / n)


def test_parameterization_round_trips(sched64):
  x0, eps = (jnp.asarray(a) for a in _data(2))
  t = jnp.asarray(T_IDX)
  x_t = diffusion.q_sample(sched64, x0, t, eps)
  chex.assert_trees_all_close(diffusion.predict_x0_from_eps(sched64, x_t, t, eps), x0,
                              rtol=1e-10, atol=1e-10)
  chex.assert_trees_all_close(diffusion.predict_eps_from_x0(sched64, x_t, t, x0), eps,
                              rtol=1e-7, atol=1e-7)
  v = diffusion.predict_v(sched64, x0, t, eps)
  chex.assert_trees_all_close(diffusion.predict_x0_from_v(sched64, x_t, t, v), x0,
                              rtol=1e-10, atol=1e-10)
  # v = sqrt(ab) eps - sqrt(1 - ab) x0 (Salimans & Ho), written out.
  _, ab = _np_schedule()
  v_np = _bcast(np.sqrt(ab[T_IDX])) * np.asarray(eps) - _bcast(np.sqrt(1 - ab[T_IDX])) * np.asarray(x0)
  np.testing.assert_allclose(np.asarray(v), v_np, rtol=1e-12)
  chex.assert_shape(v, SHAPE)


def _true_output(schedule, prediction, x0, x_t, t, eps):
  if prediction == "eps":
    return eps
  if prediction == "x0":
    return x0
  if prediction == "v":
    return diffusion.predict_v(schedule, x0, t, eps)
  return diffusion.q_posterior_mean_variance(schedule, x0, x_t, t)[0]


@pytest.mark.parametrize("prediction", diffusion.PREDICTIONS)
def test_exact_prediction_gives_true_posterior_mean(sched64, prediction):
  x0, eps = (jnp.asarray(a) for a in _data(3))
  t = jnp.asarray(T_IDX)
  x_t = diffusion.q_sample(sched64, x0, t, eps)
  out = diffusion.p_mean_variance(sched64, _true_output(sched64, prediction, x0, x_t, t, eps),
                                  x_t, t, prediction=prediction, clip_denoised=False)
  true_mean, _, _ = diffusion.q_posterior_mean_variance(sched64, x0, x_t, t)
  chex.assert_trees_all_close(out.mean, true_mean, rtol=1e-8, atol=1e-8)
  chex.assert_trees_all_close(out.pred_x0, x0, rtol=1e-6, atol=1e-6)
  chex.assert_shape([out.mean, out.variance, out.log_variance, out.pred_x0], SHAPE)


def test_variance_types_follow_reference_conventions(sched64):
  betas, ab = _np_schedule()
  ab_prev = np.append(1.0, ab[:-1])
  post_var = betas * (1 - ab_prev) / (1 - ab)
  clipped_log = np.log(np.append(post_var[1], post_var[1:]))
  large = np.append(post_var[1], betas[1:])
  x_t = jnp.zeros(SHAPE, jnp.float64)
  t = jnp.asarray(T_IDX)
  out = diffusion.p_mean_variance(sched64, x_t, x_t, t, variance="fixed_small")
  np.testing.assert_allclose(np.asarray(out.variance)[:, 0, 0, 0], post_var[T_IDX], rtol=1e-10)
  np.testing.assert_allclose(np.asarray(out.log_variance)[:, 0, 0, 0], clipped_log[T_IDX], rtol=1e-10)
  out = diffusion.p_mean_variance(sched64, x_t, x_t, t, variance="fixed_large")
  np.testing.assert_allclose(np.asarray(out.variance)[:, 0, 0, 0], large[T_IDX], rtol=1e-10)
  np.testing.assert_allclose(np.asarray(out.log_variance)[:, 0, 0, 0], np.log(large[T_IDX]),
                             rtol=1e-10)
  rng = np.random.default_rng(4)
  var_values = rng.uniform(-1, 1, SHAPE)
  learned_out = jnp.concatenate([x_t, jnp.asarray(var_values)], axis=-1)
  out = diffusion.p_mean_variance(sched64, learned_out, x_t, t, variance="learned")
  np.testing.assert_allclose(np.asarray(out.log_variance), var_values, rtol=1e-12)
  np.testing.assert_allclose(np.asarray(out.variance), np.exp(var_values), rtol=1e-12)
  out = diffusion.p_mean_variance(sched64, learned_out, x_t, t, variance="learned_range")
  frac = (var_values + 1) / 2
  expected = frac * _bcast(np.log(betas[T_IDX])) + (1 - frac) * _bcast(clipped_log[T_IDX])
  np.testing.assert_allclose(np.asarray(out.log_variance), expected, rtol=1e-10)
  chex.assert_shape([out.mean, out.variance, out.log_variance], SHAPE)


def test_denoised_fn_runs_before_clipping():
  s = make_schedule("cosine", 10)
  x_t = jnp.full((2, 2, 2, 1), 0.5)
  t = jnp.array([3, 7])
  out = diffusion.p_mean_variance(s, jnp.full_like(x_t, 3.0), x_t, t, prediction="x0",
                                  denoised_fn=lambda x: -x)
  np.testing.assert_array_equal(np.asarray(out.pred_x0), -1.0)
  pred_x0, eps = diffusion.predict_x0_eps(s, jnp.full_like(x_t, 3.0), x_t, t, prediction="x0")
  np.testing.assert_array_equal(np.asarray(pred_x0), 1.0)
  chex.assert_trees_all_close(diffusion.predict_x0_from_eps(s, x_t, t, eps), pred_x0, atol=1e-5)


def test_jit_vmap_grad_and_float32():
  s = make_schedule("linear", 100)
  x0, eps = (jnp.asarray(a, jnp.float32) for a in _data(5))
  t = jnp.asarray(T_IDX)
  eager = diffusion.p_mean_variance(s, eps, x0, t, variance="fixed_large")
  jitted = jax.jit(lambda sch, o, x, tt: diffusion.p_mean_variance(sch, o, x, tt,
                                                                   variance="fixed_large"))(s, eps, x0, t)
  chex.assert_trees_all_close(eager, jitted, rtol=1e-6)
  assert eager.mean.dtype == jnp.float32
  # vmap over an extra leading axis of independent batches.
  stacked = jax.vmap(lambda x, e: diffusion.q_sample(s, x, t, e))(jnp.stack([x0, -x0]),
                                                                  jnp.stack([eps, eps]))
  chex.assert_trees_all_close(stacked[1], diffusion.q_sample(s, -x0, t, eps), rtol=1e-6)
  # vmap over single examples (t becomes a scalar per example).
  per_example = jax.vmap(lambda x, tt, e: diffusion.q_sample(s, x, tt, e))(x0, t, eps)
  chex.assert_trees_all_close(per_example, diffusion.q_sample(s, x0, t, eps), rtol=1e-6)
  grad = jax.grad(lambda o: jnp.sum(diffusion.p_mean_variance(
      s, o, x0, t, clip_denoised=False).mean))(eps)
  # mean = coef1 * (sqrt_recip x_t - sqrt_recipm1 eps) + coef2 x_t, so d mean / d eps is
  # -coef1 * sqrt(1 / alpha-bar - 1), elementwise.
  _, ab = _np_schedule()
  betas, ab_prev = _np_schedule()[0], np.append(1.0, ab[:-1])
  coef1 = betas * np.sqrt(ab_prev) / (1 - ab)
  expected = -coef1[T_IDX] * np.sqrt(1 / ab[T_IDX] - 1)
  chex.assert_shape(grad, SHAPE)
  np.testing.assert_allclose(np.asarray(grad), np.broadcast_to(_bcast(expected), SHAPE), rtol=1e-5)


def test_float64_stays_float64(sched64):
  x0, eps = (jnp.asarray(a) for a in _data(6))
  t = jnp.asarray(T_IDX)
  x_t = diffusion.q_sample(sched64, x0, t, eps)
  out = diffusion.p_mean_variance(sched64, eps, x_t, t, variance="fixed_large")
  assert x_t.dtype == jnp.float64
  assert all(a.dtype == jnp.float64 for a in out)


def test_bad_names_and_channels():
  s = make_schedule("cosine", 10)
  x = jnp.zeros((2, 4, 4, 3))
  t = jnp.array([1, 2])
  with pytest.raises(ValueError, match="'eps', 'x0', 'v', 'mean'"):
    diffusion.p_mean_variance(s, x, x, t, prediction="epsilon")
  with pytest.raises(ValueError, match="fixed_small"):
    diffusion.p_mean_variance(s, x, x, t, variance="fixed")
  with pytest.raises(ValueError, match="2 \\* 3 = 6"):
    diffusion.p_mean_variance(s, jnp.zeros((2, 4, 4, 5)), x, t, variance="learned")
  with pytest.raises(ValueError, match="must equal"):
    diffusion.p_mean_variance(s, jnp.zeros((2, 4, 4, 6)), x, t)
