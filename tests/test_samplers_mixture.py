"""Samplers on a mixture of three Gaussians: mode weights, per-mode moments, guidance.

Data: weights (0.5, 0.3, 0.2), isotropic modes of std (0.3, 0.4, 0.35) at radius 2,
3.5 apart: assigning a sample to the nearest mean misclassifies with probability below
Phi(-1.73 / 0.4) ~ 1e-5, negligible. With n samples a weight's standard error is
sqrt(w (1 - w) / n), and a mode with n_k samples has mean SE sigma_k / sqrt(n_k) and
covariance-entry SE sqrt((C_ii C_jj + C_ij^2) / n_k). Tolerances are 5 SE (false
failure < 1e-6 per statistic) plus the discretization error, which for a mode is taken
from the exact oracle of that mode alone as a Gaussian on the same chain (the mixture's
modes are far apart, so each sample's late chain sees only its own mode).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import samplers, schedules, testing

T = 1000
N = 4000
_ANGLES = np.deg2rad([0.0, 120.0, 240.0])
MEANS = 2.0 * np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], axis=1)
STDS = np.array([0.3, 0.4, 0.35])
MIX = testing.GaussianMixture.diagonal([0.5, 0.3, 0.2], MEANS, STDS ** 2)
AB = testing.linear_alphas_cumprod(T)
NULL = 3


@pytest.fixture(scope="module")
def schedule():
  return schedules.make_schedule("linear", T)


@pytest.fixture(scope="module")
def model(schedule):
  return testing.model_fn(MIX, schedule)


def _mode_gap(k, steps_of):
  """|oracle - data| of mode k alone on the chain ``steps_of(mean, cov)`` (mean, cov)."""
  mean, cov = MIX.means[k], MIX.covs[k]
  out_mean, out_cov = testing.chain_moments(steps_of(mean, cov), np.zeros(2), np.eye(2))
  return np.abs(out_mean - mean), np.abs(out_cov - cov)


def _ddpm_steps(mean, cov):
  return testing.reverse_chain(AB, lambda a, ap, last: testing.ddpm_step_affine(
      mean, cov, a, ap, variance="fixed_small", last=last))


def _ddim_steps(num_steps, mean, cov):
  return testing.reverse_chain(AB[::T // num_steps], lambda a, ap, _: testing.ddim_step_affine(
      mean, cov, a, ap, eta=0.0))


def _assign(x):
  return np.argmin(((np.asarray(x)[:, None, :] - MEANS[None]) ** 2).sum(-1), axis=1)


def _assert_modes(x, labels, steps_of, *, weight_slack=None):
  """Per-mode moments within 5 SE + the mode's oracle gap; weights if asked."""
  x = np.asarray(x, np.float64)
  if weight_slack is not None:
    weights = np.bincount(labels, minlength=3) / len(x)
    se = np.sqrt(MIX.weights * (1 - MIX.weights) / len(x))
    np.testing.assert_array_less(np.abs(weights - MIX.weights), 5 * se + weight_slack)
  for k in range(3):
    xs, cov = x[labels == k], MIX.covs[k]
    var = np.diag(cov)
    gap_mean, gap_cov = _mode_gap(k, steps_of)
    np.testing.assert_array_less(np.abs(xs.mean(0) - MIX.means[k]),
                                 5 * np.sqrt(var / len(xs)) + gap_mean)
    np.testing.assert_array_less(np.abs(np.cov(xs.T) - cov),
                                 5 * np.sqrt((np.outer(var, var) + cov ** 2) / len(xs)) + gap_cov)


def test_ddpm_reproduces_mixture(schedule, model):
  x = samplers.ddpm(model, schedule, jax.random.PRNGKey(0), (N, 2), clip_denoised=False)
  # The weights are settled at high noise, where 1000 steps resolve the score finely; we
  # allow 0.01 beyond sampling error.
  _assert_modes(x, _assign(x), _ddpm_steps, weight_slack=0.01)


def test_ddim_reproduces_mixture(schedule, model):
  x = samplers.ddim(model, schedule, jax.random.PRNGKey(1), (N, 2), num_steps=200,
                    clip_denoised=False)
  # 200 deterministic steps shrink a mode's variance by about 4% (its oracle); the
  # weights are again allowed 0.01.
  _assert_modes(x, _assign(x), functools.partial(_ddim_steps, 200), weight_slack=0.01)


def _labels(n):
  return jnp.arange(n) % 3


def _conditional_model(schedule, y):
  """The exact class-conditional model_fn(x_t, t) for labels y."""
  conditional = testing.conditional_model_fn(MIX, schedule, null_label=NULL)
  return lambda x, t: conditional(x, t, y)


def test_classifier_guidance_ddim_is_exactly_conditional(schedule, model):
  """Scale 1 with the exact classifier: eps - sqrt(1 - a) grad log p(y | x_t) is the
  conditional eps (Bayes' rule), so DDIM samples equal those of the conditional model."""
  y = _labels(256)
  cond_fn = samplers.classifier_guidance(testing.classifier_log_prob(MIX, schedule, y), 1.0)
  exact_fn = _conditional_model(schedule, y)
  for eta in (0.0, 0.7):
    guided = samplers.ddim(model, schedule, jax.random.PRNGKey(2), (256, 2), eta=eta,
                           cond_fn=cond_fn, clip_denoised=False)
    exact = samplers.ddim(exact_fn, schedule, jax.random.PRNGKey(2), (256, 2), eta=eta,
                          clip_denoised=False)
    np.testing.assert_allclose(guided, exact, atol=1e-5)  # float32 over 50 steps


def test_classifier_guidance_ddpm_samples_the_class(schedule, model):
  """Dhariwal & Nichol's mean shift Sigma s grad log p(y | x_t) at s = 1 samples p(x | y).

  Against the conditional model with the same noise, samples move by a median 6e-4 and a
  99.9th percentile of 0.011-0.017 over seeds 3-5 (measured; single samples near the modes'
  tails reach 0.03-0.07): the shift uses beta-tilde_t where the exact conditional mean has
  beta_t / sqrt(alpha_t), an O(beta_t) relative difference per step. We allow 0.003 and 0.05;
  a wrong scale or sign moves samples by O(1).
  """
  y = _labels(N)
  cond_fn = samplers.classifier_guidance(testing.classifier_log_prob(MIX, schedule, y), 1.0)
  x = samplers.ddpm(model, schedule, jax.random.PRNGKey(3), (N, 2), cond_fn=cond_fn,
                    clip_denoised=False)
  np.testing.assert_array_equal(_assign(x), y)
  _assert_modes(x, np.asarray(y), _ddpm_steps)
  exact = samplers.ddpm(_conditional_model(schedule, y), schedule, jax.random.PRNGKey(3),
                        (N, 2), clip_denoised=False)
  deviation = np.abs(np.asarray(x) - np.asarray(exact)).max(axis=1)
  assert np.median(deviation) < 0.003 and np.quantile(deviation, 0.999) < 0.05


def test_classifier_free_guidance_samples(schedule):
  """Scale 1 samples each example's class; scale 0 the unconditional mixture."""
  y = _labels(N)
  conditional = testing.conditional_model_fn(MIX, schedule, null_label=NULL)
  x = samplers.ddpm(samplers.classifier_free_guidance(conditional, y, 1.0, NULL), schedule,
                    jax.random.PRNGKey(4), (N, 2), clip_denoised=False)
  np.testing.assert_array_equal(_assign(x), y)
  _assert_modes(x, np.asarray(y), _ddpm_steps)
  x = samplers.ddpm(samplers.classifier_free_guidance(conditional, y, 0.0, NULL), schedule,
                    jax.random.PRNGKey(5), (N, 2), clip_denoised=False)
  _assert_modes(x, _assign(x), _ddpm_steps, weight_slack=0.01)


def test_analytic_eps_is_the_scaled_score(x64):
  """tests/testing.py against Tweedie, independently: E[eps | x_t] = -sqrt(1 - a)
  grad log p_t(x_t), with log p_t from scipy and a central finite difference (float64,
  h = 1e-5: truncation O(h^2) ~ 1e-10, roundoff ~ 1e-16 / h ~ 1e-11; we allow 1e-7)."""
  from scipy import special, stats
  mix = testing.GaussianMixture([0.3, 0.7], [[1.0, -0.5], [-0.8, 0.4]],
                                 [[[0.3, 0.12], [0.12, 0.2]], [[0.1, -0.05], [-0.05, 0.4]]])
  schedule = schedules.make_schedule("linear", T, dtype=jnp.float64)
  x = np.random.default_rng(0).standard_normal((4, 2))
  t = np.array([0, 50, 400, 999])
  a = AB[t]

  def log_p(x, a):
    return special.logsumexp([np.log(w) + stats.multivariate_normal.logpdf(
        x, np.sqrt(a) * m, a * c + (1 - a) * np.eye(2))
                              for w, m, c in zip(mix.weights, mix.means, mix.covs)])

  h = 1e-5
  score = np.array([[(log_p(xi + h * e, ai) - log_p(xi - h * e, ai)) / (2 * h)
                     for e in np.eye(2)] for xi, ai in zip(x, a)])
  np.testing.assert_allclose(testing.eps(mix, schedule, jnp.asarray(x), jnp.asarray(t)),
                             -np.sqrt(1 - a)[:, None] * score, atol=1e-7)
