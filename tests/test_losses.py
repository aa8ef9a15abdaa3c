"""Losses and the variational bound against float64 derivations and integration."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from jaxdiff import diffusion, losses
from jaxdiff.schedules import make_schedule

SHAPE = (3, 4, 4, 2)


@pytest.mark.parametrize("m1,lv1,m2,lv2", [(0.3, -1.0, -0.2, 0.5), (1.0, 0.0, 1.0, 0.0),
                                           (-2.0, 1.2, 0.5, -0.7)])
def test_normal_kl_matches_numerical_integration(x64, m1, lv1, m2, lv2):
  p, q = stats.norm(m1, math.exp(lv1 / 2)), stats.norm(m2, math.exp(lv2 / 2))
  lo, hi = m1 - 15 * p.std(), m1 + 15 * p.std()
  kl, _ = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), lo, hi,
                         epsabs=1e-13, epsrel=1e-12)
  got = losses.normal_kl(jnp.float64(m1), jnp.float64(lv1), jnp.float64(m2), jnp.float64(lv2))
  np.testing.assert_allclose(float(got), kl, rtol=1e-8, atol=1e-12)


def _tanh_cdf(x):
  return 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


@pytest.mark.parametrize("mean,log_scale", [(0.0, -3.0), (0.5, -1.0), (-0.99, -5.0), (0.2, 1.0)])
def test_discretized_likelihood_sums_to_one_over_256_bins(x64, mean, log_scale):
  grid = -1.0 + 2.0 * np.arange(256) / 255.0
  logp = losses.discretized_gaussian_log_likelihood(
      jnp.asarray(grid), means=jnp.full(256, mean), log_scales=jnp.full(256, log_scale))
  chex.assert_shape(logp, (256,))
  # The bins tile the real line, so the CDF differences telescope to exactly 1 unless a
  # bin's mass fell under the 1e-12 clamp (then it contributes at most 1e-12 each).
  np.testing.assert_allclose(np.exp(np.asarray(logp)).sum(), 1.0, atol=256e-12 + 1e-12)
  # An interior bin against the tanh-approximated CDF written out, and against the exact
  # normal CDF (the approximation's absolute error is below 2e-4).
  k = 128
  scale = math.exp(log_scale)
  expected = _tanh_cdf((grid[k] + 1 / 255 - mean) / scale) - _tanh_cdf((grid[k] - 1 / 255 - mean) / scale)
  if expected > 1e-12:
    np.testing.assert_allclose(math.exp(float(logp[k])), expected, rtol=1e-10)
    exact = stats.norm.cdf(grid[k] + 1 / 255, mean, scale) - stats.norm.cdf(grid[k] - 1 / 255, mean, scale)
    assert abs(math.exp(float(logp[k])) - exact) < 4e-4


def _oracle(prediction, schedule, x0):
  """A model that knows x_0 and returns the exact output for its parameterization."""
  def model_fn(x_t, t):
    eps = diffusion.predict_eps_from_x0(schedule, x_t, t, x0)
    return {"eps": eps, "x0": x0, "v": diffusion.predict_v(schedule, x0, t, eps),
            "mean": diffusion.q_posterior_mean_variance(schedule, x0, x_t, t)[0]}[prediction]
  return model_fn


def _grid_data(shape=SHAPE, seed=0):
  rng = np.random.default_rng(seed)
  return -1.0 + 2.0 * rng.integers(0, 256, shape) / 255.0


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "mean"])
def test_true_posterior_model_has_zero_kl_and_known_total_bpd(x64, prediction):
  """With the exact x_0 every KL term vanishes: the bound is L_0 + L_T, both closed form."""
  T = 20
  s = make_schedule("cosine", T, dtype=jnp.float64)
  x0 = jnp.asarray(_grid_data())
  out = losses.calc_bpd(_oracle(prediction, s, x0), s, x0, jax.random.PRNGKey(0),
                        prediction=prediction, clip_denoised=False)
  chex.assert_shape([out["total_bpd"], out["prior_bpd"]], (SHAPE[0],))
  chex.assert_shape([out["vb"], out["mse"], out["xstart_mse"]], (SHAPE[0], T))
  np.testing.assert_allclose(np.asarray(out["vb"])[:, 1:], 0.0, atol=1e-9)
  np.testing.assert_allclose(np.asarray(out["xstart_mse"]), 0.0, atol=1e-18)
  np.testing.assert_allclose(np.asarray(out["mse"])[:, 1:], 0.0, atol=1e-12)

  # Closed form from the cosine schedule, in NumPy.
  f = lambda u: math.cos((u / T + 0.008) / 1.008 * math.pi / 2) ** 2
  betas = np.minimum([1 - f(i + 1) / f(i) for i in range(T)], 0.999)
  ab = np.cumprod(1 - betas)
  var1 = betas[1] * (1 - ab[0]) / (1 - ab[1])  # The clipped log-variance at t = 0.
  x = np.asarray(x0)
  sd = math.sqrt(var1)
  bins = np.where(x < -0.999, _tanh_cdf(1 / 255 / sd),
                  np.where(x > 0.999, 1 - _tanh_cdf(-1 / 255 / sd),
                           _tanh_cdf(1 / 255 / sd) - _tanh_cdf(-1 / 255 / sd)))
  decoder = -np.log(np.maximum(bins, 1e-12)).reshape(SHAPE[0], -1).mean(1) / math.log(2)
  # KL(N(sqrt(ab) x0, 1 - ab) || N(0, 1)) per pixel.
  v = 1 - ab[-1]
  prior = (0.5 * (v + ab[-1] * x ** 2 - 1 - math.log(v))).reshape(SHAPE[0], -1).mean(1) / math.log(2)
  np.testing.assert_allclose(np.asarray(out["vb"])[:, 0], decoder, rtol=1e-9)
  np.testing.assert_allclose(np.asarray(out["prior_bpd"]), prior, rtol=1e-9)
  np.testing.assert_allclose(np.asarray(out["total_bpd"]), decoder + prior, rtol=1e-9)


def test_total_bpd_is_the_sum_of_its_terms():
  s = make_schedule("linear", 50)
  x0 = jnp.asarray(_grid_data(seed=1), jnp.float32)
  out = jax.jit(lambda x, k: losses.calc_bpd(lambda x_t, t: 0.3 * x_t, s, x, k))(
      x0, jax.random.PRNGKey(1))
  np.testing.assert_allclose(np.asarray(out["total_bpd"]),
                             np.asarray(out["vb"]).sum(1) + np.asarray(out["prior_bpd"]), rtol=1e-6)
  # Column t is timestep t: recompute column 17 directly with the same noise.
  t = jnp.full((SHAPE[0],), 17)
  noise = jax.random.normal(jax.random.split(jax.random.PRNGKey(1), 50)[17], SHAPE)
  x_t = diffusion.q_sample(s, x0, t, noise)
  direct = losses.vb_terms_bpd(s, 0.3 * x_t, x0, x_t, t)
  np.testing.assert_allclose(np.asarray(out["vb"])[:, 17], np.asarray(direct), rtol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "mean"])
def test_perfect_predictor_has_zero_mse_loss(x64, prediction):
  s = make_schedule("linear", 100, dtype=jnp.float64)
  x0 = jnp.asarray(_grid_data(seed=2))
  loss = losses.diffusion_loss(_oracle(prediction, s, x0), s, x0, jax.random.PRNGKey(3),
                               prediction=prediction)
  chex.assert_shape(loss, (SHAPE[0],))
  np.testing.assert_allclose(np.asarray(loss), 0.0, atol=1e-12)


def test_mse_loss_and_weightings_match_numpy(x64):
  T = 100
  s = make_schedule("linear", T, dtype=jnp.float64)
  betas = np.linspace(1e-3, 0.2, T)
  ab = np.cumprod(1 - betas)
  snr = ab / (1 - ab)
  x0 = jnp.asarray(_grid_data(seed=3))
  noise = jnp.asarray(np.random.default_rng(4).standard_normal(SHAPE))
  t = jnp.array([0, 50, 99])
  zero_model = lambda x_t, tt: jnp.zeros_like(x_t)
  x = np.asarray(x0).reshape(3, -1)
  e = np.asarray(noise).reshape(3, -1)
  tt = np.asarray(t)
  targets = {"eps": e, "x0": x,
             "v": np.sqrt(ab[tt])[:, None] * e - np.sqrt(1 - ab[tt])[:, None] * x}
  # Min-SNR-gamma weights on the x0-space MSE (Hang et al. 2023), converted to each space.
  factors = {"eps": 1 / snr[tt], "x0": np.ones(3), "v": 1 - ab[tt]}
  for prediction, target in targets.items():
    mse = (target ** 2).mean(1)
    for weighting, w in [(None, None), ("snr", snr[tt]), ("min_snr", np.minimum(snr[tt], 5.0))]:
      loss = losses.diffusion_loss(zero_model, s, x0, jax.random.PRNGKey(0), prediction=prediction,
                                   weighting=weighting, t=t, noise=noise)
      expected = mse if w is None else w * factors[prediction] * mse
      np.testing.assert_allclose(np.asarray(loss), expected, rtol=1e-10,
                                 err_msg=f"{prediction} {weighting}")


def test_kl_loss_is_the_vb_term_and_hybrid_trains_only_variance_through_vb():
  s = make_schedule("cosine", 40)
  x0 = jnp.asarray(_grid_data(seed=5), jnp.float32)
  t = jnp.array([0, 5, 39])
  noise = jax.random.normal(jax.random.PRNGKey(0), SHAPE)
  x_t = diffusion.q_sample(s, x0, t, noise)
  model = lambda params: (lambda x, tt: jnp.concatenate([params[0] * x, params[1] * x], -1))
  params = (jnp.float32(0.4), jnp.float32(0.2))
  kl = losses.diffusion_loss(model(params), s, x0, jax.random.PRNGKey(0), loss_type="kl",
                             variance="learned_range", t=t, noise=noise)
  direct = losses.vb_terms_bpd(s, model(params)(x_t, t), x0, x_t, t, variance="learned_range",
                               clip_denoised=False)
  chex.assert_trees_all_close(kl, direct, rtol=1e-6)
  rescaled = losses.diffusion_loss(model(params), s, x0, jax.random.PRNGKey(0),
                                   loss_type="rescaled_kl", variance="learned_range", t=t, noise=noise)
  chex.assert_trees_all_close(rescaled, 40 * direct, rtol=1e-6)

  def hybrid(p):
    return jnp.sum(losses.diffusion_loss(model(p), s, x0, jax.random.PRNGKey(0), loss_type="hybrid",
                                         variance="learned_range", t=t, noise=noise))

  def mse_only(p):
    return jnp.sum(losses.diffusion_loss(model(p), s, x0, jax.random.PRNGKey(0), loss_type="mse",
                                         variance="learned_range", t=t, noise=noise))

  g_hybrid, g_mse = jax.grad(hybrid)(params), jax.grad(mse_only)(params)
  # The mean parameter's gradient comes from the MSE alone; the variance's from the VB.
  np.testing.assert_allclose(g_hybrid[0], g_mse[0], rtol=1e-5)
  assert float(g_mse[1]) == 0.0 and abs(float(g_hybrid[1])) > 0.0
  expected = jnp.sum(losses.diffusion_loss(model(params), s, x0, jax.random.PRNGKey(0),
                                           variance="learned_range", t=t, noise=noise)
                     + 0.001 * 40 * kl)
  np.testing.assert_allclose(hybrid(params), expected, rtol=1e-6)


def test_diffusion_loss_draws_uniform_timesteps_under_jit_and_vmap():
  s = make_schedule("linear", 100)
  x0 = jnp.zeros((8, 2, 2, 1))
  seen = []
  def model_fn(x_t, t):
    seen.append(t.shape)
    return jnp.zeros_like(x_t)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  loss = jax.jit(jax.vmap(lambda k: losses.diffusion_loss(model_fn, s, x0, k)))(keys)
  chex.assert_shape(loss, (3, 8))
  assert seen == [(8,)]
  # With a zero model and x0 = 0 the eps-MSE is mean(noise^2) over 4 pixels: chi^2_4 / 4,
  # mean 1 and standard deviation sqrt(2/4); the mean of 24 values has SE ~0.144.
  assert abs(float(loss.mean()) - 1.0) < 5 * 0.144


def test_loss_errors():
  s = make_schedule("linear", 100)
  x0 = jnp.zeros((2, 2, 2, 1))
  f = lambda x_t, t: jnp.zeros_like(x_t)
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="'mse', 'kl'"):
    losses.diffusion_loss(f, s, x0, key, loss_type="l2")
  with pytest.raises(ValueError, match="learned"):
    losses.diffusion_loss(f, s, x0, key, loss_type="hybrid")
  with pytest.raises(ValueError, match="min_snr"):
    losses.diffusion_loss(f, s, x0, key, weighting="p2")
  with pytest.raises(ValueError, match="'eps'"):
    losses.diffusion_loss(f, s, x0, key, prediction="score")
