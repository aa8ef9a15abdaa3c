"""GroupNorm (jaxdiff.models.normalization): values, derivatives of every order and
parameters equal to flax.linen.GroupNorm's, and values equal to Wu & He 2018's equations in
float64 NumPy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.models import normalization

EPS = 1e-6
# (shape, groups): channels per group 1 (DDPM's 32 groups on 32 channels), 2 and 4; NHWC,
# a sequence [B, L, C] and a spatial-free [B, C].
CASES = [((2, 4, 4, 32), 32), ((2, 3, 5, 64), 32), ((3, 6, 8), 2), ((4, 8), 2)]


def _numpy_group_norm(x, scale, bias, groups):
  """Wu & He 2018 eqs. 1-3 in float64: normalize over each group's (spatial, channel)
  elements with the biased variance, then scale and shift per channel."""
  x = np.asarray(x, np.float64)
  b, c = x.shape[0], x.shape[-1]
  grouped = x.reshape(b, -1, groups, c // groups)
  mean = grouped.mean(axis=(1, 3), keepdims=True)
  var = ((grouped - mean) ** 2).mean(axis=(1, 3), keepdims=True)
  y = ((grouped - mean) / np.sqrt(var + EPS)).reshape(x.shape)
  return y * np.asarray(scale, np.float64) + np.asarray(bias, np.float64)


def _inputs(shape, dtype=jnp.float32, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  x = 1.5 + 2.0 * jax.random.normal(keys[0], shape, dtype)  # Off-centre, not unit scale.
  scale = 1.0 + 0.3 * jax.random.normal(keys[1], shape[-1:], dtype)
  bias = 0.3 * jax.random.normal(keys[2], shape[-1:], dtype)
  return x, scale, bias, jax.random.normal(keys[3], shape, dtype)


def _flax(x, scale, bias, groups):
  module = nn.GroupNorm(num_groups=groups, epsilon=EPS, dtype=x.dtype, param_dtype=x.dtype)
  return module.apply({"params": {"scale": scale, "bias": bias}}, x)


def _ours(x, scale, bias, groups):
  return normalization.group_norm_apply(x, scale, bias, groups, EPS)


@pytest.mark.parametrize("shape,groups", CASES)
def test_values_equal_the_equations(shape, groups):
  x, scale, bias, _ = _inputs(shape)
  expected = _numpy_group_norm(x, scale, bias, groups)
  # float32 statistics over <= 512 elements: relative error ~1e-6 of the output's scale.
  np.testing.assert_allclose(_ours(x, scale, bias, groups), expected, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("shape,groups", CASES)
def test_equals_flax_in_float64_to_every_order(shape, groups, x64):
  del x64
  x, scale, bias, v = _inputs(shape, jnp.float64)
  np.testing.assert_allclose(_ours(x, scale, bias, groups), _flax(x, scale, bias, groups),
                             rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(_ours(x, scale, bias, groups),
                             _numpy_group_norm(x, scale, bias, groups), rtol=1e-10,
                             atol=1e-10)

  def loss(fn):
    return lambda x, s, b: jnp.sum(jnp.sin(fn(x, s, b, groups)) * v)

  for a, b in zip(jax.grad(loss(_ours), argnums=(0, 1, 2))(x, scale, bias),
                  jax.grad(loss(_flax), argnums=(0, 1, 2))(x, scale, bias)):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)

  def jvp(fn):  # Forward mode (sliced score matching, likelihood's divergence).
    return lambda x: jax.jvp(lambda y: fn(y, scale, bias, groups), (x,), (v,))[1]

  np.testing.assert_allclose(jvp(_ours)(x), jvp(_flax)(x), rtol=1e-9, atol=1e-10)
  # Reverse over forward: the gradient of a directional derivative.
  second = [jax.grad(lambda x, fn=fn: jnp.sum(jnp.square(jvp(fn)(x))))(x)
            for fn in (_ours, _flax)]
  np.testing.assert_allclose(second[0], second[1], rtol=1e-8, atol=1e-9)


def test_module_has_flax_parameters_and_float32_output():
  x = jnp.ones((2, 4, 4, 16), jnp.bfloat16)

  class Ours(nn.Module):
    @nn.compact
    def __call__(self, x):
      return normalization.group_norm(x, num_groups=32, name="norm")

  class Theirs(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.GroupNorm(num_groups=16, epsilon=EPS, name="norm")(x)

  ours = Ours().init(jax.random.key(0), x)
  theirs = Theirs().init(jax.random.key(0), x)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), ours) == jax.tree.map(
      lambda a: (a.shape, jnp.float32), theirs)
  assert Ours().apply(ours, x).dtype == jnp.float32
