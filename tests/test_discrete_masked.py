"""Masked diffusion (MD4 / MDLM): the continuous-time ELBO is the limit of the T-step bound,
the T-step bound is D3PM's absorbing bound, and the Monte Carlo losses estimate them.

Expectations over x_t are exact: with D = 3 positions the 2^D masking patterns are
enumerated with their probabilities alpha^(#kept) (1 - alpha)^(#masked); the time integral
of the continuous ELBO is a 64-node Gauss-Legendre rule (the integrand is smooth: every
pattern with a masked position carries a factor 1 - alpha that cancels the weight's pole).
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import discrete

K, D = 3, 3
X0 = np.array([0, 2, 1])
PATTERNS = np.array(list(itertools.product([0, 1], repeat=D)), bool)   # True = masked
W = np.random.RandomState(0).normal(size=(D, K + 1, D, K))
C = np.random.RandomState(1).normal(size=(D, K))

# alpha(t) and -alpha'(t) / (1 - alpha(t)) written from MD4's Table 4.
ALPHA = {"linear": lambda t: 1 - t, "cosine": lambda t: 1 - np.cos(np.pi / 2 * (1 - t)),
         "poly": lambda t: 1 - t ** 2}
WEIGHT = {"linear": lambda t: 1 / t, "cosine": lambda t: np.pi / 2 * np.tan(np.pi / 2 * (1 - t)),
          "poly": lambda t: 2 / t}


def _logits(w, c, x_t, t):
  """A model whose logits at every position depend on all tokens of x_t and on t."""
  onehot = jax.nn.one_hot(x_t, K + 1)                                  # [B, D, K+1]
  return jnp.einsum("bmv,mvnk->bnk", onehot, w) + jnp.sin(3 * t)[:, None, None] * c


MODEL = jax.tree_util.Partial(_logits, jnp.asarray(W), jnp.asarray(C))


def _schedule(kind):
  return discrete.make_masking_schedule(kind, exponent=2.0 if kind == "poly" else 1.0)


def _pattern_batch():
  x_t = np.where(PATTERNS, K, X0[None])
  return jnp.asarray(np.repeat(X0[None], len(PATTERNS), 0)), jnp.asarray(x_t)


def _expected_ce(t, alpha):
  """E_q[masked cross-entropy at each time of t [N]] in nats, [N], by enumeration of the
  masking patterns (alpha [N] the kept probability at t)."""
  x0, x_t = _pattern_batch()
  n, p = len(t), len(PATTERNS)
  x0, x_t = jnp.tile(x0, (n, 1)), jnp.tile(x_t, (n, 1))
  times = jnp.repeat(jnp.asarray(t, jnp.float64), p)
  ce = np.asarray(discrete.masked_cross_entropy(MODEL(x_t, times), x0, x_t,
                                                num_classes=K)).reshape(n, p)
  kept = (~PATTERNS).sum(1)
  alpha = np.asarray(alpha)[:, None]
  return np.sum(alpha ** kept * (1 - alpha) ** (D - kept) * ce, axis=1)


def continuous_elbo(kind):
  """L_inf in bits/dim by Gauss-Legendre quadrature, weights from the library."""
  nodes, weights = np.polynomial.legendre.leggauss(64)
  t = (nodes + 1) / 2
  w = np.asarray(_schedule(kind).weight(jnp.asarray(t)))
  return float(np.sum(weights / 2 * w * _expected_ce(t, ALPHA[kind](t)))) / (D * math.log(2))


def discrete_elbo(kind, steps):
  """L_T in bits/dim: sum_i (alpha_s - alpha_t) / (1 - alpha_t) E[CE at t_i]."""
  t = np.arange(1, steps + 1) / steps
  weight = np.asarray(_schedule(kind).discrete_weight(jnp.asarray(t - 1 / steps),
                                                      jnp.asarray(t)))
  return float(np.sum(weight * _expected_ce(t, ALPHA[kind](t)))) / (D * math.log(2))


@pytest.mark.parametrize("kind", list(ALPHA))
def test_schedule_matches_the_formulas(kind, x64):
  schedule = _schedule(kind)
  t = np.linspace(0.01, 0.99, 7)
  np.testing.assert_allclose(schedule.alpha(jnp.asarray(t)), ALPHA[kind](t), rtol=1e-12)
  np.testing.assert_allclose(schedule.weight(jnp.asarray(t)), WEIGHT[kind](t), rtol=1e-10)
  h = 1e-6
  central = (ALPHA[kind](t + h) - ALPHA[kind](t - h)) / (2 * h)
  np.testing.assert_allclose(schedule.dalpha(jnp.asarray(t)), central, rtol=1e-6)
  assert float(schedule.alpha(jnp.asarray(0.0))) == 1.0
  assert abs(float(schedule.alpha(jnp.asarray(1.0)))) < 1e-15
  assert float(schedule.weight(jnp.asarray(0.0))) == 0.0


@pytest.mark.parametrize("kind", list(ALPHA))
def test_continuous_elbo_is_the_limit_of_the_discrete_one(kind, x64):
  """|L_T - L_inf| shrinks like 1/T (a Riemann-Stieltjes sum) down to 1e-3 relative."""
  limit = continuous_elbo(kind)
  errors = {steps: abs(discrete_elbo(kind, steps) - limit) for steps in (16, 128, 1024)}
  assert 4 < errors[16] / errors[128] < 16
  assert 4 < errors[128] / errors[1024] < 16
  assert errors[1024] < 1e-3 * limit


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_discrete_masked_bound_is_the_absorbing_d3pm_bound(kind, x64):
  """With beta_j = 1 - alpha(t_{j+1}) / alpha(t_j) the absorbing kernel's chain is the
  T-step masking process, and for a model that copies unmasked tokens every D3PM term
  (KL at j >= 1, decoder at j = 0) equals MD4's term at every x_t; the prior term is 0."""
  steps = 8
  schedule = _schedule(kind)
  grid = np.arange(steps + 1) / steps
  alphas = ALPHA[kind](grid)
  betas = 1 - alphas[1:] / alphas[:-1]
  kernel = discrete.make_kernel("absorbing", K + 1, betas, dtype=jnp.float64)
  x0, x_t = _pattern_batch()

  def d3pm_logits(x_t, t):
    logits = MODEL(x_t, (t + 1) / steps)
    copy = jnp.where(jax.nn.one_hot(x_t, K, dtype=bool), 0.0, -1e30)
    logits = jnp.where((x_t < K)[..., None], copy, logits)
    return jnp.concatenate([logits, jnp.full(logits.shape[:-1] + (1,), -1e30)], axis=-1)

  for j in range(steps):
    tb = jnp.full((len(PATTERNS),), j)
    d3pm = discrete.vb_terms_bpd(kernel, d3pm_logits(x_t, tb), x0, x_t, tb)
    t = (j + 1) / steps
    weight = schedule.discrete_weight(jnp.asarray(j / steps), jnp.asarray(t))
    ce = discrete.masked_cross_entropy(MODEL(x_t, jnp.full(tb.shape, t)), x0, x_t,
                                       num_classes=K)
    np.testing.assert_allclose(d3pm, weight * ce / (D * math.log(2)), rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(discrete.prior_bpd(kernel, x0), 0.0, atol=1e-12)


def _monte_carlo(fn, n):
  values = np.asarray(fn(jnp.asarray(np.repeat(X0[None], n, 0))))
  return values.mean(), values.std() / math.sqrt(n)


@pytest.mark.parametrize("antithetic", [False, True])
def test_masked_loss_estimates_the_elbo(antithetic, x64):
  """Mean of the per-example losses within 5 standard errors of the exact bound (poly
  schedule, w = 2: the estimator's variance is finite; antithetic times only lower it)."""
  schedule = _schedule("poly")
  n = 20000
  key = jax.random.PRNGKey(0)
  mean, stderr = _monte_carlo(lambda x0: discrete.masked_loss(
      MODEL, schedule, x0, key, num_classes=K, antithetic=antithetic), n)
  assert abs(mean - continuous_elbo("poly")) < 5 * stderr
  mean, stderr = _monte_carlo(lambda x0: discrete.masked_loss(
      MODEL, schedule, x0, key, num_classes=K, num_steps=4), n)
  assert abs(mean - discrete_elbo("poly", 4)) < 5 * stderr
  mean, stderr = _monte_carlo(lambda x0: discrete.masked_bpd(
      MODEL, schedule, x0, key, num_classes=K, num_points=8)["total_bpd"], 4000)
  assert abs(mean - continuous_elbo("poly")) < 5 * stderr


@pytest.mark.parametrize("call, message", [
    (lambda m, x: discrete.masked_loss(m, _schedule("linear"), x, jax.random.PRNGKey(0),
                                       num_classes=K - 1), "x0 holds token 2"),
    (lambda m, x: discrete.masked_loss(m, _schedule("linear"), x.astype(jnp.float32),
                                       jax.random.PRNGKey(0), num_classes=K), "integer tokens"),
    (lambda m, x: discrete.masked_bpd(m, _schedule("linear"), x, jax.random.PRNGKey(0),
                                      num_classes=K + 1), "logits over K=4"),
    (lambda m, x: discrete.make_masking_schedule("geometric"), "unknown masking schedule"),
    (lambda m, x: discrete.make_masking_schedule("poly", exponent=0.0), "exponent must be > 0"),
])
def test_bad_input_is_a_one_line_error(call, message):
  with pytest.raises(ValueError, match=message) as error:
    call(MODEL, jnp.asarray(X0[None]))
  assert "\n" not in str(error.value)
