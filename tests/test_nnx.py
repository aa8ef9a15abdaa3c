"""jaxdiff.models.nnx_model_fn: an NNX module as a model_fn that compiles once per shape."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from compile_counter import count_compiles
from jaxdiff import losses, samplers, schedules
from jaxdiff.models import nnx_model_fn

T = 100


class Denoiser(nnx.Module):
  """eps = W2 tanh(W1 x + time features): a small NNX noise predictor on 3-vectors."""

  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(3, 16, rngs=rngs)
    self.time = nnx.Linear(1, 16, rngs=rngs)
    self.out = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x, t):
    return self.out(jnp.tanh(self.hidden(x) + self.time(t[:, None] / T)))


def test_new_parameters_reuse_the_compiled_sampler():
  schedule = schedules.make_schedule("linear", T)
  model = Denoiser(nnx.Rngs(0))

  def run(model_fn):
    return samplers.ddim(model_fn, schedule, jax.random.PRNGKey(1), (8, 3), num_steps=10)

  first = run(nnx_model_fn(model))
  # A training update changes the parameters; the new model_fn hits the compiled chain.
  model.out.kernel[...] = model.out.kernel[...] + 0.5
  compiles, second = count_compiles(lambda: run(nnx_model_fn(model)))
  assert compiles == 0
  assert not np.allclose(first, second, atol=1e-3)
  # The same chain through the module called directly (a fresh closure: it compiles).
  compiles, direct = count_compiles(lambda: run(lambda x, t: model(x, t)))
  assert compiles >= 1
  np.testing.assert_allclose(second, direct, atol=1e-6)


def test_loss_and_gradient_through_the_state():
  """The Partial's leaves are the NNX state: jax.grad differentiates the loss in them,
  and a jitted training step compiles once across updates."""
  schedule = schedules.make_schedule("linear", T)
  model = Denoiser(nnx.Rngs(0))
  x0 = jax.random.normal(jax.random.PRNGKey(2), (16, 3))
  model_fn = nnx_model_fn(model)

  @jax.jit
  def step(model_fn, key):
    def loss(fn):
      return jnp.mean(losses.diffusion_loss(fn, schedule, x0, key))
    value, grads = jax.value_and_grad(loss)(model_fn)
    return value, jax.tree.map(lambda p, g: p - 0.1 * g, model_fn, grads)

  value, model_fn = step(model_fn, jax.random.PRNGKey(3))
  compiles, (second_value, model_fn) = count_compiles(lambda: step(model_fn,
                                                                    jax.random.PRNGKey(3)))
  assert compiles == 0
  assert second_value < value  # the same noise draw: one gradient step lowers the loss
  graphdef, _ = nnx.split(model)
  updated = nnx.merge(graphdef, model_fn.args[0])
  assert not np.allclose(updated.out.kernel[...], model.out.kernel[...])
