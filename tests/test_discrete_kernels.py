"""D3PM kernels and posteriors against float64 derivations written from the equations.

The reference matrices below are built from Austin et al. 2021 (App. A.2) independently of
jaxdiff: Q_t by its formula, Qbar_t as the explicit product Q_0 ... Q_t, the posterior by
Bayes' rule over the K previous states.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from jaxdiff import discrete

K = 5
T = 12


def reference_onestep(kind, betas, k, embeddings=None, neighbors=2):
  """[T, K, K] one-step matrices from the paper's formulas (float64, loops)."""
  mats = []
  for beta in betas:
    q = np.zeros((k, k))
    for i, j in itertools.product(range(k), range(k)):
      if kind == "uniform":
        q[i, j] = (1 - beta) * (i == j) + beta / k
      elif kind == "absorbing":
        q[i, j] = (1 - beta) * (i == j) + beta * (j == k - 1)
      elif kind == "gaussian":
        norm = sum(np.exp(-4 * n * n / ((k - 1) ** 2 * beta)) for n in range(-(k - 1), k))
        q[i, j] = np.exp(-4 * (i - j) ** 2 / ((k - 1) ** 2 * beta)) / norm if i != j else 0
    if kind == "gaussian":
      q[np.diag_indices(k)] = 1 - q.sum(axis=1)
    if kind == "embedding":
      adjacency = np.zeros((k, k))
      for i in range(k):
        dist = [np.sum((embeddings[i] - embeddings[j]) ** 2) if j != i else np.inf
                for j in range(k)]
        for j in np.argsort(dist, kind="stable")[:neighbors]:
          adjacency[i, j] += 1 / (2 * neighbors)
          adjacency[j, i] += 1 / (2 * neighbors)
      q = scipy.linalg.expm(beta * (adjacency - np.diag(adjacency.sum(axis=1))))
    mats.append(q)
  return np.array(mats)


def reference_cumulative(onestep):
  out, product = [], np.eye(onestep.shape[1])
  for q in onestep:
    product = product @ q
    out.append(product)
  return np.array(out)


EMBEDDINGS = np.random.RandomState(0).normal(size=(K, 3))
CASES = {
    "uniform": dict(betas=discrete.make_betas("cosine", T)),
    "absorbing": dict(betas=discrete.make_betas("jsd", T)),
    "gaussian": dict(betas=discrete.make_betas("linear", T, start=0.05, stop=1.0)),
    "embedding": dict(betas=discrete.make_betas("linear", T, start=0.1, stop=1.0),
                      embeddings=EMBEDDINGS, num_neighbors=2),
}


def kernel_and_reference(kind):
  case = CASES[kind]
  kernel = discrete.make_kernel(kind, K, dtype=jnp.float64, **case)
  onestep = reference_onestep(kind, case["betas"], K, case.get("embeddings"))
  return kernel, onestep, reference_cumulative(onestep)


@pytest.mark.parametrize("kind", list(CASES))
def test_rows_sum_to_one_and_match_the_formulas(kind, x64):
  kernel, onestep, cumulative = kernel_and_reference(kind)
  for t in range(T):
    q = np.asarray(discrete.transition_matrix(kernel, t))
    qbar = np.asarray(discrete.cumulative_matrix(kernel, t))
    for m in (q, qbar):
      np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)
      assert m.min() >= -1e-15
    np.testing.assert_allclose(q, onestep[t], atol=1e-12)
    np.testing.assert_allclose(qbar, cumulative[t], atol=1e-12)


@pytest.mark.parametrize("kind", list(CASES))
def test_cumulative_is_the_product_of_the_one_step_matrices(kind, x64):
  """Qbar_t of the library equals the product of the library's own Q_0 ... Q_t (for the
  structured kernels: the closed form against the matrix product)."""
  kernel = discrete.make_kernel(kind, K, dtype=jnp.float64, **CASES[kind])
  product = np.eye(K)
  for t in range(T):
    product = product @ np.asarray(discrete.transition_matrix(kernel, t))
    np.testing.assert_allclose(np.asarray(discrete.cumulative_matrix(kernel, t)), product,
                               atol=1e-12)


@pytest.mark.parametrize("kind", list(CASES))
def test_marginal_and_sample_law(kind, x64):
  kernel, _, cumulative = kernel_and_reference(kind)
  x0 = jnp.arange(K)[:, None]
  for t in (0, 5, T - 1):
    log_q = discrete.q_log_probs(kernel, x0, jnp.full((K,), t))[:, 0]
    np.testing.assert_allclose(np.exp(np.asarray(log_q)), cumulative[t], atol=1e-12)
  # Sampling: empirical law of 20000 draws of x_5 from x0 = 1 (5-sigma binomial bound).
  n, t = 20000, 5
  draws = discrete.q_sample(kernel, jnp.ones((n, 1), jnp.int32), jnp.full((n,), t),
                            jax.random.PRNGKey(0))
  freq = np.bincount(np.asarray(draws).ravel(), minlength=K) / n
  p = cumulative[t][1]
  assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12)


@pytest.mark.parametrize("kind", list(CASES))
def test_posterior_is_bayes_rule(kind, x64):
  """q(x_{t-1} = i | x_t, x_0) = Q_t[i, x_t] Qbar_{t-1}[x_0, i] / Qbar_t[x_0, x_t], over all
  (x_0, x_t) with q(x_t | x_0) > 0; at t = 0 the posterior is x_0 itself."""
  kernel, onestep, cumulative = kernel_and_reference(kind)
  pairs = [(a, b) for a in range(K) for b in range(K)]
  x0 = jnp.array([a for a, _ in pairs])[:, None]
  x_t = jnp.array([b for _, b in pairs])[:, None]
  for t in range(T):
    logits = discrete.q_posterior_logits(kernel, discrete.onehot_log_probs(x0, K),
                                         x_t, jnp.full((len(pairs),), t))[:, 0]
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    for row, (a, b) in enumerate(pairs):
      if t == 0:
        expected = np.eye(K)[a]
      else:
        if cumulative[t][a, b] == 0:
          continue
        expected = onestep[t][:, b] * cumulative[t - 1][a, :] / cumulative[t][a, b]
      np.testing.assert_allclose(probs[row], expected, atol=1e-12)


@pytest.mark.parametrize("kind", list(CASES))
def test_reverse_model_marginalizes_the_predicted_x0(kind, x64):
  """p(x_{t-1} | x_t) proportional to sum_{x0} p~(x0) q(x_{t-1}, x_t | x0) (eq. 4)."""
  kernel, onestep, cumulative = kernel_and_reference(kind)
  rng = np.random.RandomState(1)
  logits = rng.normal(size=(K, 1, K)) * 2
  p_tilde = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  x_t = jnp.arange(K)[:, None]
  for t in range(1, T):
    out = discrete.p_logits(kernel, jnp.asarray(logits), x_t, jnp.full((K,), t))[:, 0]
    probs = np.asarray(jax.nn.softmax(out, axis=-1))
    for b in range(K):
      joint = sum(p_tilde[b, 0, a] * cumulative[t - 1][a, :] * onestep[t][:, b]
                  for a in range(K))
      if joint.sum() == 0:  # x_t impossible at t (unmasked at the absorbing chain's end)
        continue
      np.testing.assert_allclose(probs[b], joint / joint.sum(), atol=1e-12)
  at_zero = discrete.p_logits(kernel, jnp.asarray(logits), x_t, jnp.zeros((K,), jnp.int32))
  np.testing.assert_allclose(np.asarray(jax.nn.softmax(at_zero, -1)), p_tilde, atol=1e-12)


def test_structured_kernels_are_exact_in_float32_over_long_chains():
  """In log space abar_t far below float32's range, and 1 - abar_t near float32's epsilon,
  keep their float64 values (a linear-space 1 - abar or abar would round to 0)."""
  steps = 2000
  betas = np.full(steps, 0.07)
  betas[0] = 3e-8
  log_abar = np.cumsum(np.log1p(-betas))                         # down to -145
  for kind in ("uniform", "absorbing"):
    kernel = discrete.make_kernel(kind, K, betas)                 # float32
    x0 = jnp.zeros((2, 1), jnp.int32)
    log_q = np.asarray(discrete.q_log_probs(kernel, x0, jnp.array([0, steps - 1])))[:, 0]
    if kind == "absorbing":
      np.testing.assert_allclose(log_q[1, 0], log_abar[-1], rtol=1e-6)
      np.testing.assert_allclose(log_q[0, K - 1], np.log(3e-8), rtol=1e-6)
    else:
      np.testing.assert_allclose(log_q[0, 1], np.log(3e-8 / K), rtol=1e-6)
      np.testing.assert_allclose(log_q[1], np.log(np.exp(log_abar[-1]) * np.eye(K)[0]
                                                  + (1 - np.exp(log_abar[-1])) / K),
                                 rtol=1e-6)


def test_make_betas_schedules():
  np.testing.assert_allclose(discrete.make_betas("jsd", 4), [1 / 4, 1 / 3, 1 / 2, 1])
  np.testing.assert_allclose(discrete.make_betas("linear", 3, start=0.1, stop=0.5),
                             [0.1, 0.3, 0.5])
  s = np.arange(11) / 10
  abar = np.cos((s + 0.008) / 1.008 * np.pi / 2)
  np.testing.assert_allclose(discrete.make_betas("cosine", 10),
                             np.minimum(1 - abar[1:] / abar[:-1], 0.999))


@pytest.mark.parametrize("call, message", [
    (lambda: discrete.make_kernel("gaussianish", 4, [0.1]), "unknown kernel 'gaussianish'"),
    (lambda: discrete.make_kernel("uniform", 1, [0.1]), "num_classes must be an int >= 2"),
    (lambda: discrete.make_kernel("uniform", 4, [0.0, 0.1]), "betas must be"),
    (lambda: discrete.make_kernel("absorbing", 4, [0.1], absorbing_state=4),
     "absorbing_state=4"),
    (lambda: discrete.make_kernel("embedding", 4, [0.1]), "needs embeddings"),
    (lambda: discrete.make_betas("sqrt", 10), "unknown beta schedule 'sqrt'"),
])
def test_bad_kernel_requests_are_one_line_errors(call, message):
  with pytest.raises(ValueError, match=message) as error:
    call()
  assert "\n" not in str(error.value)
