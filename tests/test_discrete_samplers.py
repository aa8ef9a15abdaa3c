"""The categorical samplers: exact laws for oracle models, compile-once, bad input.

With single-position data x0 ~ pi and the model p~(x0 | x_t) = pi, D3PM's x0-parameterized
reverse is the true reverse chain (test_discrete_losses), so ancestral sampling from the
absorbing kernel (whose x_T is exactly its prior) draws from pi; the unmasking sampler with
mu = pi draws pi at every position for any number of steps. Frequencies are checked within
5 binomial standard deviations.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compile_counter import count_compiles
from jaxdiff import discrete

PI = np.array([0.5, 0.3, 0.15, 0.05])
N = 6000


def _constant_logits(log_pi, x_t, t):
  del t
  return jnp.broadcast_to(log_pi, x_t.shape + log_pi.shape)


def _oracle(probs):
  return jax.tree_util.Partial(_constant_logits, jnp.log(jnp.asarray(probs, jnp.float32)))


def _assert_law(samples, probs):
  freq = np.bincount(np.asarray(samples).ravel(), minlength=len(probs)) / samples.size
  bound = 5 * np.sqrt(probs * (1 - probs) / samples.size) + 1e-9
  assert np.all(np.abs(freq - probs) <= bound), (freq, probs)


def test_d3pm_absorbing_sampler_draws_the_data_law():
  kernel = discrete.make_kernel("absorbing", 5, discrete.make_betas("jsd", 20))
  probs = np.append(PI, 0.0)
  x = discrete.d3pm_sample(_oracle(np.append(PI, 1e-30)), kernel, jax.random.PRNGKey(0),
                           (N, 1))
  assert x.dtype == jnp.int32 and x.shape == (N, 1)
  _assert_law(x, probs)


def test_d3pm_uniform_sampler_and_trajectory():
  """The uniform kernel's x_T is a uniform draw (q(x_T) differs from it by abar_T ~ 1e-6)."""
  kernel = discrete.make_kernel("uniform", 4, discrete.make_betas("cosine", 30))
  x, frames = discrete.d3pm_sample(_oracle(PI), kernel, jax.random.PRNGKey(1), (N, 2),
                                   trajectory_stride=7)
  _assert_law(x, PI)
  assert frames.shape == (1 + 5, N, 2)
  np.testing.assert_array_equal(frames[-1], x)
  _assert_law(frames[0], np.full(4, 0.25))


@pytest.mark.parametrize("steps", [1, 4])
def test_unmask_sampler_draws_the_data_law(steps):
  schedule = discrete.make_masking_schedule("cosine")
  x = discrete.unmask_sample(_oracle(PI), schedule, jax.random.PRNGKey(2), (N, 3),
                             num_classes=4, num_steps=steps)
  assert int(x.max()) < 4
  _assert_law(x, PI)


def test_unmask_sampler_keeps_given_tokens_and_unmasks_step_by_step():
  schedule = discrete.make_masking_schedule("linear")
  start = jnp.array([[3, 4, 4, 0]] * 500)
  x, frames = discrete.unmask_sample(_oracle(PI), schedule, jax.random.PRNGKey(3),
                                     num_classes=4, num_steps=10, x_T=start,
                                     trajectory_stride=1)
  np.testing.assert_array_equal(x[:, [0, 3]], start[:, [0, 3]])
  masked = np.mean(np.asarray(frames[:, :, 1:3]) == 4, axis=(1, 2))
  # After step i of 10 (linear alpha) a position is still masked with probability 1 - i/10.
  expected = 1 - np.arange(11) / 10
  assert np.all(np.abs(masked - expected) <= 5 * np.sqrt(expected * (1 - expected) / 1000)
                + 1e-9)


def _linear_model(w, x_t, t):
  return w[x_t] * (1.0 + jnp.reshape(t, (-1, 1, 1)).astype(jnp.float32))


def test_new_parameters_reuse_the_compiled_chain():
  kernel = discrete.make_kernel("uniform", 4, discrete.make_betas("cosine", 10))
  schedule = discrete.make_masking_schedule("linear")
  params = [jnp.asarray(np.random.RandomState(i).normal(size=(5, 4)), jnp.float32)
            for i in range(2)]
  d3pm = lambda w: discrete.d3pm_sample(jax.tree_util.Partial(_linear_model, w[:4]), kernel,
                                        jax.random.PRNGKey(0), (2, 3))
  unmask = lambda w: discrete.unmask_sample(jax.tree_util.Partial(_linear_model, w), schedule,
                                            jax.random.PRNGKey(0), (2, 3), num_classes=4,
                                            num_steps=5)
  for run in (d3pm, unmask):
    run(params[0])
    compiles, _ = count_compiles(lambda run=run: run(params[1]))
    assert compiles == 0


def test_samplers_run_inside_a_callers_jit():
  kernel = discrete.make_kernel("absorbing", 5, discrete.make_betas("jsd", 6))
  model = _oracle(np.append(PI, 1e-30))

  @jax.jit
  def draw(key):
    return discrete.d3pm_sample(model, kernel, key, (4, 2))

  assert draw(jax.random.PRNGKey(0)).shape == (4, 2)


@pytest.mark.parametrize("call, message", [
    (lambda k, s, m3, m4, key: discrete.d3pm_sample(m3, k, key, (2, 2)), "logits over K=4"),
    (lambda k, s, m3, m4, key: discrete.d3pm_sample(m4, k, key, x_T=np.array([[0, 4]])),
     "x_T holds token 4"),
    (lambda k, s, m3, m4, key: discrete.d3pm_sample(m4, k, key), "give shape="),
    (lambda k, s, m3, m4, key: discrete.unmask_sample(m4, s, key, (2, 2), num_classes=4,
                                                      num_steps=0), "num_steps must be"),
    (lambda k, s, m3, m4, key: discrete.unmask_sample(m4, s, key, num_classes=4,
                                                      x_T=np.array([[5, 0]])),
     "x_T holds token 5"),
    (lambda k, s, m3, m4, key: discrete.unmask_sample(m4, s, key, (2, 2), num_classes=3),
     "logits over K=3"),
])
def test_bad_input_is_a_one_line_error_before_compiling(call, message):
  kernel = discrete.make_kernel("uniform", 4, discrete.make_betas("cosine", 5))
  schedule = discrete.make_masking_schedule("linear")
  args = (kernel, schedule, _oracle(PI[:3] / PI[:3].sum()), _oracle(PI), jax.random.PRNGKey(0))

  def attempt():
    with pytest.raises(ValueError, match=message) as error:
      call(*args)
    assert "\n" not in str(error.value)

  compiles, _ = count_compiles(attempt)
  assert compiles == 0
