"""Conditional generation against exact laws: super-resolution of Gaussian images, CDM's
noise-conditioning augmentation through the generation path, ILVR's low-pass guarantee, and
the U-Net's image conditioning.

Data: x ~ N(MEAN, COV) on 4x4x1 images (d = 16), observed through area downsampling by 2
(y = A x, k = 4). p(x | y) is Gaussian (`testing.ObservedGaussian.posterior`), and so is
the output of every sampler run with the exact conditional model: deterministic samplers'
laws are measured exactly from d + 1 runs (`testing.affine_pushforward`), stochastic ones by
moments of 4000 draws within 4.5 standard errors.
"""

import hashlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from compile_counter import count_compiles
from jaxdiff import denoisers, resampling, samplers, schedules, testing
from jaxdiff.config import schema
from jaxdiff.data import tasks
from jaxdiff.job import generation
from jaxdiff.models import UNet
from jaxdiff.samplers import ilvr

SHAPE = (4, 4, 1)
DIM = 16
A = testing.downsample_operator(SHAPE, 2)
_GRID = np.stack(np.meshgrid(np.arange(4), np.arange(4), indexing="ij"), -1).reshape(-1, 2)
COV = 0.3 * np.exp(-np.linalg.norm(_GRID[:, None] - _GRID[None], axis=-1) / 1.5) + 0.02 * np.eye(
    DIM)
MEAN = np.linspace(-0.4, 0.4, DIM).reshape(SHAPE)
OBSERVED = testing.ObservedGaussian(MEAN, COV, A)
Y = A @ np.random.default_rng(0).multivariate_normal(MEAN.ravel(), COV)


def _schedule():
  return schedules.make_schedule("cosine", 1000, dtype=jnp.float64)


def _bound(schedule, y, prediction="eps"):
  """The exact conditional model with y bound, as a denoiser."""
  fn = OBSERVED.model_fn(schedule, prediction=prediction)
  model_fn = lambda x, t: fn(x, t, jnp.broadcast_to(jnp.asarray(y), (x.shape[0], len(y))))
  return denoisers.make_denoiser(model_fn, schedule, prediction=prediction)


def test_downsample_operator_is_the_area_downsampling():
  x = np.random.default_rng(1).standard_normal((3,) + SHAPE)
  np.testing.assert_allclose(resampling.area_downsample(x, 2).reshape(3, -1),
                             x.reshape(3, -1) @ A.T, atol=1e-12)


def test_posterior_matches_joint_gaussian_conditioning():
  # An independent derivation: condition the joint Gaussian of (x, y) by the Schur complement.
  joint = np.block([[COV, COV @ A.T], [A @ COV, A @ COV @ A.T + 0.1 * np.eye(4)]])
  mean, cov = OBSERVED.posterior(Y, noise_var=0.1)
  inv = np.linalg.inv(joint[DIM:, DIM:])
  np.testing.assert_allclose(mean, MEAN.ravel() + joint[:DIM, DIM:] @ inv @ (Y - A @ MEAN.ravel()))
  np.testing.assert_allclose(cov, COV - joint[:DIM, DIM:] @ inv @ joint[DIM:, :DIM], atol=1e-12)


@pytest.mark.parametrize("sampler,prediction,steps,tol,consistency", [
    ("ddim", "eps", 100, 0.01, 1e-6), ("dpm_solver_pp_2m", "v", 25, 0.01, 0.015),
    ("heun", "x0", 40, 0.005, 0.015),
])
def test_deterministic_super_resolution_has_the_conditional_law(x64, sampler, prediction, steps,
                                                                 tol, consistency):
  # p(x | A x = y) is degenerate (rank 12): compare moments entrywise (largest |entry| of
  # COV is 0.32) and require consistency, A x = y for every output. Measured largest errors
  # of the mean / covariance / A x - y: ddim 6e-4 / 4.4e-3 / 1e-14; DPM-Solver++ 7e-6 /
  # 4.9e-3 / 6.3e-3; Heun 3e-4 / 1.7e-3 / 6.0e-3 (those two end at the schedule's t = 0,
  # sigma = 0.0064, not at the clean end: A x = y + sigma A eps there).
  den = _bound(_schedule(), Y, prediction)
  run = lambda x_T: samplers.sample(den, None, sampler=sampler, x_T=x_T.reshape((-1,) + SHAPE),
                                    num_steps=steps).reshape(-1, DIM)
  mean, cov = testing.affine_pushforward(run, DIM)
  want_mean, want_cov = OBSERVED.posterior(Y)
  np.testing.assert_array_less(np.abs(mean - want_mean).max(), tol)
  np.testing.assert_array_less(np.abs(cov - want_cov).max(), tol)
  outputs = np.asarray(run(jnp.asarray(np.random.default_rng(2).standard_normal((8, DIM)))))
  np.testing.assert_allclose(outputs @ A.T, np.broadcast_to(Y, (8, 4)), atol=consistency)


def _moments_ok(x, mean, cov, *, bias=0.0):
  """Sample moments within 4.5 standard errors (plus a stated bias) of N(mean, cov)."""
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  n, var = len(x), np.diag(cov)
  np.testing.assert_array_less(np.abs(x.mean(0) - mean), 4.5 * np.sqrt(var / n) + bias)
  cov_se = np.sqrt((np.outer(var, var) + cov**2) / n)
  np.testing.assert_array_less(np.abs(np.cov(x.T) - cov), 4.5 * cov_se + bias)


@pytest.mark.parametrize("sampler,options", [
    ("ddpm", dict(num_steps=200)), ("ddim", dict(num_steps=100, eta=1.0)),
])
def test_stochastic_samplers_reproduce_a_noisy_observation_posterior(sampler, options):
  # y observed with noise (variance 0.05): p(x | y) is non-degenerate; 4000 draws, float32.
  schedule = schedules.make_schedule("cosine", 1000)
  y = jnp.asarray(Y, jnp.float32)
  den = denoisers.make_denoiser(
      lambda x, t: OBSERVED.eps(schedule, x, t, jnp.broadcast_to(y, (x.shape[0], 4)),
                                noise_var=0.05), schedule, prediction="eps")
  x = samplers.sample(den, jax.random.PRNGKey(3), (4000,) + SHAPE, sampler=sampler, **options)
  _moments_ok(x, *OBSERVED.posterior(Y, noise_var=0.05), bias=2e-3)


class _ExactModule(nn.Module):
  """The exact conditional model behind the U-Net's call signature (no parameters)."""
  schedule: schedules.Schedule

  def __call__(self, x, t, y=None, *, condition=None, aug_level=None, train=False):
    return OBSERVED.model_fn(self.schedule)(x, t, condition.reshape(x.shape[0], -1), aug_level)


def _sr_config():
  config = schema.base_config()
  config.model.update(condition_channels=1, aug_level_embedding=True)
  config.diffusion.update(schedule="cosine")
  config.data.update(image_size=4, channels=1)
  config.data.task.update(name="super_resolution", factor=2)
  config.sample.update(sampler="ddpm", num_steps=100)
  return config


def test_generation_path_with_noise_augmentation_has_the_marginal_law():
  # sample_batches noises the condition to level s: y_s = c y + s' eps (c = cos(pi s / 2),
  # s'^2 = sin^2) and the exact model conditions on y_s with those coefficients, so the
  # output law over eps is N(m + K (c y - c A m), P + s'^2 K K^T), K the gain of y_s.
  config = _sr_config()
  level = 0.4
  scale, noise_var = (float(v) for v in testing.augmentation_coefficients(level))
  request = generation.Request(num_samples=4000, batch_size=4000, sampler="ddpm",
                               num_steps=100, clip_denoised=False,
                               conditions=Y.reshape(1, 2, 2, 1).astype(np.float32),
                               aug_level=level)
  x = generation.sample_batches(config, _ExactModule(schedules.make_schedule("cosine", 1000)),
                                {}, jax.random.PRNGKey(4), request)
  mean, post_cov = OBSERVED.posterior(scale * Y, scale=scale, noise_var=noise_var)
  gain = scale * COV @ A.T @ np.linalg.inv(scale**2 * A @ COV @ A.T + noise_var * np.eye(4))
  _moments_ok(x, mean, post_cov + noise_var * gain @ gain.T, bias=2e-3)


def test_model_fn_for_binds_condition_and_guides_with_the_null_condition():
  model = _ExactModule(schedules.make_schedule("cosine", 1000))
  condition = jnp.asarray(np.tile(Y.reshape(1, 2, 2, 1), (3, 1, 1, 1)), jnp.float32)
  x = jax.random.normal(jax.random.PRNGKey(5), (3,) + SHAPE)
  t = jnp.array([100, 500, 900])
  plain = generation.model_fn_for(model, {}, condition=condition, aug_level=0.2)
  direct = OBSERVED.model_fn(model.schedule)(x, t, condition.reshape(3, -1), jnp.full(3, 0.2))
  np.testing.assert_allclose(plain(x, t), direct, rtol=1e-5)
  null = OBSERVED.model_fn(model.schedule)(x, t, jnp.zeros((3, 4)), jnp.full(3, 0.2))
  for scale, want in ((0.0, null), (2.5, null + 2.5 * (direct - null))):
    guided = generation.model_fn_for(model, {}, condition=condition, aug_level=0.2,
                                     guidance_scale=scale)
    np.testing.assert_allclose(guided(x, t), want, rtol=1e-4, atol=1e-5)


# --- ILVR ------------------------------------------------------------------------------

GAUSS = testing.GaussianMixture.gaussian(MEAN.ravel(), COV)
REFERENCE = np.random.default_rng(6).uniform(-1, 1, (2,) + SHAPE).astype(np.float32)


@pytest.mark.parametrize("sampler", tuple(samplers.SAMPLERS))
def test_ilvr_output_has_the_reference_low_pass_component(sampler):
  """Every sampler: the output's block means equal the reference's to float32 rounding
  (1e-5), while the high-pass part is the model's (it differs between draws)."""
  schedule = schedules.make_schedule("linear", 1000)
  model = testing.model_fn(GAUSS, schedule)
  den = denoisers.make_denoiser(lambda x, t: model(x.reshape(len(x), -1), t).reshape(x.shape),
                                schedule, prediction="eps")
  options = {"pc": dict(predictor="euler_maruyama", num_steps=20),
             "ald": dict(steps_per_level=2, num_steps=5)}.get(sampler, dict(num_steps=10))
  out = samplers.sample(den, jax.random.PRNGKey(7), sampler=sampler, x_T=jnp.zeros(
      (2,) + SHAPE), reference=REFERENCE, ilvr_factor=2, **options)
  assert float(jnp.max(ilvr.low_pass_error(out, REFERENCE, 2))) < 1e-5
  assert float(jnp.max(jnp.abs(out - REFERENCE))) > 1e-2


def test_ilvr_factor_one_copies_and_bad_input_is_refused_before_compiling():
  schedule = schedules.make_schedule("linear", 1000)
  den = denoisers.make_denoiser(lambda x, t: jnp.zeros_like(x), schedule, prediction="eps")
  out = samplers.sample(den, jax.random.PRNGKey(0), (2,) + SHAPE, reference=REFERENCE,
                        ilvr_factor=1, num_steps=3)
  np.testing.assert_allclose(out, REFERENCE, atol=1e-6)
  bad = [(dict(reference=REFERENCE, ilvr_factor=3), "does not divide"),
         (dict(reference=REFERENCE[:1], ilvr_factor=2), "reference has shape"),
         (dict(reference=REFERENCE), "needs both")]
  for kwargs, message in bad:
    count, _ = count_compiles(lambda kw=kwargs, m=message: _raises(lambda: samplers.sample(
        den, jax.random.PRNGKey(0), (2,) + SHAPE, num_steps=3, **kw), m))
    assert count == 0


# --- the U-Net's image conditioning ------------------------------------------------------

def _small(**kw):
  return UNet(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
              num_groups=4, num_classes=3, **kw)


def test_unconditional_parameter_tree_is_unchanged():
  # 145 leaves, 45242 parameters and this digest of the paths and shapes, measured with the
  # U-Net of main before image conditioning existed (same init draws: same sum).
  variables = _small().init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 2)),
                            jnp.zeros((1,), jnp.int32))
  leaves = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
  desc = ";".join(f"{jax.tree_util.keystr(p)}:{tuple(x.shape)}" for p, x in leaves)
  assert len(leaves) == 145 and sum(x.size for _, x in leaves) == 45242
  assert hashlib.sha256(desc.encode()).hexdigest()[:16] == "13a1047ce8f904a8"
  np.testing.assert_allclose(float(sum(jnp.sum(x) for _, x in leaves)), 343.32367, rtol=1e-6)


def test_conditioning_adds_input_channels_and_the_level_embedding():
  model = _small(condition_channels=2, aug_level_embedding=True)
  x, t = jnp.ones((2, 8, 8, 2)), jnp.array([3, 7])
  variables = model.init(jax.random.PRNGKey(0), x, t)
  assert variables["params"]["conv_in"]["kernel"].shape == (3, 3, 4, 8)
  assert {"aug_dense0", "aug_dense1"} <= set(variables["params"])
  variables = jax.tree.map(lambda v: v + 0.01, variables)  # make the zero-init head matter
  low = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 2))
  out = model.apply(variables, x, t, condition=low, aug_level=jnp.array([0.0, 0.5]))
  same = model.apply(variables, x, t, condition=jax.image.resize(low, (2, 8, 8, 2), "cubic"),
                     aug_level=jnp.array([0.0, 0.5]))
  np.testing.assert_allclose(out, same, rtol=1e-5, atol=1e-6)  # resized inside the model
  assert out.shape == (2, 8, 8, 2)
  other = model.apply(variables, x, t, condition=low, aug_level=jnp.array([0.3, 0.5]))
  assert float(jnp.abs(other - out)[0].max()) > 0 and float(jnp.abs(other - out)[1].max()) == 0
  null = model.apply(variables, x, t, condition=jnp.zeros_like(low), aug_level=jnp.zeros(2))
  np.testing.assert_array_equal(model.apply(variables, x, t), null)


@pytest.mark.parametrize("condition,message", [
    (jnp.zeros((2, 3, 8, 2)), r"condition has shape \(2, 3, 8, 2\)"),
    (jnp.zeros((2, 4, 4, 1)), r"condition has shape \(2, 4, 4, 1\)"),
    (jnp.zeros((1, 8, 8, 2)), r"condition has shape \(1, 8, 8, 2\)"),
])
def test_bad_conditions_are_one_line_errors_before_compiling(condition, message):
  model = _small(condition_channels=2)
  x, t = jnp.ones((2, 8, 8, 2)), jnp.array([3, 7])
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t)
  variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), variables)
  schedule = schedules.make_schedule("linear", 100)
  den = denoisers.make_denoiser(generation.model_fn_for(model, variables["params"],
                                                        condition=condition), schedule)
  count, _ = count_compiles(lambda: _raises(lambda: samplers.sample(
      den, jax.random.PRNGKey(0), (2, 8, 8, 2), num_steps=2), message))
  assert count == 0
  with pytest.raises(ValueError, match="condition was given"):
    _small().apply(jax.tree.map(jnp.zeros_like, _small().init(
        jax.random.PRNGKey(0), x, t)), x, t, condition=jnp.zeros((2, 8, 8, 1)))


def _raises(fn, message):
  with pytest.raises(ValueError, match=message) as info:
    fn()
  assert "\n" not in str(info.value)
  return 0
