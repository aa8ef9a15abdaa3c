"""D3PM's bound and losses against float64 derivations (Austin et al. 2021, Sec. 3.3-3.4).

References: the KL terms by brute force over the K states with the explicit matrices of
test_discrete_kernels; the whole expected bound of single-token data under the Bayes-optimal
x0-predictor, whose value is analytic (see `test_expected_bound_of_the_data_marginal`).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compile_counter import count_compiles
from jaxdiff import discrete
from test_discrete_kernels import CASES, K, T, kernel_and_reference


def _kl(p, q):
  keep = p > 0
  return float(np.sum(p[keep] * (np.log(p[keep]) - np.log(q[keep]))))


def _all_pairs():
  x0 = jnp.repeat(jnp.arange(K), K)[:, None]
  x_t = jnp.tile(jnp.arange(K), K)[:, None]
  return x0, x_t


@pytest.mark.parametrize("kind", list(CASES))
def test_vb_terms_are_brute_force_kls(kind, x64):
  """The term at step t for a smoothed oracle p~ = (1 - eps) e_{x0} + eps / K, at every
  (x0, x_t): KL of the Bayes posterior to the marginalized one, -log p~(x0) at t = 0."""
  kernel, onestep, cumulative = kernel_and_reference(kind)
  eps = 0.3
  x0, x_t = _all_pairs()
  p_tilde = (1 - eps) * np.eye(K)[np.asarray(x0)] + eps / K          # [K*K, 1, K]
  logits = jnp.log(jnp.asarray(p_tilde))
  for t in range(T):
    got = np.asarray(discrete.vb_terms_bpd(kernel, logits, x0, x_t, jnp.full(x0.shape[:1], t)))
    for row in range(len(got)):
      a, b = int(x0[row, 0]), int(x_t[row, 0])
      if t == 0:
        expected = -np.log(p_tilde[row, 0, a])
      else:
        if cumulative[t][a, b] == 0:
          continue
        true = onestep[t][:, b] * cumulative[t - 1][a] / cumulative[t][a, b]
        model = onestep[t][:, b] * (p_tilde[row, 0] @ cumulative[t - 1])
        expected = _kl(true, model / model.sum())
      np.testing.assert_allclose(got[row], expected / math.log(2), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kind", list(CASES))
def test_oracle_that_knows_x0_costs_only_the_prior(kind, x64):
  """p~ = e_{x0}: every KL and the decoder term vanish, so the whole bound (calc_bpd) is
  KL(q(x_T | x0) || p(x_T)), computed here from Qbar_{T-1} and the stationary law."""
  kernel, _, cumulative = kernel_and_reference(kind)
  x0 = jnp.arange(K)[:, None]
  if kind == "absorbing":
    x0 = x0[:-1]                                        # data never holds the mask
  oracle = jax.tree_util.Partial(lambda x0, x_t, t: discrete.onehot_log_probs(x0, K), x0)
  out = discrete.calc_bpd(oracle, kernel, x0, jax.random.PRNGKey(0))
  stationary = np.eye(K)[K - 1] if kind == "absorbing" else np.full(K, 1 / K)
  tiny = np.finfo(np.float64).tiny
  for row, a in enumerate(np.asarray(x0[:, 0])):
    q = cumulative[T - 1][a]
    expected = _kl(q, np.maximum(stationary, tiny)) / math.log(2)
    np.testing.assert_allclose(out["prior_bpd"][row], expected, rtol=1e-10, atol=1e-14)
  np.testing.assert_array_equal(np.asarray(out["vb"]), 0.0)
  np.testing.assert_allclose(out["total_bpd"], out["prior_bpd"], rtol=0, atol=0)
  loss = discrete.d3pm_loss(oracle, kernel, x0, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(np.asarray(loss), 0.0)


@pytest.mark.parametrize("kind", list(CASES))
def test_expected_bound_of_the_data_marginal(kind, x64):
  """Single-token data x0 ~ pi and the model p~(x0 | x_t) = pi: the x0-parameterized reverse
  (eq. 4) is then the true reverse q(x_{t-1} | x_t) for every t >= 1, so the expected bound
  is exactly H(pi) + KL(q(x_T) || p(x_T)) + I(x0; x1), the last two the prior's mismatch and
  the decoder's (p(x0 | x1) = pi, not q(x0 | x1)). Expectations by enumeration of x_t."""
  kernel, onestep, cumulative = kernel_and_reference(kind)
  states = K - 1 if kind == "absorbing" else K
  pi = np.zeros(K)
  pi[:states] = np.random.RandomState(2).dirichlet(np.ones(states))
  logits = jnp.broadcast_to(jnp.log(jnp.asarray(pi)), (K * K, 1, K))
  x0, x_t = _all_pairs()
  weights = pi[np.asarray(x0[:, 0])] * np.array(
      [[cumulative[t][a, b] for a, b in zip(np.asarray(x0[:, 0]), np.asarray(x_t[:, 0]))]
       for t in range(T)])                                               # [T, K*K]
  total = 0.0
  for t in range(T):
    terms = np.asarray(discrete.vb_terms_bpd(kernel, logits, x0, x_t, jnp.full((K * K,), t)))
    total += np.sum(weights[t][weights[t] > 0] * terms[weights[t] > 0])
  prior = np.asarray(discrete.prior_bpd(kernel, jnp.arange(K)[:, None]))
  total += np.sum(pi * prior)
  stationary = np.eye(K)[K - 1] if kind == "absorbing" else np.full(K, 1 / K)
  q_T, q_1 = pi @ cumulative[T - 1], pi @ onestep[0]
  mutual = sum(pi[a] * _kl(onestep[0][a], q_1) for a in range(K) if pi[a] > 0)
  entropy = -np.sum(pi[pi > 0] * np.log(pi[pi > 0]))
  expected = (entropy + _kl(q_T, np.maximum(stationary, np.finfo(float).tiny)) + mutual)
  np.testing.assert_allclose(total, expected / math.log(2), rtol=1e-10)


def test_hybrid_loss_adds_lambda_times_the_cross_entropy(x64):
  kernel, _, _ = kernel_and_reference("uniform")
  x0 = jnp.array([[0, 3], [4, 1]])
  eps = 0.2
  model = jax.tree_util.Partial(
      lambda x0, x_t, t: jnp.log((1 - eps) * jax.nn.one_hot(x0, K) + eps / K), x0)
  key = jax.random.PRNGKey(3)
  kl = discrete.d3pm_loss(model, kernel, x0, key, loss_type="kl")
  ce = discrete.d3pm_loss(model, kernel, x0, key, loss_type="ce")
  hybrid = discrete.d3pm_loss(model, kernel, x0, key, loss_type="hybrid", hybrid_coeff=0.5)
  np.testing.assert_allclose(ce, -np.log(1 - eps + eps / K) / math.log(2), rtol=1e-12)
  np.testing.assert_allclose(hybrid, kl + 0.5 * ce, rtol=1e-12)


def test_calc_bpd_columns_are_the_steps(x64):
  """Column t of vb is the term of step t at the draw x_t ~ q(x_t | x0) with key
  fold_in(rng, t); total = prior + sum of the columns."""
  kernel, _, _ = kernel_and_reference("gaussian")
  x0 = jnp.array([[0, 4, 2], [1, 1, 3]])
  model = jax.tree_util.Partial(lambda w, x_t, t: w[x_t] * (1.0 + t[:, None, None]),
                                jnp.asarray(np.random.RandomState(4).normal(size=(K, K))))
  rng = jax.random.PRNGKey(5)
  out = discrete.calc_bpd(model, kernel, x0, rng)
  for t in (0, 4, T - 1):
    tb = jnp.full((2,), t)
    x_t = discrete.q_sample(kernel, x0, tb, jax.random.fold_in(rng, t))
    np.testing.assert_allclose(out["vb"][:, t], discrete.vb_terms_bpd(
        kernel, model(x_t, tb), x0, x_t, tb), rtol=1e-12)
  np.testing.assert_allclose(out["total_bpd"], out["prior_bpd"] + out["vb"].sum(1),
                             rtol=1e-12)


def _zeros_model(num_classes):
  return jax.tree_util.Partial(lambda k, x, t: jnp.zeros(x.shape + (num_classes,)) * k,
                               jnp.ones(()))


@pytest.mark.parametrize("x0, model_k, loss_type, message", [
    (np.array([[0, 5]]), K, "hybrid", "x0 holds token 5, out of range for K=5"),
    (np.array([[-1, 2]]), K, "hybrid", "x0 holds token -1"),
    (np.array([[0.0, 1.0]]), K, "hybrid", "x0 must be integer tokens"),
    (np.array([[0, 1]]), K - 1, "hybrid", "logits over K=5 categories shaped \\(1, 2, 5\\)"),
    (np.array([[0, 1]]), K, "mse", "unknown loss_type 'mse'"),
])
def test_bad_input_is_a_one_line_error_before_compiling(x0, model_k, loss_type, message):
  kernel = discrete.make_kernel("uniform", K, discrete.make_betas("cosine", T))
  model, x0, key = _zeros_model(model_k), jnp.asarray(x0), jax.random.PRNGKey(0)
  calls = [lambda: discrete.d3pm_loss(model, kernel, x0, key, loss_type=loss_type)]
  if loss_type == "hybrid":
    calls.append(lambda: discrete.calc_bpd(model, kernel, x0, key))

  def attempt():
    for call in calls:
      with pytest.raises(ValueError, match=message) as error:
        call()
      assert "\n" not in str(error.value)

  compiles, _ = count_compiles(attempt)
  assert compiles == 0
