"""Samplers' contract: timesteps seen by the model, parameterizations, guidance
exactness, thresholding, compilation caching, sharding, and input errors."""

import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compile_counter import count_compiles
from jaxdiff import samplers, schedules, testing

T = 1000
DATA = testing.GaussianMixture.gaussian([0.3, -0.2], [[0.3, 0.1], [0.1, 0.2]])


@pytest.fixture(scope="module")
def schedule():
  return schedules.make_schedule("linear", T)


@pytest.fixture(scope="module")
def model(schedule):
  return testing.model_fn(DATA, schedule)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "inpaint", "sdedit", "given"])
def test_model_sees_original_timesteps(schedule, model, sampler):
  """Respaced samplers call the model with int32 [B] original timesteps, descending."""
  seen = []

  def spy(x, t):
    chex.assert_shape(t, (x.shape[0],))
    assert t.dtype == jnp.int32
    jax.debug.callback(lambda t: seen.append(np.asarray(t)), t, ordered=True)
    return model(x, t)

  rng, shape = jax.random.PRNGKey(0), (2, 2)
  if sampler == "ddpm":
    jax.block_until_ready(samplers.ddpm(spy, schedule, rng, shape, num_steps=10))
  elif sampler == "ddim":
    jax.block_until_ready(samplers.ddim(spy, schedule, rng, shape, num_steps=10))
  elif sampler == "inpaint":
    jax.block_until_ready(samplers.inpaint(spy, schedule, rng, jnp.zeros(shape),
                                           jnp.ones(shape), num_steps=10))
  elif sampler == "sdedit":
    jax.block_until_ready(samplers.sdedit(spy, schedule, rng, jnp.zeros(shape), strength=0.45,
                                          num_steps=10))
  else:
    kept = [0, 7, 300, 999]
    jax.block_until_ready(samplers.ddpm(spy, schedule, rng, shape, timesteps=kept))
    jax.block_until_ready(samplers.ddim(spy, schedule, rng, shape, timesteps=kept))
  expected = {"sdedit": np.arange(900, -1, -100)[-5:],
              "given": np.array([999, 300, 7, 0] * 2)}.get(sampler, np.arange(900, -1, -100))
  np.testing.assert_array_equal(np.stack(seen), np.repeat(expected[:, None], 2, axis=1))


@pytest.mark.parametrize("prediction", ["x0", "v", "mean"])
def test_parameterizations_agree(schedule, model, prediction):
  """The exact model in any parameterization gives the same samples (same rng).

  Different float32 arithmetic per step: agreement to 1e-3 over 1000 steps.
  """
  kw = dict(clip_denoised=False)
  rng, shape = jax.random.PRNGKey(1), (256, 2)
  fn = testing.model_fn(DATA, schedule, prediction=prediction)
  np.testing.assert_allclose(
      samplers.ddpm(fn, schedule, rng, shape, prediction=prediction, **kw),
      samplers.ddpm(model, schedule, rng, shape, **kw), atol=1e-3)
  if prediction != "mean":  # a mean-predicting model has no DDIM (eps, x0) to speak of
    np.testing.assert_allclose(
        samplers.ddim(fn, schedule, rng, shape, prediction=prediction, **kw),
        samplers.ddim(model, schedule, rng, shape, **kw), atol=1e-3)


@pytest.mark.parametrize("variance,fixed,num_steps", [("learned", "fixed_small", None),
                                                      ("learned_range", "fixed_large", 20)])
def test_learned_variances(schedule, model, variance, fixed, num_steps):
  """A 2C-channel model whose variance channels encode a fixed variance samples like it.

  learned: log-variance = the clipped log posterior variance of the original chain
  (= fixed_small on the full chain); learned_range: fraction +1, i.e. log beta of the
  chain being run (= fixed_large, also respaced, except at t = 0 where no noise is added).
  """
  def learned(x, t):
    if variance == "learned":
      extra = schedule.posterior_log_variance_clipped[t]
    else:
      extra = jnp.ones_like(t, x.dtype)
    return jnp.concatenate([model(x, t), jnp.broadcast_to(extra[:, None], x.shape)], -1)

  rng, shape = jax.random.PRNGKey(2), (64, 2)
  x = samplers.ddpm(learned, schedule, rng, shape, variance=variance, num_steps=num_steps,
                    clip_denoised=False)
  ref = samplers.ddpm(model, schedule, rng, shape, variance=fixed, num_steps=num_steps,
                      clip_denoised=False)
  np.testing.assert_allclose(x, ref, atol=1e-5)
  if variance == "learned":  # DDIM uses the first C channels only
    np.testing.assert_array_equal(
        samplers.ddim(learned, schedule, rng, shape, variance=variance),
        samplers.ddim(model, schedule, rng, shape))


def test_last_step_adds_no_noise(schedule, model):
  """A one-step chain returns the model's mean: identical for any rng."""
  x_T = jax.random.normal(jax.random.PRNGKey(3), (8, 2))
  for variance in ("fixed_small", "fixed_large"):
    a = samplers.ddpm(model, schedule, jax.random.PRNGKey(4), x_T.shape, num_steps=1,
                      x_T=x_T, variance=variance)
    b = samplers.ddpm(model, schedule, jax.random.PRNGKey(5), x_T.shape, num_steps=1,
                      x_T=x_T, variance=variance)
    np.testing.assert_array_equal(a, b)


# --- guidance ---------------------------------------------------------------------


def test_classifier_free_guidance_is_exact_and_batched():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((4, 3, 3, 2)), jnp.float32)
  t = jnp.array([0, 5, 9, 999], jnp.int32)
  y = jnp.array([1, 0, 2, 1])
  calls = []

  def cond_model(x, t, y):
    calls.append((x.shape, t.shape, y.shape))
    yy = y.astype(x.dtype).reshape(-1, 1, 1, 1)
    out = jnp.sin(x * (1.0 + yy)) + 0.001 * t.reshape(-1, 1, 1, 1) * yy
    return jnp.concatenate([out, out + 7.0 * yy], axis=-1)  # 2C: prediction, variance

  null = 3
  cond = cond_model(x, t, y)
  uncond = cond_model(x, t, jnp.full_like(y, null))
  calls.clear()
  np.testing.assert_array_equal(samplers.classifier_free_guidance(cond_model, y, 0.0, null)(x, t),
                                uncond)
  np.testing.assert_array_equal(samplers.classifier_free_guidance(cond_model, y, 1.0, null)(x, t),
                                cond)
  assert calls == [((8, 3, 3, 2), (8,), (8,))] * 2  # one call on [x; x], [y; null]
  guided = samplers.classifier_free_guidance(cond_model, y, 3.0, null, guided_channels=2)(x, t)
  expected = -2.0 * np.asarray(uncond[..., :2]) + 3.0 * np.asarray(cond[..., :2])
  np.testing.assert_allclose(guided[..., :2], expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(guided[..., 2:], cond[..., 2:])


def test_classifier_guidance_gradient():
  """cond_fn = s * grad log p(y | x): for log p = -|x - c|^2 / 2, s * (c - x)."""
  c = jnp.array([0.5, -1.0])
  cond_fn = samplers.classifier_guidance(lambda x, t: -0.5 * jnp.sum((x - c) ** 2, -1), 2.5)
  x = jnp.array([[0.0, 0.0], [1.0, 2.0]])
  np.testing.assert_allclose(cond_fn(x, jnp.zeros(2, jnp.int32)), 2.5 * (c - x), rtol=1e-6)


def test_dynamic_threshold_matches_numpy():
  rng = np.random.default_rng(1)
  x0 = rng.standard_normal((5, 4, 4, 3)) * np.array([0.3, 1.0, 2.0, 4.0, 0.1])[:, None, None,
                                                                              None]
  out = samplers.dynamic_threshold(jnp.asarray(x0, jnp.float32), percentile=90.0)
  s = np.maximum(np.percentile(np.abs(x0).reshape(5, -1), 90.0, axis=1), 1.0)[:, None, None,
                                                                             None]
  np.testing.assert_allclose(out, np.clip(x0, -s, s) / s, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out[4], jnp.asarray(x0[4], jnp.float32))  # inside [-1, 1]


def test_dynamic_thresholding_in_sampler(schedule):
  """Data at (3, 0.5): static clipping keeps (1, 0.5); dynamic thresholding rescales
  by s ~ 3 to about (1, 0.17) (Saharia et al. Sec. 2.3)."""
  data = testing.GaussianMixture.gaussian([3.0, 0.5], [[0.01, 0.0], [0.0, 0.01]])
  fn = testing.model_fn(data, schedule)
  rng, shape = jax.random.PRNGKey(6), (512, 2)
  static = samplers.ddim(fn, schedule, rng, shape, num_steps=50)
  dynamic = samplers.ddim(fn, schedule, rng, shape, num_steps=50,
                          denoised_fn=jax.tree_util.Partial(samplers.dynamic_threshold,
                                                            percentile=99.5))
  # Posterior std of x_0 given the first steps is ~0.1, so the sample means are within
  # 0.05 of these values.
  np.testing.assert_allclose(np.mean(static, 0), [1.0, 0.5], atol=0.05)
  np.testing.assert_allclose(np.mean(dynamic, 0), [1.0, 0.5 / 3.0], atol=0.05)
  assert np.abs(dynamic).max() <= 1.0


# --- compilation and sharding ----------------------------------------------------------


def _count_compiles(fn):
  return count_compiles(fn)[0]


def _eps_apply(params, x, t):
  """A "network" eps = tanh(x W + b t / T) whose params are traced arguments."""
  return jnp.tanh(x @ params["w"] + params["b"] * t[:, None] / T)


def test_second_call_does_not_recompile(schedule):
  traces = []

  def apply(params, x, t):
    traces.append(x.shape)
    return _eps_apply(params, x, t)

  def params(seed):
    w, b = jax.random.normal(jax.random.PRNGKey(seed), (2, 3, 3))
    return {"w": 0.1 * w, "b": b[0]}

  def run(seed, shape=(8, 3), eta=0.0):
    fn = jax.tree_util.Partial(apply, params(seed))
    return (samplers.ddpm(fn, schedule, jax.random.PRNGKey(seed), shape, num_steps=20),
            samplers.ddim(fn, schedule, jax.random.PRNGKey(seed), shape, num_steps=20, eta=eta),
            samplers.ddim_invert(fn, schedule, jnp.ones(shape), num_steps=20))

  jax.block_until_ready(run(0))
  num_traces = len(traces)
  # New params, new rng and a new eta: same compiled programs, no tracing.
  assert _count_compiles(lambda: run(1, eta=0.5)) == 0
  assert len(traces) == num_traces
  assert _count_compiles(lambda: run(2, shape=(16, 3))) >= 3  # a new shape does compile
  assert len(traces) > num_traces


def test_model_fn_identity_keys_the_cache(schedule, model):
  """The same function object reuses the program; a new closure per call recompiles."""
  def run(fn, seed):
    return samplers.ddim(fn, schedule, jax.random.PRNGKey(seed), (4, 2), num_steps=10)

  jax.block_until_ready(run(model, 0))
  assert _count_compiles(lambda: run(model, 1)) == 0
  assert _count_compiles(lambda: run(lambda x, t: model(x, t), 2)) >= 1


def _run_all(x_T, known):
  """Every sampler on one batch; used on one device here and on 8 in a subprocess."""
  schedule = schedules.make_schedule("linear", 1000)
  mix = testing.GaussianMixture.diagonal([0.5, 0.5], [[1.0, 0.0], [-1.0, 0.5]], [0.1, 0.2])
  fn = testing.model_fn(mix, schedule)
  rng = jax.random.PRNGKey(1)
  return {"ddpm": samplers.ddpm(fn, schedule, rng, x_T.shape, num_steps=50, x_T=x_T),
          "ddim": samplers.ddim(fn, schedule, rng, x_T.shape, eta=0.5, x_T=x_T),
          "inpaint": samplers.inpaint(fn, schedule, rng, known, jnp.array([[1.0, 0.0]]),
                                      num_steps=50, x_T=x_T, jump_length=5, resample_count=2),
          "sdedit": samplers.sdedit(fn, schedule, rng, known, strength=0.5, num_steps=50)}


def _inputs():
  return jax.random.normal(jax.random.PRNGKey(0), (32, 2)), jnp.full((32, 2), 0.5)


_SHARDED_SCRIPT = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import test_samplers_api as t

    assert jax.device_count() == 8, jax.devices()
    batch = NamedSharding(Mesh(np.array(jax.devices()), ("b",)), P("b"))
    out = t._run_all(*(jax.device_put(x, batch) for x in t._inputs()))
    for name, x in out.items():
      assert len(x.sharding.device_set) == 8, (name, x.sharding)
    np.savez(sys.argv[1], **{k: np.asarray(v) for k, v in out.items()})
""")


def test_sharded_over_8_devices_matches_one_device(tmp_path):
  """The batch split over 8 (host) devices gives the samples of this 1-device process.

  XLA_FLAGS must be set before jax is imported, so the 8-device run is a subprocess.
  """
  assert jax.device_count() == 1
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([os.path.dirname(__file__),
                                         os.environ.get("PYTHONPATH", "")]))
  out = tmp_path / "sharded.npz"
  proc = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT, str(out)], env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  sharded = np.load(out)
  single = _run_all(*_inputs())
  assert sorted(sharded) == sorted(single)
  for name, x in single.items():
    # Same threefry bits on any sharding; elementwise float32 math, so equal up to
    # the order XLA fuses operations in.
    np.testing.assert_allclose(sharded[name], x, rtol=1e-5, atol=1e-6, err_msg=name)


# --- bad input -------------------------------------------------------------------------


def test_bad_input_raises(schedule, model):
  rng, shape = jax.random.PRNGKey(0), (4, 2)
  x = jnp.zeros(shape)
  cases = [
      (lambda: samplers.ddpm(model, schedule, rng, shape, num_steps=1001), "num_steps=1001"),
      (lambda: samplers.ddpm(model, schedule, rng, shape, num_steps=0), "num_steps=0"),
      (lambda: samplers.ddim(model, schedule, rng, shape, num_steps=2000), "num_steps=2000"),
      (lambda: samplers.ddim_invert(model, schedule, x, num_steps=1001), "num_steps=1001"),
      (lambda: samplers.inpaint(model, schedule, rng, x, x, num_steps=1001), "num_steps=1001"),
      (lambda: samplers.sdedit(model, schedule, rng, x, strength=0.5, num_steps=1001),
       "num_steps=1001"),
      (lambda: samplers.ddim(model, schedule, rng, shape, eta=-0.1), "eta must be >= 0"),
      (lambda: samplers.ddpm(model, schedule, rng, shape, prediction="noise"),
       "unknown prediction 'noise'"),
      (lambda: samplers.ddim(model, schedule, rng, shape, prediction="epsilon"),
       "unknown prediction 'epsilon'"),
      (lambda: samplers.ddpm(model, schedule, rng, shape, variance="small"),
       "unknown variance 'small'"),
      (lambda: samplers.inpaint(model, schedule, rng, x, jnp.ones((4, 3))),
       r"mask has shape \(4, 3\)"),
      (lambda: samplers.inpaint(model, schedule, rng, x, jnp.ones((2,))),
       r"mask has shape \(2,\)"),
      (lambda: samplers.inpaint(model, schedule, rng, x, x, num_steps=10, jump_length=11),
       "jump_length=11"),
      (lambda: samplers.inpaint(model, schedule, rng, x, x, resample_count=0), "resample_count"),
      (lambda: samplers.ddpm(model, schedule, rng, shape, x_T=jnp.zeros((4, 3))),
       r"x_T has shape \(4, 3\), expected \(4, 2\)"),
      (lambda: samplers.ddim(model, schedule, rng, shape, timesteps=[5, 5, 9]),
       "strictly ascending"),
      (lambda: samplers.ddim(model, schedule, rng, shape, timesteps=[0, 1000]), r"\[0, 1000\)"),
      (lambda: samplers.ddpm(model, schedule, rng, shape, timesteps=[3, 2]), "ascending"),
      (lambda: samplers.ddim(model, schedule, None, shape), "rng may be None only"),
      (lambda: samplers.sdedit(model, schedule, rng, x, strength=0.0), "strength"),
      (lambda: samplers.sdedit(model, schedule, rng, x, strength=1.5), "strength"),
      (lambda: samplers.ddpm(model, schedule, rng, shape, return_trajectory=True,
                             trajectory_stride=0), "trajectory_stride"),
      (lambda: samplers.ddpm("model", schedule, rng, shape), "model_fn must be callable"),
      (lambda: samplers.ddim_invert(model, schedule, x, fixed_point_iterations=-1),
       "fixed_point_iterations"),
      (lambda: samplers.dynamic_threshold(x, percentile=150.0), "percentile"),
  ]
  for call, message in cases:
    with pytest.raises(ValueError, match=message):
      call()
